"""The SM3 CPU kernels against a dense re-implementation on a flat range of the cover view."""

import math

import pytest
import torch

from memplan.kernels.sm3_cpu import SM3Scalars, SM3Tensor, sm3_many, sm3_range, sm3_square_maxima_range

VIEWS = [(1,), (97,), (7, 13), (31, 1), (5, 3, 7), (2, 3, 1, 5), (3, 70, 70), (2, 5, 1000, 3)]

MANY_VIEWS = [(1,), (97,), (7, 13), (31, 1), (1, 1), (5, 3, 7), (2, 3, 1, 5), (3, 5, 1, 7, 2), (1, 11, 1, 1, 3),
              (3, 70, 70), (2, 5, 1000, 3), (4099,), (2, 40000)]
"""Views of one to five axes: primes, unit axes, runs longer than a thread's piece, and a last axis
longer than the merged tail."""

ULP = 1.2e-7
"""Absolute slack: one fp32 ulp of O(1) operands (a difference in the last bit, e.g. from a fused
multiply-add, is relative noise where a result cancels to near zero)."""


def axis_indices(start, count, view):
    flat = torch.arange(start, start + count)
    indices = []
    for dim in reversed(view):
        indices.append(flat % dim)
        flat = flat // dim
    return indices[::-1]


def slice_maxima(values, indices, view):
    return [torch.zeros(dim, dtype=values.dtype).scatter_reduce_(0, index, values, "amax")
            for dim, index in zip(view, indices)]


def dense_update(weights, grads, buffer, start, view, accumulators, scalars, add_square):
    indices = axis_indices(start, weights.numel(), view)
    gradient = grads * (-1.0 if scalars.negate else 1.0) + scalars.coupled_decay * weights
    nu = torch.stack([accumulator[index] for accumulator, index in zip(accumulators, indices)]).amin(0)
    if add_square:
        nu = nu + gradient * gradient
    scaled = gradient * (1 / (nu + scalars.eps).sqrt())
    if buffer is None:
        return weights * scalars.decay - scalars.lr * scaled, None, slice_maxima(nu, indices, view)
    moving = buffer * scalars.momentum + (1 - scalars.momentum) * scaled
    return weights * scalars.decay - scalars.lr * moving, moving, slice_maxima(nu, indices, view)


def random_case(view, dtype, seed, momentum):
    generator = torch.Generator().manual_seed(seed)
    count = math.prod(view)
    start = int(torch.randint(0, count, (1,), generator=generator))
    stop = int(torch.randint(start + 1, count + 1, (1,), generator=generator))
    weights = torch.randn(stop - start, generator=generator).to(dtype)
    grads = torch.randn(stop - start, generator=generator).to(dtype)
    buffer = torch.randn(stop - start, generator=generator) if momentum else None
    accumulators = [torch.rand(dim, generator=generator) + 0.1 for dim in view]
    return start, weights, grads, buffer, accumulators


@pytest.mark.parametrize("momentum", [0.0, 0.9])
@pytest.mark.parametrize("variant", ["II", "I"])
@pytest.mark.parametrize("view", VIEWS, ids=["x".join(map(str, view)) for view in VIEWS])
def test_range_update_equals_the_dense_step(view, variant, momentum, threads, tail_elements):
    for seed in range(3):
        start, weights, grads, buffer, accumulators = random_case(view, torch.float32, seed, momentum)
        scalars = SM3Scalars(lr=0.1, eps=1e-30, momentum=momentum, decay=1.0 - 1e-3 * seed,
                             coupled_decay=0.01 * (seed == 2), negate=seed == 1)
        if variant == "I":
            maxima = [torch.zeros(dim) for dim in view]
            sm3_square_maxima_range(weights, grads, start, view, maxima, scalars)
            indices = axis_indices(start, weights.numel(), view)
            gradient = grads * (-1.0 if scalars.negate else 1.0) + scalars.coupled_decay * weights
            for got, want in zip(maxima, slice_maxima(gradient * gradient, indices, view)):
                assert torch.equal(got, want)
        expected = dense_update(weights, grads, buffer, start, view, accumulators, scalars, variant == "II")
        new = [torch.zeros(dim) for dim in view] if variant == "II" else None
        sm3_range(weights, grads, start, view, accumulators, new, buffer, scalars)
        torch.testing.assert_close(weights, expected[0], rtol=1e-6, atol=ULP)
        if buffer is not None:
            torch.testing.assert_close(buffer, expected[1], rtol=1e-6, atol=ULP)
        if new is not None:
            for got, want in zip(new, expected[2]):
                torch.testing.assert_close(got, want, rtol=1e-6, atol=0)


@pytest.mark.parametrize("dtype", [torch.float64, torch.bfloat16])
def test_dtypes_run_in_their_working_precision(dtype, threads):
    view = (13, 7)
    start, weights, grads, _, accumulators = random_case(view, dtype, seed=5, momentum=0.0)
    working = torch.float64 if dtype == torch.float64 else torch.float32
    scalars = SM3Scalars(lr=0.1, eps=1e-30)
    expected = dense_update(weights.to(working), grads.to(working), None, start, view,
                            [accumulator.to(working) for accumulator in accumulators], scalars, True)
    new = [torch.zeros(dim) for dim in view]
    sm3_range(weights, grads, start, view, accumulators, new, None, scalars, chunk_elements=10)
    if dtype == torch.float64:
        torch.testing.assert_close(weights, expected[0], rtol=1e-12, atol=1e-15)
    else:
        assert torch.equal(weights, expected[0].to(dtype))
    for got, want in zip(new, expected[2]):
        torch.testing.assert_close(got, want.float(), rtol=1e-6, atol=0)


def many_case(view, dtype, momentum, seed):
    """One whole tensor of a multi-tensor step (its accumulators positive, as the optimizer's are
    after a step), with varied scalars."""
    generator = torch.Generator().manual_seed(seed)
    weights = torch.randn(view, generator=generator).to(dtype)
    grads = torch.randn(view, generator=generator).to(dtype)
    buffer = torch.randn(view, generator=generator) if momentum else None
    accumulators = tuple(torch.rand(dim, generator=generator) + 0.1 for dim in view)
    scalars = SM3Scalars(lr=0.1 * (1 + seed % 3), eps=1e-30 if seed % 2 else 1e-8, momentum=momentum,
                         decay=1.0 - 1e-3 * (seed % 4), coupled_decay=0.01 * (seed % 3 == 2), negate=seed % 2 == 1)
    return SM3Tensor(weights=weights, grads=grads, view=view, accumulators=accumulators, buffer=buffer,
                     scalars=scalars)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["fp32", "fp64"])
@pytest.mark.parametrize("momentum", ["none", "all", "some"])
def test_many_tensors_equal_the_dense_step(momentum, dtype, threads, tail_elements):
    """Each tensor as the dense step on its whole view, then its accumulators replaced by the new
    slice maxima, as the optimizer's SM3-II step stores them."""
    tensors = [many_case(view, dtype, 0.9 if momentum == "all" or (momentum == "some" and seed % 2) else 0.0, seed)
               for seed, view in enumerate(MANY_VIEWS)]
    expected = []
    for tensor in tensors:
        weights, moving, maxima = dense_update(
            tensor.weights.view(-1), tensor.grads.view(-1), None if tensor.buffer is None else tensor.buffer.view(-1),
            0, tensor.view, [accumulator.to(dtype) for accumulator in tensor.accumulators], tensor.scalars, True)
        expected.append((weights, moving, maxima))
    sm3_many(tensors)
    for tensor, (weights, moving, maxima) in zip(tensors, expected):
        # float64 weights follow an fp32 momentum buffer as it is stored (the dense step keeps it unrounded)
        exact = dtype == torch.float64 and moving is None
        torch.testing.assert_close(tensor.weights.view(-1), weights, rtol=1e-12 if exact else 1e-6,
                                   atol=1e-15 if exact else ULP)
        if moving is not None:
            torch.testing.assert_close(tensor.buffer.view(-1), moving.float(), rtol=1e-6, atol=ULP)
        for accumulator, maximum in zip(tensor.accumulators, maxima):
            torch.testing.assert_close(accumulator, maximum.float(), rtol=1e-6, atol=0)


def test_many_tensors_refuse_mixed_dtypes():
    with pytest.raises(ValueError):
        sm3_many([many_case((3, 5), torch.float32, 0.0, 0), many_case((4,), torch.float64, 0.0, 1)])
    mixed = many_case((3, 5), torch.float32, 0.0, 2)
    with pytest.raises(ValueError):
        sm3_many([SM3Tensor(weights=mixed.weights, grads=mixed.grads.double(), view=mixed.view,
                            accumulators=mixed.accumulators, buffer=None, scalars=mixed.scalars)])
    with pytest.raises(ValueError):
        sm3_many([many_case((3, 5), torch.bfloat16, 0.0, 3)])


def test_many_tensors_refuse_tensors_the_kernel_cannot_reach_whole():
    """The kernel reaches tensors through their addresses: a wrong length or layout is refused."""
    case = many_case((3, 5), torch.float32, 0.9, 4)
    short_accumulator = (case.accumulators[0], torch.zeros(4))
    for tensor in (SM3Tensor(weights=case.weights, grads=case.grads, view=case.view, accumulators=short_accumulator,
                             buffer=case.buffer, scalars=case.scalars),
                   SM3Tensor(weights=case.weights.t(), grads=case.grads.t(), view=(5, 3),
                             accumulators=case.accumulators[::-1], buffer=case.buffer, scalars=case.scalars),
                   SM3Tensor(weights=case.weights, grads=case.grads, view=case.view, accumulators=case.accumulators,
                             buffer=case.buffer.double(), scalars=case.scalars)):
        with pytest.raises(ValueError):
            sm3_many([tensor])


def test_many_tensors_of_an_empty_list_is_a_no_op():
    sm3_many([])


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["fp32", "fp64"])
def test_maxima_are_kept_as_float_bits_without_changing_them(dtype, threads):
    """The kernel compares nu as unsigned integers (its bits): zeros stay +0.0, huge and tiny values
    order as floats do, and a NaN of either sign is the maximum of its slices, as torch's amax."""
    case = many_case((7, 13), dtype, 0.0, 3)   # seed 3: no coupled decay, so row 0 has G = 0
    grads = case.grads.view(7, 13)
    grads[0] = 0.0
    grads[1, 2] = 1e18 if dtype == torch.float32 else 1e150
    grads[2, 3] = 1e-20
    grads[3, 4] = float("nan")
    grads[5, 6] = -float("nan")
    assert math.copysign(1.0, grads[5, 6].item()) < 0
    accumulators = [torch.zeros_like(accumulator) for accumulator in case.accumulators]
    tensor = SM3Tensor(weights=case.weights, grads=case.grads, view=case.view, accumulators=tuple(accumulators),
                       buffer=None, scalars=case.scalars)
    _, _, maxima = dense_update(case.weights.view(-1).clone(), case.grads.view(-1), None, 0, case.view,
                                [accumulator.to(dtype) for accumulator in accumulators], case.scalars, True)
    sm3_many([tensor])
    for accumulator, maximum in zip(tensor.accumulators, maxima):
        torch.testing.assert_close(accumulator, maximum.float(), rtol=1e-6, atol=0, equal_nan=True)
        assert torch.equal(accumulator.isnan(), maximum.isnan()) and accumulator.isnan().any()
    row_zero = tensor.accumulators[0][0].item()   # every nu of row 0 is +0.0
    assert row_zero == 0.0 and math.copysign(1.0, row_zero) > 0
