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
        check_range(smmf_range, weights, grads, positive, start, rows, cols, factors, scalars, sign_bits)


def check_range(step, weights, grads, positive, start, rows, cols, factors, scalars, sign_bits, sums_rtol=1e-6):
    """``step`` (a ``smmf_range``) on a range of a rows x cols matrix against the dense step: the
    weights, the signs (packed ones with their padding bits cleared, as the eager path leaves them)
    and the row and column sums (to ``sums_rtol``)."""
    scaled_v, scaled_m = (factors[0], factors[1]), (factors[2], factors[3]) if sign_bits else None
    expected = dense_step(weights, grads, positive, start, rows, cols, scaled_v, scaled_m, scalars)
    signs = None if sign_bits is None else pack(positive) if sign_bits == 1 else positive.clone()
    new_v = (torch.zeros(rows), torch.zeros(cols))
    new_m = (torch.zeros(rows), torch.zeros(cols)) if sign_bits else None
    step(weights, grads, signs, start, cols, scaled_v, scaled_m, new_v, new_m, scalars)
    torch.testing.assert_close(weights, expected[0], rtol=1e-6, atol=ULP)
    for got, want in zip(new_v, expected[2]):
        torch.testing.assert_close(got, want.float(), rtol=sums_rtol, atol=ULP)
    if sign_bits is not None:
        stored = unpack(signs, weights.numel()) if sign_bits == 1 else signs
        assert torch.equal(stored, expected[1])
        if sign_bits == 1:
            assert torch.equal(signs, pack(expected[1]))
        for got, want in zip(new_m, expected[3]):
            torch.testing.assert_close(got, want.float(), rtol=sums_rtol, atol=ULP)


PAIRED_CASES = [(40, 24, 0, 960), (41, 13, 5, 500), (97, 9, 100, 760)]
"""rows, cols, start, length: ranges long enough that the kernel steps two row pieces in each pass
(an item needs 4 rows in each half), with columns a multiple of 8 or not, starting on a row or not."""


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["fp32", "fp64"])
@pytest.mark.parametrize("sign_bits", [1, 8, None], ids=["1bit", "8bit", "no_momentum"])
@pytest.mark.parametrize("case", PAIRED_CASES, ids=["x".join(map(str, case)) for case in PAIRED_CASES])
def test_rows_stepped_in_pairs_equal_the_dense_step(case, sign_bits, dtype, threads):
    rows, cols, start, length = case
    generator = torch.Generator().manual_seed(rows)
    weights = torch.randn(length, generator=generator).to(dtype)
    grads = torch.randn(length, generator=generator).to(dtype)
    positive = torch.rand(length, generator=generator) > 0.5
    factors = [(torch.rand(size, generator=generator) + 0.1).to(dtype) for size in (rows, cols, rows, cols)]
    scalars = SMMFScalars(step_size=-0.01, eps=1e-8, decay=0.999, coupled_decay=0.01, negate=True)
    check_range(smmf_range, weights, grads, positive, start, rows, cols, factors, scalars, sign_bits)


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


MANY_SHAPES = [(1, 1), (7, 13), (1, 97), (97, 1), (31, 17), (8, 8), (64, 33), (3, 5)]


def stored_factors(sums, keep):
    """The factors the optimizer stores from a moment's row and column sums: times keep, the
    shorter side divided by its total (unless 0)."""
    row, col = (vector * keep for vector in sums)
    side = row if row.numel() < col.numel() else col
    total = side.sum()
    if total > 0:
        side /= total
    return row.float(), col.float()


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("sign_bits", [1, 8, None], ids=["1bit", "8bit", "no_momentum"])
def test_many_tensors_in_one_call_equal_each_dense_step_and_store_their_factors(sign_bits, dtype, threads):
    from memplan.kernels.smmf_cpu import SMMFTensor, smmf_many

    generator = torch.Generator().manual_seed(11)
    tensors, expected = [], []
    for position, (rows, cols) in enumerate(MANY_SHAPES):
        count = rows * cols
        weights = torch.randn(count, generator=generator).to(dtype)
        grads = torch.randn(count, generator=generator).to(dtype)
        positive = torch.rand(count, generator=generator) > 0.5
        factors = [torch.rand(size, generator=generator) + 0.1 for size in (rows, cols, rows, cols)]
        scalars = SMMFScalars(step_size=-0.01 * (position + 1), eps=1e-8, decay=1.0 - 1e-3 * position,
                              coupled_decay=0.01 * (position % 3 == 2), negate=position % 4 == 1)
        prior_v, prior_m, keep_v, keep_m = 0.5 + position, 0.25 * position, 0.3, 0.1 + 0.05 * position
        working = [factor.to(dtype) for factor in (factors[0] * prior_v, factors[1], factors[2] * prior_m, factors[3])]
        dense = dense_step(weights, grads, positive, 0, rows, cols, (working[0], working[1]),
                           (working[2], working[3]) if sign_bits else None, scalars)
        expected.append((dense[0], dense[1], stored_factors(dense[2], keep_v),
                         stored_factors(dense[3], keep_m) if sign_bits else None))
        signs = None if sign_bits is None else pack(positive) if sign_bits == 1 else positive.clone()
        tensors.append(SMMFTensor(weights=weights.clone(), grads=grads, signs=signs, cols=cols, row_v=factors[0],
                                  col_v=factors[1], row_m=factors[2] if sign_bits else None,
                                  col_m=factors[3] if sign_bits else None, scalars=scalars, prior_v=prior_v,
                                  prior_m=prior_m, keep_v=keep_v, keep_m=keep_m))
    smmf_many(tensors)
    for tensor, (weights, positive, factors_v, factors_m) in zip(tensors, expected):
        torch.testing.assert_close(tensor.weights, weights, rtol=1e-6, atol=ULP)
        for got, want in zip((tensor.row_v, tensor.col_v), factors_v):
            torch.testing.assert_close(got, want, rtol=1e-6, atol=ULP)
        if sign_bits is not None:
            stored = unpack(tensor.signs, weights.numel()) if sign_bits == 1 else tensor.signs
            assert torch.equal(stored, positive)
            for got, want in zip((tensor.row_m, tensor.col_m), factors_m):
                torch.testing.assert_close(got, want, rtol=1e-6, atol=ULP)


def test_many_refuses_tensors_that_cannot_share_a_call():
    from memplan.kernels.smmf_cpu import SMMFTensor, smmf_many

    def tensor(dtype, signs):
        return SMMFTensor(weights=torch.zeros(4, dtype=dtype), grads=torch.zeros(4, dtype=dtype), signs=signs, cols=2,
                          row_v=torch.zeros(2), col_v=torch.zeros(2), row_m=torch.zeros(2), col_m=torch.zeros(2),
                          scalars=SMMFScalars(step_size=-0.1, eps=1e-8), prior_v=0.0, prior_m=0.0, keep_v=1.0,
                          keep_m=1.0)

    packed = torch.zeros(1, dtype=torch.uint8)
    with pytest.raises(ValueError, match="share"):
        smmf_many([tensor(torch.float32, packed), tensor(torch.float64, packed)])
    with pytest.raises(ValueError, match="share"):
        smmf_many([tensor(torch.float32, packed), tensor(torch.float32, None)])
    with pytest.raises(ValueError, match="bfloat16"):
        smmf_many([tensor(torch.bfloat16, packed)])
    smmf_many([])  # nothing to do
