"""memplan.timing: device profiles, the step census and its cache model, the cost model, calibration."""

import math

import pytest
import torch
from hypothesis import given, settings, strategies as st

from memplan.errors import ProfileError
from memplan.methods import param_state
from memplan.optim import build_optimizer
from memplan.devices import Device, DeviceProfile, bundled_device_names, default_device_profile, describes, load_bundled_device, parse_device, resolve_device_profile
from memplan.census import LruCache, StepCensus, census_step, fused_census, method_census
from memplan.errors import DeviceError
from memplan.timing import CALIBRATION_CACHE_BYTES, REDUCTION_KERNEL, STREAM_KERNELS, calibrate, predict_seconds

SHAPES = [((64, 32), "float32"), ((64, 32), "float32"), ((8, 4, 3, 3), "float32"), ((10,), "float32")]


def test_bundled_device_profiles_name_their_sources_and_round_trip():
    names = bundled_device_names()
    assert {"cpu-generic", "h100", "a100", "rtx3090"} <= set(names)
    for name in names:
        profile = load_bundled_device(name)
        assert profile.name == name and any(char.isdigit() for char in profile.source)
        assert DeviceProfile.from_yaml(profile.to_yaml()) == profile
    assert load_bundled_device("h100").memory_bandwidth == 3.35e12
    assert load_bundled_device("h100").kind == "cuda" and load_bundled_device("cpu-generic").kind == "cpu"


@pytest.mark.parametrize("change, message", [
    ({"kind": "tpu"}, "kind must be one of cpu, cuda"),
    ({"memory_bandwidth": 0}, "memory_bandwidth must be a positive number"),
    ({"cache_bytes": -1}, "cache_bytes must be a non-negative integer"),
    ({"colour": "red"}, "unknown keys colour"),
    ({"memplan_device": 7}, "format 7 is not supported"),
])
def test_bad_device_profiles_name_the_problem(change, message):
    data = {**load_bundled_device("cpu-generic").to_dict(), **change}
    with pytest.raises(ProfileError, match=message):
        DeviceProfile.from_dict(data)


def test_a_profile_describes_devices_of_its_kind_and_model():
    cpu = Device("cpu")
    generic = load_bundled_device("cpu-generic")
    assert describes(generic, cpu) and default_device_profile(cpu) == generic
    assert describes(DeviceProfile("here", "cpu", 1e9, 1e-6, "test", match=(cpu.model_name(),)), cpu)
    assert not describes(DeviceProfile("there", "cpu", 1e9, 1e-6, "test", match=("a CPU not here",)), cpu)
    assert not describes(load_bundled_device("h100"), cpu)


def test_resolve_prefers_given_then_saved_then_bundled(tmp_path):
    cpu = Device("cpu")
    saved = tmp_path / "device.yaml"
    assert resolve_device_profile(cpu, saved=saved)[1] == "bundled cpu-generic"
    DeviceProfile("mine", "cpu", 2e10, 1e-6, "test", match=(cpu.model_name(),)).save(saved)
    assert resolve_device_profile(cpu, saved=saved)[0].name == "mine"
    DeviceProfile("other machine", "cpu", 2e10, 1e-6, "test", match=("a CPU not here",)).save(saved)
    assert resolve_device_profile(cpu, saved=saved)[0].name == "cpu-generic"
    assert resolve_device_profile(cpu, "cpu-generic", saved=saved)[1] == "cpu-generic"
    with pytest.raises(ProfileError, match="describes a cuda device"):
        resolve_device_profile(cpu, "h100", saved=saved)
    with pytest.raises(ProfileError, match="no device profile file or bundled device 'nope'"):
        resolve_device_profile(cpu, "nope", saved=saved)


@pytest.mark.parametrize("text, message", [("tpu", "unknown device"), ("cuda:x", "unknown device"),
                                           ("cpu:0", "unknown device")])
def test_unknown_devices_are_refused(text, message):
    with pytest.raises(DeviceError, match=message):
        parse_device(text)


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_cuda_without_cuda_is_a_clear_error():
    with pytest.raises(DeviceError, match="CUDA is not available"):
        parse_device("cuda:0")


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


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(0, 6), min_size=1, max_size=40), st.integers(0, 60))
def test_lru_cache_agrees_with_brute_force(regions, capacity):
    accesses = [(region, 3 + 2 * region) for region in regions]
    cache = LruCache(capacity)
    assert [cache.touch(region, size) for region, size in accesses] == _naive_hits(accesses, capacity)


class _KernelTwice:
    """An 'optimizer' whose step runs one suite kernel twice over three meta tensors."""

    def __init__(self, kernel, named):
        self.kernel, self.tensors = kernel, [param.detach() for _, param in named]

    def step(self):
        for _ in range(2):
            self.kernel.run(*self.tensors)


@pytest.mark.parametrize("kernel", STREAM_KERNELS + (REDUCTION_KERNEL,), ids=lambda kernel: kernel.name)
def test_calibration_kernels_count_as_the_census_counts_them(kernel):
    numel = 4096
    census = census_step(lambda named: _KernelTwice(kernel, named), [((numel,), "float32")] * 3, 2**30)
    # the first run misses (memory), the second hits (cache); a 0-d sum output adds a few bytes
    from_memory = census.memory_traffic(True) + census.reduction_miss
    assert abs(from_memory - kernel.counted_bytes(4, False, True) * numel) <= 16
    assert abs(census.cache_traffic - kernel.counted_bytes(4, True, True) * numel) <= 16
    assert census.reduction_miss == (4 * numel if kernel is REDUCTION_KERNEL else 0)


class _FreshTemporaries:
    """Allocates a temporary the size of the parameter, then one twice that size, then frees both."""

    def __init__(self, named):
        self.param = named[0][1]

    def step(self):
        doubled = self.param.grad * 2
        both = torch.cat([doubled, self.param.grad])
        self.param.sub_(both[: self.param.numel()])
        del doubled, both


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
    assert census.launches("cpu") == 220 and census.launches("cuda") == pytest.approx(2.0)


def _total_bytes(census: StepCensus) -> int:
    return census.read_hit + census.read_miss + census.write_hit + census.update_miss + census.overwrite_miss


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


def test_cost_model_adds_its_five_terms():
    census = StepCensus(read_hit=3_000, read_miss=1_000, reduction_miss=1_200, overwrite_miss=500,
                        strided_norm_bytes=200, kernels=10)
    device = DeviceProfile("d", "cpu", memory_bandwidth=1e3, kernel_overhead=0.5, source="test", cache_bytes=1,
                           cache_bandwidth=3e3, reduction_bandwidth=400.0, strided_norm_bandwidth=100.0,
                           write_allocate=True)
    cost = predict_seconds(census, device)
    terms = (cost.memory_seconds, cost.reduction_seconds, cost.cache_seconds, cost.strided_norm_seconds,
             cost.overhead_seconds)
    assert terms == pytest.approx((2.0, 3.0, 1.0, 2.0, 5.0)) and cost.seconds == pytest.approx(13.0)
    no_cache = DeviceProfile("d", "cuda", memory_bandwidth=1e3, kernel_overhead=0.0, source="test")
    assert predict_seconds(census, no_cache).seconds == pytest.approx((3_000 + 1_000 + 1_200 + 500 + 200) / 1e3)


def test_calibrate_measures_positive_figures_for_this_machine():
    profile = calibrate("cpu", repeats=1, stream_bytes=8 * 2**20)
    assert profile.kind == "cpu" and profile.write_allocate and profile.threads == torch.get_num_threads()
    assert profile.memory_bandwidth > 1e8 and profile.cache_bandwidth > 1e8 and profile.reduction_bandwidth > 1e8
    assert profile.strided_norm_bandwidth > 1e6
    assert 0 < profile.kernel_overhead < 1e-3 and profile.cache_bytes == CALIBRATION_CACHE_BYTES
    assert describes(profile, Device("cpu")) and DeviceProfile.from_yaml(profile.to_yaml()) == profile
