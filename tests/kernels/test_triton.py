"""The Triton kernels, on a GPU or on CPU tensors through Triton's interpreter
(``TRITON_INTERPRET=1``; see :mod:`tests.kernels.triton_device`), against the same dense
re-implementations as the CPU kernels."""

import pytest
import torch

from .triton_device import on_device  # sets TRITON_INTERPRET where there is no GPU

pytest.importorskip("triton")

from memplan.kernels import smmf_triton  # noqa: E402
from memplan.kernels.smmf_cpu import SMMFScalars  # noqa: E402

from .test_smmf_cpu import ULP, check_range, random_case  # noqa: E402

SHAPES = [(1, 1), (7, 13), (31, 17), (97, 1), (13, 8), (64, 33)]


@pytest.fixture(autouse=True)
def small_blocks(monkeypatch):
    monkeypatch.setattr(smmf_triton, "BLOCK", 64)  # several programs even on small shapes


@pytest.mark.parametrize("sign_bits", [1, 8, None], ids=["1bit", "8bit", "no_momentum"])
@pytest.mark.parametrize("shape", SHAPES, ids=[f"{n}x{m}" for n, m in SHAPES])
def test_smmf_triton_range_equals_the_dense_step(shape, sign_bits):
    rows, cols = shape
    for seed in range(2):
        start, weights, grads, positive, factors = random_case(rows, cols, torch.float32, seed)
        scalars = SMMFScalars(step_size=-0.01, eps=1e-8, decay=0.999, coupled_decay=0.01 * seed, negate=seed == 1)
        check_smmf_range(weights, grads, positive, start, rows, cols, factors, scalars, sign_bits)


def check_smmf_range(weights, grads, positive, start, rows, cols, factors, scalars, sign_bits):
    """Triton's smmf_range on the device against the dense step (its sums to 1e-5: the order of
    the atomic adds is not fixed)."""
    check_range(lambda *arguments: on_device(smmf_triton.smmf_range, *arguments), weights, grads, positive, start,
                rows, cols, factors, scalars, sign_bits, sums_rtol=1e-5)


TILED_CASES = [(13, 16, 0, 208), (13, 16, 24, 150), (40, 24, 8, 617), (9, 40, 88, 1), (5, 64, 40, 200)]
"""rows, cols, start, length: ranges that start on a sign byte in matrices whose rows do."""


@pytest.mark.parametrize("sign_bits", [1, 8, None], ids=["1bit", "8bit", "no_momentum"])
@pytest.mark.parametrize("case", TILED_CASES, ids=["x".join(map(str, case)) for case in TILED_CASES])
def test_smmf_triton_range_in_tiles_equals_the_dense_step(case, sign_bits, monkeypatch):
    """A range that starts on a sign byte of a matrix whose rows do is stepped in tiles, one
    atomic per row and column of a tile (small tiles here: several per row band and per row)."""
    rows, cols, start, length = case
    monkeypatch.setattr(smmf_triton, "TILE_ROWS", 4)
    monkeypatch.setattr(smmf_triton, "TILE_COLS", 16)
    monkeypatch.setattr(smmf_triton, "_kernel", lambda: pytest.fail("a tiled range took the flat kernel"))
    generator = torch.Generator().manual_seed(rows + start)
    weights, grads = torch.randn(length, generator=generator), torch.randn(length, generator=generator)
    positive = torch.rand(length, generator=generator) > 0.5
    factors = [torch.rand(size, generator=generator) + 0.1 for size in (rows, cols, rows, cols)]
    scalars = SMMFScalars(step_size=-0.01, eps=1e-8, decay=0.999, coupled_decay=0.01, negate=start % 16 == 8)
    check_smmf_range(weights, grads, positive, start, rows, cols, factors, scalars, sign_bits)


def test_only_ranges_whose_sign_bytes_tiles_own_go_in_tiles():
    fits = smmf_triton.range_tiles_own_their_signs
    assert fits(1, 16, 24) and fits(0, 3, 7) and fits(8, 5, 13)
    assert not fits(1, 4, 24) and not fits(1, 16, 12)


VIEWS = [(1,), (97,), (7, 13), (31, 1), (5, 3, 7), (2, 3, 1, 5)]


@pytest.mark.parametrize("momentum", [0.0, 0.9])
@pytest.mark.parametrize("variant", ["II", "I"])
@pytest.mark.parametrize("view", VIEWS, ids=["x".join(map(str, view)) for view in VIEWS])
def test_sm3_triton_range_equals_the_dense_step(view, variant, momentum, monkeypatch):
    from memplan.kernels import sm3_triton
    from memplan.kernels.sm3_cpu import SM3Scalars

    from .test_sm3_cpu import axis_indices, dense_update, random_case as sm3_case, slice_maxima

    monkeypatch.setattr(sm3_triton, "TILE_ROWS", 2)   # several tiles per band and per row
    monkeypatch.setattr(sm3_triton, "TILE_COLS", 4)
    monkeypatch.setattr(sm3_triton, "MIN_COLS", 4)
    for seed in range(2):
        start, weights, grads, buffer, accumulators = sm3_case(view, torch.float32, seed, momentum)
        scalars = SM3Scalars(lr=0.1, eps=1e-30, momentum=momentum, decay=0.999, coupled_decay=0.01 * seed,
                             negate=seed == 1)
        if variant == "I":
            maxima = [torch.zeros(dim) for dim in view]
            on_device(sm3_triton.sm3_square_maxima_range, weights, grads, start, view, maxima, scalars)
            gradient = grads * (-1.0 if scalars.negate else 1.0) + scalars.coupled_decay * weights
            for got, want in zip(maxima, slice_maxima(gradient * gradient, axis_indices(start, weights.numel(), view),
                                                      view)):
                assert torch.equal(got, want)
        expected = dense_update(weights, grads, buffer, start, view, accumulators, scalars, variant == "II")
        new = [torch.zeros(dim) for dim in view] if variant == "II" else None
        on_device(sm3_triton.sm3_range, weights, grads, start, view, accumulators, new, buffer, scalars)
        torch.testing.assert_close(weights, expected[0], rtol=1e-6, atol=ULP)
        if buffer is not None:
            torch.testing.assert_close(buffer, expected[1], rtol=1e-6, atol=ULP)
        if new is not None:
            for got, want in zip(new, expected[2]):
                torch.testing.assert_close(got, want, rtol=1e-6, atol=0)


def test_sm3_range_builds_its_cover_tables_once_per_view():
    """The dims, strides and accumulator offsets of a view are made once (uploaded without waiting
    for the device), not per step."""
    from memplan.kernels import sm3_triton

    tables = sm3_triton.cover_tables((5, 3, 7), torch.device("cpu"))
    assert [table.tolist() for table in tables] == [[5, 3, 7], [21, 7, 1], [0, 5, 8]]
    assert all(again is table for again, table in zip(sm3_triton.cover_tables((5, 3, 7), torch.device("cpu")), tables))
