"""The SMMF CPU kernel against a dense re-implementation of the fused step on a flat range."""

import math

import pytest
import torch

from memplan.kernels.smmf_cpu import SMMFScalars, smmf_range

SHAPES = [(1, 1), (7, 13), (31, 17), (97, 1), (1, 97), (13, 8), (64, 33)]

ULP = 1.2e-7
"""Absolute slack: one fp32 ulp of O(1) operands (a difference in the last bit, e.g. from a fused
multiply-add, is relative noise where a result cancels to near zero)."""


def unpack(packed: torch.Tensor, count: int) -> torch.Tensor:
    return ((packed.long()[:, None] >> torch.arange(8)) & 1).view(-1)[:count].bool()


def pack(bits: torch.Tensor) -> torch.Tensor:
    padded = torch.cat([bits.long(), bits.new_zeros((-bits.numel()) % 8).long()]).view(-1, 8)
    return (padded << torch.arange(8)).sum(1).to(torch.uint8)


def dense_step(weights, grads, positive, start, rows, cols, scaled_v, scaled_m, scalars):
    """The fused step on elements [start, start + len) of an n x m view, as plain torch ops
    (fp32 or float64 elementwise, float64 sums)."""
    index = torch.arange(start, start + weights.numel())
    row, col = index // cols, index % cols
    gradient = grads * (-1.0 if scalars.negate else 1.0) + scalars.coupled_decay * weights
    second = gradient * gradient + scaled_v[0][row] * scaled_v[1][col]
    if scaled_m is None:
        moment = gradient
    else:
        moment = gradient + torch.where(positive, scaled_m[0][row], -scaled_m[0][row]) * scaled_m[1][col]
    new_weights = weights * scalars.decay + scalars.step_size * (moment / (second.sqrt() + scalars.eps))

    def sums(values):
        return (torch.zeros(rows, dtype=torch.float64).index_add_(0, row, values.double()),
                torch.zeros(cols, dtype=torch.float64).index_add_(0, col, values.double()))

    return new_weights, moment > 0, sums(second), sums(moment.abs()) if scaled_m is not None else None


def random_case(rows, cols, dtype, seed):
    generator = torch.Generator().manual_seed(seed)
    count = rows * cols
    start = int(torch.randint(0, count, (1,), generator=generator))
    stop = int(torch.randint(start + 1, count + 1, (1,), generator=generator))
    weights = torch.randn(stop - start, generator=generator).to(dtype)
    grads = torch.randn(stop - start, generator=generator).to(dtype)
    positive = torch.rand(stop - start, generator=generator) > 0.5
    factors = [torch.rand(size, generator=generator) + 0.1 for size in (rows, cols, rows, cols)]
    return start, weights, grads, positive, factors


@pytest.mark.parametrize("sign_bits", [1, 8, None], ids=["1bit", "8bit", "no_momentum"])
@pytest.mark.parametrize("shape", SHAPES, ids=[f"{n}x{m}" for n, m in SHAPES])
def test_fused_range_equals_the_dense_step(shape, sign_bits, threads):
    rows, cols = shape
    for seed in range(3):
        start, weights, grads, positive, factors = random_case(rows, cols, torch.float32, seed)
        scalars = SMMFScalars(step_size=-0.01, eps=1e-8, decay=1.0 - 1e-3 * seed, coupled_decay=0.01 * (seed == 2),
                              negate=seed == 1)
        scaled_v, scaled_m = (factors[0], factors[1]), (factors[2], factors[3]) if sign_bits else None
        expected = dense_step(weights, grads, positive, start, rows, cols, scaled_v, scaled_m, scalars)
        signs = None if sign_bits is None else pack(positive) if sign_bits == 1 else positive.clone()
        new_v = (torch.zeros(rows), torch.zeros(cols))
        new_m = (torch.zeros(rows), torch.zeros(cols)) if sign_bits else None
        smmf_range(weights, grads, signs, start, cols, scaled_v, scaled_m, new_v, new_m, scalars)
        torch.testing.assert_close(weights, expected[0], rtol=1e-6, atol=ULP)
        for got, want in zip(new_v, expected[2]):
            torch.testing.assert_close(got, want.float(), rtol=1e-6, atol=ULP)
        if sign_bits is not None:
            stored = unpack(signs, weights.numel()) if sign_bits == 1 else signs
            assert torch.equal(stored, expected[1])
            if sign_bits == 1:
                assert torch.equal(signs, pack(expected[1]))  # padding bits cleared, as the eager path leaves them
            for got, want in zip(new_m, expected[3]):
                torch.testing.assert_close(got, want.float(), rtol=1e-6, atol=ULP)


@pytest.mark.parametrize("dtype", [torch.float64, torch.bfloat16, torch.float16])
def test_dtypes_run_in_their_working_precision(dtype, threads):
    rows, cols = 29, 11
    start, weights, grads, positive, factors = random_case(rows, cols, dtype, seed=4)
    working = torch.float64 if dtype == torch.float64 else torch.float32
    scaled = [factor.to(working) for factor in factors]
    scalars = SMMFScalars(step_size=-0.01, eps=1e-8)
    expected = dense_step(weights.to(working), grads.to(working), positive, start, rows, cols,
                          (scaled[0], scaled[1]), (scaled[2], scaled[3]), scalars)
    signs = pack(positive)
    new_v, new_m = (torch.zeros(rows), torch.zeros(cols)), (torch.zeros(rows), torch.zeros(cols))
    smmf_range(weights, grads, signs, start, cols, (factors[0], factors[1]), (factors[2], factors[3]), new_v, new_m,
               scalars, chunk_elements=16)  # several fp32 working pieces
    if dtype == torch.float64:
        torch.testing.assert_close(weights, expected[0], rtol=1e-12, atol=1e-15)
    else:
        assert torch.equal(weights, expected[0].to(dtype))
    assert torch.equal(unpack(signs, weights.numel()), expected[1])
    torch.testing.assert_close(new_m[1], expected[3][1].float(), rtol=1e-6, atol=ULP)


def test_two_ranges_add_up_to_the_whole_tensor():
    """A sharded step: two ranges' partial sums add up to the whole tensor's sums."""
    rows, cols = 23, 19
    generator = torch.Generator().manual_seed(7)
    weights, grads = torch.randn(rows * cols, generator=generator), torch.randn(rows * cols, generator=generator)
    signs = torch.randint(0, 256, (math.ceil(rows * cols / 8),), dtype=torch.uint8, generator=generator)
    factors = [torch.rand(size, generator=generator) for size in (rows, cols, rows, cols)]
    scalars = SMMFScalars(step_size=-0.01, eps=1e-8)
    whole = weights.clone(), signs.clone(), [torch.zeros(size) for size in (rows, cols, rows, cols)]
    smmf_range(whole[0], grads, whole[1], 0, cols, factors[:2], factors[2:], whole[2][:2], whole[2][2:], scalars)
    split = 200  # a multiple of 8: the second shard's packed signs start at byte 25
    parts = [torch.zeros(size) for size in (rows, cols, rows, cols)]
    for begin, end in ((0, split), (split, rows * cols)):
        shard = weights[begin:end].clone()
        shard_signs = signs[begin // 8:(end + 7) // 8].clone()
        smmf_range(shard, grads[begin:end], shard_signs, begin, cols, factors[:2], factors[2:], parts[:2], parts[2:],
                   scalars)
        torch.testing.assert_close(shard, whole[0][begin:end], rtol=0, atol=0)
        assert torch.equal(shard_signs, whole[1][begin // 8:(end + 7) // 8])
    for got, want in zip(parts, whole[2]):
        torch.testing.assert_close(got, want, rtol=1e-6, atol=ULP)
