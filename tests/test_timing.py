"""memplan.timing: calibration, and its kernels counted as the census counts them."""

import pytest
import torch

from memplan.census import census_step
from memplan.costmodel import DeviceProfile, describes
from memplan.devices import CpuDevice
from memplan.timing import CALIBRATION_CACHE_BYTES, REDUCTION_KERNEL, STREAM_KERNELS, calibrate


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


def test_calibrate_measures_positive_figures_for_this_machine():
    profile = calibrate("cpu", repeats=1, stream_bytes=8 * 2**20, fused_shapes=((64, 48), (33,)))
    assert profile.kind == "cpu" and profile.write_allocate and profile.threads == torch.get_num_threads()
    assert profile.memory_bandwidth > 1e8 and profile.cache_bandwidth > 1e8 and profile.reduction_bandwidth > 1e8
    assert profile.strided_norm_bandwidth > 1e6
    assert 0 < profile.kernel_overhead < 1e-3 and profile.cache_bytes == CALIBRATION_CACHE_BYTES
    assert describes(profile, CpuDevice()) and DeviceProfile.from_yaml(profile.to_yaml()) == profile
    try:
        import numba  # noqa: F401
    except ImportError:
        assert profile.fused_element_seconds == () and profile.fused_step_seconds == ()
    else:   # every CPU kernel variant timed
        assert {"smmf", "smmf:beta1=none", "sm3", "et2"} <= {key for key, _ in profile.fused_element_seconds}
        assert all(0 < rate < 1e-3 for _, rate in profile.fused_element_seconds)
        assert {key for key, _ in profile.fused_step_seconds} == {key for key, _ in profile.fused_element_seconds}
        assert all(0 <= seconds < 1.0 for _, seconds in profile.fused_step_seconds)
