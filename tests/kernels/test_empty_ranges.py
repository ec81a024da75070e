"""A rank whose shard of a parameter is empty still runs the step's kernels: they change nothing
and add nothing to the partial statistics."""

import torch

from memplan.kernels.extreme_cpu import (ETScalars, et_square_sums_range, et_update_range, scale_range,
                                         squared_norm_range)
from memplan.kernels.sm3_cpu import SM3Scalars, sm3_range, sm3_square_maxima_range
from memplan.kernels.smmf_cpu import SMMFScalars, smmf_range

EMPTY = torch.zeros(0)


def test_smmf_on_an_empty_range():
    factors = [torch.rand(size) for size in (3, 4, 3, 4)]
    sums = [torch.zeros(size) for size in (3, 4, 3, 4)]
    smmf_range(EMPTY.clone(), EMPTY, torch.zeros(0, dtype=torch.uint8), 12, 4, factors[:2], factors[2:], sums[:2],
               sums[2:], SMMFScalars(step_size=-0.1, eps=1e-8))
    assert all(not total.any() for total in sums)


def test_sm3_on_an_empty_range():
    accumulators = [torch.rand(3), torch.rand(4)]
    maxima = [torch.zeros(3), torch.zeros(4)]
    scalars = SM3Scalars(lr=0.1, eps=1e-30, momentum=0.0)
    sm3_square_maxima_range(EMPTY.clone(), EMPTY, 12, (3, 4), maxima, scalars)
    sm3_range(EMPTY.clone(), EMPTY, 12, (3, 4), accumulators, maxima, None, scalars)
    assert all(not maximum.any() for maximum in maxima)


def test_extreme_tensoring_on_an_empty_range():
    sums = [torch.zeros(3), torch.zeros(4)]
    scalars = ETScalars(lr=0.1, momentum=0.0)
    et_square_sums_range(EMPTY.clone(), EMPTY, 12, (3, 4), sums, scalars)
    et_update_range(EMPTY.clone(), EMPTY, None, 12, (3, 4), [torch.rand(3), torch.rand(4)], 1.0, 1e-8, scalars)
    assert all(not total.any() for total in sums)
    assert squared_norm_range(EMPTY.clone(), EMPTY, scalars) == 0.0
    scale_range(EMPTY.clone(), EMPTY, 1.0, scalars)
