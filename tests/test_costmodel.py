"""memplan.costmodel: device profiles (bundled, saved, resolved) and the cost model."""

import pytest
import yaml

from memplan.census import StepCensus
from memplan.costmodel import (CollectiveModel, DeviceProfile, bundled_device_names, default_device_profile, describes,
                               load_bundled_device, predict_seconds, resolve_device_profile)
from memplan.devices import CpuDevice
from memplan.errors import ProfileError


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
    ({"kind": "tpu"}, "kind: expected one of cpu, cuda, got 'tpu'"),
    ({"memory_bandwidth": 0}, "memory_bandwidth: expected a number > 0, got 0"),
    ({"cache_bytes": -1}, "cache_bytes: expected an integer >= 0, got -1"),
    ({"colour": "red"}, r"colour: unknown key \(valid: cache_bandwidth, "),
    ({"threads": True}, "threads: expected an integer >= 0 or null, got true"),
    ({"memplan_device": 7}, "format 7 is not supported"),
])
def test_bad_device_profiles_name_the_problem(change, message):
    data = {**load_bundled_device("cpu-generic").to_dict(), **change}
    with pytest.raises(ProfileError, match=message):
        DeviceProfile.from_dict(data)


def test_a_profile_describes_devices_of_its_kind_and_model():
    cpu = CpuDevice()
    generic = load_bundled_device("cpu-generic")
    assert describes(generic, cpu) and default_device_profile(cpu) == generic
    assert describes(DeviceProfile("here", "cpu", 1e9, 1e-6, "test", match=(cpu.model_name(),)), cpu)
    assert not describes(DeviceProfile("there", "cpu", 1e9, 1e-6, "test", match=("a CPU not here",)), cpu)
    assert not describes(load_bundled_device("h100"), cpu)


def test_resolve_prefers_given_then_saved_then_bundled(tmp_path):
    cpu = CpuDevice()
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


def test_a_collective_costs_its_latency_and_its_bus_bytes():
    """An all-reduce of 1,000 bytes on 4 ranks moves 1,500 bus bytes; an all-gather 3,000."""
    from memplan.sharding import StepCommunication

    model = CollectiveModel(latency=1e-4, bandwidth=1e6)
    assert model.seconds(StepCommunication(1, 1_000), 4) == pytest.approx(1e-4 + 1.5e-3)
    assert model.seconds(StepCommunication(1, 1_000, gathered=True), 4) == pytest.approx(1e-4 + 3e-3)
    assert model.seconds(StepCommunication(0, 0), 4) == 0.0


def test_a_measured_kernel_rate_replaces_its_bytes_over_the_bandwidth():
    census = StepCensus(read_miss=600, update_miss=400, kernels=2,
                        fused=(("smmf", 100, 800), ("sm3", 50, 200)))
    device = DeviceProfile("d", "cpu", memory_bandwidth=100.0, kernel_overhead=0.5, source="test",
                           fused_element_seconds={"smmf": 0.25})
    cost = predict_seconds(census, device)
    # smmf's 100 elements at 0.25 s; its 800 bytes leave the memory term, sm3's 200 stay (no rate)
    assert cost.fused_seconds == pytest.approx(25.0) and cost.memory_seconds == pytest.approx(2.0)
    assert cost.seconds == pytest.approx(25.0 + 2.0 + 1.0)
    assert device.fused_rate("smmf") == 0.25 and device.fused_rate("sm3") is None
    assert DeviceProfile.from_yaml(device.to_yaml()) == device
    assert yaml.safe_load(device.to_yaml())["fused_element_seconds"] == {"smmf": 0.25}


def test_a_measured_kernel_step_cost_is_added_once_a_step_for_each_rated_kernel():
    census = StepCensus(read_miss=600, update_miss=400, kernels=2,
                        fused=(("smmf", 100, 800), ("sm3", 50, 200)))
    device = DeviceProfile("d", "cpu", memory_bandwidth=100.0, kernel_overhead=0.5, source="test",
                           fused_element_seconds={"smmf": 0.25}, fused_step_seconds={"smmf": 3.0, "sm3": 7.0})
    cost = predict_seconds(census, device)
    # smmf: 100 elements at 0.25 s and 3 s a step; sm3 has no rate, so its bytes (and no step cost) count
    assert cost.fused_seconds == pytest.approx(28.0) and cost.memory_seconds == pytest.approx(2.0)
    assert device.fused_step("smmf") == 3.0 and device.fused_step("et2") == 0.0
    assert DeviceProfile.from_yaml(device.to_yaml()) == device
    assert yaml.safe_load(device.to_yaml())["fused_step_seconds"] == {"sm3": 7.0, "smmf": 3.0}


def test_a_profile_refuses_a_bad_kernel_rate():
    with pytest.raises(ProfileError, match="fused_element_seconds"):
        DeviceProfile("d", "cpu", memory_bandwidth=1.0, kernel_overhead=0.0, source="t",
                      fused_element_seconds={"smmf": -1.0})
    with pytest.raises(ProfileError, match="fused_step_seconds"):
        DeviceProfile("d", "cpu", memory_bandwidth=1.0, kernel_overhead=0.0, source="t",
                      fused_step_seconds={"smmf": -1.0})
