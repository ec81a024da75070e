"""memplan.census: the step census, its cache model, kernel counts and temporaries."""

import math

import pytest
import torch
from hypothesis import given, settings, strategies as st

from memplan.methods import param_state
from memplan.optim import build_optimizer
from memplan.costmodel import DeviceProfile, predict_seconds
from memplan.devices import CpuDevice, CudaDevice
from memplan.census import LruCache, StepCensus, census_step, fused_census, method_census
from memplan.timing import CALIBRATION_CACHE_BYTES

SHAPES = [((64, 32), "float32"), ((64, 32), "float32"), ((8, 4, 3, 3), "float32"), ((10,), "float32")]

def _naive_hits(accesses: list[tuple[int, int]], capacity: int) -> list[bool]:
    """Hit or miss of every access by brute force: a region hits when the distinct regions touched
    since its previous access, plus itself, fit in ``capacity``."""
    hits = []
    for position, (region, size) in enumerate(accesses):
        earlier = [index for index in range(position) if accesses[index][0] == region]
        if not earlier:
            hits.append(False)
            continue
        between = {accesses[index] for index in range(earlier[-1] + 1, position) if accesses[index][0] != region}
        hits.append(sum(other_size for _, other_size in between) + size <= capacity)
    return hits


class _FreshTemporaries:
    """Allocates a temporary the size of the parameter, then one twice that size, then frees both."""

    def __init__(self, named):
        self.param = named[0][1]

    def step(self):
        doubled = self.param.grad * 2
        both = torch.cat([doubled, self.param.grad])
        self.param.sub_(both[: self.param.numel()])
        del doubled, both

def _total_bytes(census: StepCensus) -> int:
    return census.read_hit + census.read_miss + census.write_hit + census.update_miss + census.overwrite_miss


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(0, 6), min_size=1, max_size=40), st.integers(0, 60))
def test_lru_cache_agrees_with_brute_force(regions, capacity):
    accesses = [(region, 3 + 2 * region) for region in regions]
    cache = LruCache(capacity)
    assert [cache.touch(region, size) for region, size in accesses] == _naive_hits(accesses, capacity)


def test_census_counts_kernels_traffic_and_peak_of_a_known_step():
    numel = 1000
    census = census_step(_FreshTemporaries, [((numel,), "float32")], cache_bytes=0)
    assert census.kernels == 3
    assert census.peak_temporary_bytes == 3 * 4 * numel
    # mul: read 1, write 1 fresh; cat: read 2, write 2 fresh; sub_: read 2, update 1
    assert census.read_miss == 4 * numel * 5 and census.overwrite_miss == 4 * numel * 3
    assert census.update_miss == 4 * numel and census.cache_traffic == 0


def test_foreach_kernels_count_per_tensor_on_cpu_and_per_launch_on_cuda():
    def foreach_step(named):
        class Step:
            def step(self):
                torch._foreach_mul_([param for _, param in named], 0.5)
        return Step()

    census = census_step(foreach_step, [((100,), "float32")] * 220, cache_bytes=0)
    assert census.kernels == census.foreach_kernels == 220
    assert census.launches(CpuDevice.foreach_kernel_per_tensor) == 220
    assert census.launches(CudaDevice.foreach_kernel_per_tensor) == pytest.approx(2.0)


@pytest.mark.parametrize("spec", ["smmf", "et2", "sm3", "et_inf"])
def test_memplan_methods_counted_per_shape_agree_with_the_whole_step(spec):
    """Counting each distinct shape once gives the whole step's kernels, bytes and peak; only the
    cache split differs a little (across parameters the allocator recycles blocks)."""
    whole = census_step(lambda named: build_optimizer(spec, [param for _, param in named], lr=1e-3), SHAPES,
                        CALIBRATION_CACHE_BYTES)
    per_shape = method_census(spec, SHAPES, CALIBRATION_CACHE_BYTES)
    assert (per_shape.kernels, _total_bytes(per_shape), per_shape.peak_temporary_bytes) == \
        (whole.kernels, _total_bytes(whole), whole.peak_temporary_bytes)
    device = DeviceProfile("cpu-like", "cpu", 40e9, 1e-6, "test", cache_bytes=CALIBRATION_CACHE_BYTES,
                           cache_bandwidth=60e9, write_allocate=True)
    assert predict_seconds(per_shape, device).seconds == pytest.approx(predict_seconds(whole, device).seconds, rel=0.1)


def test_fused_census_is_the_compulsory_traffic():
    census = fused_census("adam:impl=fused", SHAPES)
    assert census.memory_traffic(True) == sum(param_state("adam", shape, dtype).bytes_moved for shape, dtype in SHAPES)
    assert census.kernels == len(SHAPES) and census.peak_temporary_bytes == 0


def test_adam_keeps_one_full_size_temporary_and_memplan_stays_in_blocks():
    numel = sum(math.prod(shape) for shape, _ in SHAPES)
    assert method_census("adam", SHAPES, CALIBRATION_CACHE_BYTES).peak_temporary_bytes == 4 * numel
    big = [((2048, 1024), "float32")]
    assert method_census("smmf", big, CALIBRATION_CACHE_BYTES).peak_temporary_bytes < 8 * 2**20


def test_a_fused_census_records_memplan_kernels_elements_under_their_key():
    census = fused_census("smmf:beta1=none,impl=compiled", [(shape, dtype) for shape, dtype in SHAPES])
    moved = sum(param_state("smmf:beta1=none", shape, dtype).bytes_moved for shape, dtype in SHAPES)
    assert census.fused == (("smmf:beta1=none", sum(math.prod(shape) for shape, _ in SHAPES), moved),)
    assert fused_census("adamw:impl=fused", SHAPES).fused == ()   # torch's kernel: bandwidth only
    twice = census.repeated(2) + census
    assert twice.fused == (("smmf:beta1=none", 3 * census.fused[0][1], 3 * moved),)
    mixed = census + fused_census("sm3:momentum=0,impl=compiled", SHAPES[:1])
    assert [key for key, _, _ in mixed.fused] == ["sm3:momentum=0", "smmf:beta1=none"]
