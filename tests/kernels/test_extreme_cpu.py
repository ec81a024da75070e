"""The extreme-tensoring and ET-infinity CPU kernels against dense re-implementations on flat ranges."""

import math

import pytest
import torch

from memplan.kernels.extreme_cpu import (ETScalars, et_square_sums_range, et_update_range, scale_range,
                                         squared_norm_range)

from .test_sm3_cpu import ULP, axis_indices

INDICES = [(1,), (97,), (7, 13), (5, 3, 7), (2, 3, 1, 5), (3, 70, 70), (2, 5, 1000, 3)]


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
