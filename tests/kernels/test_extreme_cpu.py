"""The extreme-tensoring and ET-infinity CPU kernels against dense re-implementations, on flat ranges
and on many whole tensors at once."""

import math

import pytest
import torch

from memplan.kernels.extreme_numba import NEAR
from memplan.kernels.extreme_cpu import (ETScalars, et_square_sums_range, et_update_range, scale_range,
                                         squared_norm_range)

from .test_sm3_cpu import ULP, axis_indices


@pytest.fixture
def threads(threads, monkeypatch):
    """The conftest's thread counts, for the extreme-tensoring kernels too."""
    import memplan.kernels.extreme_cpu as extreme_cpu

    monkeypatch.setattr(extreme_cpu, "kernel_pieces", lambda elements, count=threads: count)
    return threads


INDICES = [(1,), (97,), (7, 13), (5, 3, 7), (2, 3, 1, 5), (3, 70, 70), (2, 5, 1000, 3), (64, 3, 8, 50), (40, 300),
           (36, 20, 30)]
"""Shapes of every kind of walk; the last three have runs enough for pass 1's quarters and pass 2's
pairs (orders 4, 2 and 3)."""


def random_case(index, seed, momentum):
    generator = torch.Generator().manual_seed(seed)
    count = math.prod(index)
    start = int(torch.randint(0, count, (1,), generator=generator))
    stop = int(torch.randint(start + 1, count + 1, (1,), generator=generator))
    weights, grads = torch.randn(stop - start, generator=generator), torch.randn(stop - start, generator=generator)
    buffer = torch.randn(stop - start, generator=generator) if momentum else None
    scaled = [torch.rand(dim, generator=generator) + 0.1 for dim in index]
    return start, weights, grads, buffer, scaled


@pytest.mark.parametrize("momentum", [0.0, 0.9])
@pytest.mark.parametrize("index", INDICES, ids=["x".join(map(str, index)) for index in INDICES])
def test_both_passes_equal_the_dense_step(index, momentum, threads, tail_elements):
    for seed in range(3):
        start, weights, grads, buffer, scaled = random_case(index, seed, momentum)
        scalars = ETScalars(lr=0.1, momentum=momentum, decay=1.0 - 1e-3 * seed, coupled_decay=0.01 * (seed == 2),
                            negate=seed == 1)
        indices = axis_indices(start, weights.numel(), index)
        gradient = grads * (-1.0 if scalars.negate else 1.0) + scalars.coupled_decay * weights
        sums = [torch.zeros(dim) for dim in index]
        et_square_sums_range(weights, grads, start, index, sums, scalars)
        for got, axis_index, dim in zip(sums, indices, index):
            want = torch.zeros(dim, dtype=torch.float64).index_add_(0, axis_index, gradient.double() ** 2)
            torch.testing.assert_close(got, want.float(), rtol=1e-6, atol=ULP)
        scale, offset = 0.7, 1e-8
        product = torch.stack([vector[axis_index] for vector, axis_index in zip(scaled, indices)]).prod(0) + offset
        step = product ** (-1 / (2 * len(index))) * gradient
        # a sum that cancels is exact only to an ulp of its terms: the tolerances scale with them
        if buffer is None:
            expected, moving = weights * scalars.decay - scalars.lr * (step * scale), None
            terms = (weights * scalars.decay).abs() + (scalars.lr * step * scale).abs()
        else:
            moving = buffer * momentum + step * scale
            moving_terms = (buffer * momentum).abs() + (step * scale).abs()
            expected = weights * scalars.decay - scalars.lr * moving
            terms = (weights * scalars.decay).abs() + (scalars.lr * moving).abs()
        et_update_range(weights, grads, buffer, start, index, scaled, scale, offset, scalars)
        torch.testing.assert_close(weights, expected, rtol=1e-6, atol=float(2 * ULP * terms.max().clamp(min=1)))
        if buffer is not None:
            torch.testing.assert_close(buffer, moving, rtol=1e-6, atol=float(2 * ULP * moving_terms.max().clamp(min=1)))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
def test_et_infinity_passes(dtype, threads):
    generator = torch.Generator().manual_seed(3)
    weights, grads = (torch.randn(101, generator=generator).to(dtype) for _ in range(2))
    scalars = ETScalars(lr=0.1, coupled_decay=0.01)
    working = torch.float64 if dtype == torch.float64 else torch.float32
    gradient = grads.to(working) + 0.01 * weights.to(working)
    assert squared_norm_range(weights, grads, scalars) == pytest.approx(float((gradient.double() ** 2).sum()),
                                                                         rel=1e-6)
    expected = (weights.to(working) - 0.1 * (gradient * 0.5)).to(dtype)
    scale_range(weights, grads, 0.5, scalars)
    torch.testing.assert_close(weights, expected, rtol=1e-6 if dtype != torch.bfloat16 else 0, atol=ULP)


MANY_INDICES = [(1,), (97,), (7, 13), (1, 31), (5, 3, 7), (2, 3, 1, 5), (3, 1, 7, 2, 5), (4, 5, 3, 7, 3),
                (3, 70, 70), (13, 11, 3), (2, 2, 2, 2, 2, 3), (40, 300), (36, 20, 30), (20, 2, 3, 8, 32)]


def dense_et_step(weights, grads, buffer, index, accumulators, scalars, beta2, eps):
    """The optimizer's per-parameter step on whole tensors, in torch: the accumulators (updated in
    place), the new weights and the new buffer."""
    from memplan.optim.extreme import _scaled_factors, decay_accumulators

    indices = axis_indices(0, weights.numel(), index)
    gradient = grads * scalars.grad_sign + scalars.coupled_decay * weights
    alpha = decay_accumulators(accumulators, beta2)
    for accumulator, axis_index in zip(accumulators, indices):
        sums = torch.zeros(accumulator.numel(), dtype=torch.float64).index_add_(0, axis_index, gradient.double() ** 2)
        accumulator.add_(sums.float(), alpha=alpha)
    scaled, scale, offset = _scaled_factors(accumulators, eps, weights.dtype)
    product = torch.stack([vector[axis_index] for vector, axis_index in zip(scaled, indices)]).prod(0) + offset
    step = product ** (-1 / (2 * len(index))) * gradient
    if buffer is None:
        return weights * scalars.decay - scalars.lr * (step * scale), None
    moving = (buffer * scalars.momentum + step * scale).float()
    return weights * scalars.decay - scalars.lr * moving.to(weights.dtype), moving


ACCUMULATED = [("small", torch.float32), ("small", torch.float64), ("edge", torch.float32),
               ("large", torch.float32), ("large", torch.float64)]
"""The accumulators' cases by weights' dtype: the edge of the short series is the fp32 kernel's
(float64 takes it only below NEAR_DOUBLE)."""


@pytest.mark.parametrize("momentum", [0.0, 0.9])
@pytest.mark.parametrize("beta2", [None, 0.9])
@pytest.mark.parametrize("accumulated, dtype", ACCUMULATED,
                         ids=[f"{case}-{str(dtype).removeprefix('torch.')}" for case, dtype in ACCUMULATED])
def test_many_tensors_step_as_each_dense_step(accumulated, beta2, momentum, dtype, threads, tail_elements):
    """Both passes and the accumulators' update for many tensors in one call of each pass. Small
    accumulators (below 1: nothing rescales them) take an eps near the median product of each
    tensor's accumulators, so half the roots have eps mattering; at the edge, eps is just within
    the fp32 kernel's short series for the roots of orders other than 1, 2 and 4 (9/10 of NEAR of
    the smallest product, the accumulators within a factor of 2 of each other); large ones are
    rescaled, and eps is negligible."""
    from memplan.kernels.extreme_cpu import ETTensor, et_many

    generator = torch.Generator().manual_seed(5)
    tensors, expected = [], []
    for position, index in enumerate(MANY_INDICES):
        count = math.prod(index)
        weights = torch.randn(count, generator=generator).to(dtype)
        grads = (torch.randn(count, generator=generator) * (1e-2 if accumulated == "small" else 1.0)).to(dtype)
        buffer = torch.randn(count, generator=generator) if momentum else None
        low, high = {"small": (0.0, 0.1), "edge": (0.05, 0.1), "large": (1.0, 100.0)}[accumulated]
        accumulators = [torch.rand(dim, generator=generator) * (high - low) + low for dim in index]
        scalars = ETScalars(lr=0.1, momentum=momentum, decay=1.0 - 1e-3 * (position % 3),
                            coupled_decay=0.01 * (position % 4 == 2), negate=position % 5 == 1)
        eps = 1e-8
        if accumulated != "large":
            trial = [accumulator.clone() for accumulator in accumulators]
            dense_et_step(weights, grads, buffer, index, trial, scalars, beta2, 0.0)
            indices = axis_indices(0, count, index)
            products = torch.stack([vector[axis_index] for vector, axis_index in zip(trial, indices)]).prod(0)
            eps = float(products.median()) if accumulated == "small" else 0.9 * NEAR * float(products.min())
        new_accumulators = [accumulator.clone() for accumulator in accumulators]
        expected.append((*dense_et_step(weights, grads, buffer, index, new_accumulators, scalars, beta2, eps),
                         new_accumulators, weights * scalars.decay, buffer))
        tensors.append(ETTensor(weights=weights.clone(), grads=grads, index=index, accumulators=tuple(accumulators),
                                buffer=None if buffer is None else buffer.clone(), scalars=scalars, beta2=beta2,
                                eps=eps))
    et_many(tensors)
    unit = ULP if dtype == torch.float32 else 2.3e-16
    for tensor, (weights, moving, accumulators, decayed, buffer) in zip(tensors, expected):
        for got, want in zip(tensor.accumulators, accumulators):
            torch.testing.assert_close(got, want, rtol=1e-6, atol=0.0)
        # the update cancels against the decayed weights to an ulp of the larger; rescaled
        # accumulators (the large ones, and small ones that long slices' sums take past 1) give
        # fp32 scales and offsets from logs and exps that may differ from torch's by an ulp, which
        # bounds the update's precision
        update = (weights - decayed).abs()
        rescaled = any(float(accumulator.max()) > 1 for accumulator in accumulators)
        slack = 1e-6 * float(update.max()) if rescaled else 0.0
        torch.testing.assert_close(tensor.weights, weights, rtol=1e-6 if dtype == torch.float32 else 1e-12,
                                   atol=float(4 * unit * (decayed.abs() + update).max().clamp(min=1)) + slack)
        if moving is not None:
            # the new buffer cancels against the decayed one to an ulp of the larger term
            decayed_buffer = buffer * momentum
            terms = decayed_buffer.abs() + (moving - decayed_buffer).abs()
            torch.testing.assert_close(tensor.buffer, moving, rtol=1e-6, atol=float(2 * ULP * terms.max().clamp(min=1)))


def test_many_refuses_tensors_that_cannot_share_a_call():
    from memplan.kernels.extreme_cpu import ETTensor, et_many

    def tensor(dtype):
        return ETTensor(weights=torch.zeros(6, dtype=dtype), grads=torch.zeros(6, dtype=dtype), index=(2, 3),
                        accumulators=(torch.zeros(2), torch.zeros(3)), buffer=None, scalars=ETScalars(lr=0.1),
                        beta2=None, eps=1e-8)

    with pytest.raises(ValueError, match="share"):
        et_many([tensor(torch.float32), tensor(torch.float64)])
    with pytest.raises(ValueError, match="bfloat16"):
        et_many([tensor(torch.bfloat16)])
    et_many([])  # nothing to do


INFINITY_SHAPES = [(1,), (97,), (7, 13), (3, 70, 70), (5, 3, 7), (2, 2, 2, 2, 2, 3), (1, 31), (1000, 3)]


def dense_et_inf_step(weights, grads, sum_sq, scalars, beta2, eps):
    """ET-infinity's step on a whole tensor, in torch: the accumulator (updated in place) and the new
    weights."""
    gradient = grads * scalars.grad_sign + scalars.coupled_decay * weights
    squared_norm = (gradient.double() ** 2).sum().float()
    if beta2 is not None:
        sum_sq.mul_(beta2)
    sum_sq.add_(squared_norm, alpha=1.0 if beta2 is None else 1.0 - beta2)
    inverse_root = (sum_sq + eps).rsqrt()
    return weights * scalars.decay - scalars.lr * (gradient * inverse_root.to(weights.dtype))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("beta2", [None, 0.9])
def test_et_infinity_many_tensors_step_as_each_dense_step(beta2, dtype, threads):
    """Both passes and the accumulators' update for many tensors in one call of each pass, with
    maximize and coupled and decoupled weight decay varying among them."""
    from memplan.kernels.extreme_cpu import ETInfinityTensor, et_inf_many

    generator = torch.Generator().manual_seed(7)
    tensors, expected = [], []
    for position, shape in enumerate(INFINITY_SHAPES):
        weights = torch.randn(shape, generator=generator).to(dtype)
        grads = torch.randn(shape, generator=generator).to(dtype)
        sum_sq = torch.rand((), generator=generator) * 10
        scalars = ETScalars(lr=0.1, decay=1.0 - 1e-3 * (position % 3), coupled_decay=0.01 * (position % 4 == 2),
                            negate=position % 5 == 1)
        eps = 1e-8 if position % 2 else 1.0
        new_sum_sq = sum_sq.clone()
        expected.append((dense_et_inf_step(weights, grads, new_sum_sq, scalars, beta2, eps), new_sum_sq))
        tensors.append(ETInfinityTensor(weights=weights.clone(), grads=grads, sum_sq=sum_sq, scalars=scalars,
                                        beta2=beta2, eps=eps))
    et_inf_many(tensors)
    unit = ULP if dtype == torch.float32 else 2.3e-16
    for tensor, (weights, sum_sq) in zip(tensors, expected):
        torch.testing.assert_close(tensor.sum_sq, sum_sq, rtol=1e-6, atol=0.0)
        torch.testing.assert_close(tensor.weights, weights, rtol=1e-6 if dtype == torch.float32 else 1e-12,
                                   atol=float(4 * unit * weights.abs().max().clamp(min=1)))


def test_et_infinity_many_refuses_tensors_that_cannot_share_a_call():
    from memplan.kernels.extreme_cpu import ETInfinityTensor, et_inf_many

    def tensor(dtype, sum_sq=None):
        return ETInfinityTensor(weights=torch.zeros(6, dtype=dtype), grads=torch.zeros(6, dtype=dtype),
                                sum_sq=torch.zeros(()) if sum_sq is None else sum_sq, scalars=ETScalars(lr=0.1),
                                beta2=None, eps=1e-8)

    with pytest.raises(ValueError, match="share"):
        et_inf_many([tensor(torch.float32), tensor(torch.float64)])
    with pytest.raises(ValueError, match="bfloat16"):
        et_inf_many([tensor(torch.bfloat16)])
    with pytest.raises(ValueError, match="fp32"):
        et_inf_many([tensor(torch.float32, torch.zeros((), dtype=torch.float64))])
    et_inf_many([])  # nothing to do
