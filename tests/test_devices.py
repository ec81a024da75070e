"""memplan.devices: device names, and how the CPU and a CUDA GPU measure memory, peaks and time."""

import ctypes
import gc
import subprocess
import sys
import time
import weakref

import pytest
import torch

from memplan.devices import CpuDevice, CudaDevice, Device, device_type, parse_device
from memplan.errors import DeviceError

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@pytest.mark.parametrize("text, message", [("tpu", "unknown device"), ("cuda:x", "unknown device"),
                                           ("cpu:0", "unknown device")])
def test_unknown_devices_are_refused(text, message):
    with pytest.raises(DeviceError, match=message):
        parse_device(text)


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_cuda_without_cuda_is_a_clear_error():
    with pytest.raises(DeviceError, match="CUDA is not available"):
        parse_device("cuda:0")


def test_each_kind_has_its_device_class():
    assert device_type("cpu") is CpuDevice and device_type("cuda") is CudaDevice
    assert all(issubclass(cls, Device) for cls in (CpuDevice, CudaDevice))
    with pytest.raises(DeviceError, match="unknown device kind 'tpu'"):
        device_type("tpu")


def test_importing_devices_does_not_import_torch():
    code = "import memplan.costmodel, memplan.devices, sys; assert 'torch' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_the_cpu_device_reads_its_memory_and_keeps_no_allocator_count():
    cpu = parse_device(" CPU ")
    assert cpu == CpuDevice() and cpu.kind == "cpu" and cpu.index is None and cpu.torch_device == "cpu"
    assert cpu.description == f"cpu ({cpu.model_name()})" and cpu.model_name()
    assert 0 < cpu.free_memory() <= cpu.total_memory()
    assert cpu.allocated() is None and cpu.threads() == torch.get_num_threads()
    assert cpu.write_allocate and cpu.foreach_kernel_per_tensor and "torch.profiler" in cpu.peak_method
    cpu.synchronize()
    with pytest.raises(DeviceError, match="no index"):
        CpuDevice(0)


def test_cpu_peak_during_sees_a_temporary_and_what_the_function_keeps():
    size = 4 * 2**20

    def temporary():
        torch.ones(size // 4).sum()
        return "done"

    result, peak = CpuDevice().peak_during(temporary)
    assert result == "done" and size <= peak <= size + 4096
    kept, peak = CpuDevice().peak_during(lambda: torch.ones(size // 2, dtype=torch.uint8))
    assert kept.numel() == size // 2 and size // 2 <= peak <= size // 2 + 4096
    assert CpuDevice().peak_during(lambda: 7) == (7, 0)


def test_cpu_time_steps_are_wall_clock_per_call():
    calls, after = [], []
    times = CpuDevice().time_steps(lambda: (calls.append(1), time.sleep(0.01)), 3, lambda: after.append(1))
    assert len(times) == 3 and len(calls) == len(after) == 3
    assert all(10.0 <= ms < 1000.0 for ms in times)
    assert len(CpuDevice().time_steps(lambda: None, 2)) == 2


def test_cpu_release_collects_garbage():
    class Cycle:
        pass

    cycle = Cycle()
    cycle.self = cycle
    alive = weakref.ref(cycle)
    gc.disable()
    try:
        del cycle
        assert alive() is not None
        CpuDevice().release()
        assert alive() is None
    finally:
        gc.enable()


class _FakeLibc:
    """Records the allocator calls keep_freed makes."""

    def __init__(self):
        self.calls = []

    def mallopt(self, option, value):
        self.calls.append(("mallopt", option, value))

    def malloc_trim(self, pad):
        self.calls.append(("malloc_trim", pad))


def test_keep_freed_sets_glibc_to_keep_memory_and_restores_its_defaults(monkeypatch):
    from memplan import devices

    libc = _FakeLibc()
    monkeypatch.setattr(devices, "_glibc", lambda: libc)
    with pytest.raises(RuntimeError):
        with CpuDevice().keep_freed():
            assert libc.calls == [("mallopt", -4, 0), ("mallopt", -1, 2**31 - 1)]
            raise RuntimeError("a failing step still restores the settings")
    assert libc.calls[2:] == [("mallopt", -4, 65536), ("mallopt", -1, 128 * 1024), ("malloc_trim", 0)]
    libc.calls.clear()
    with CpuDevice().keep_freed(enabled=False):
        pass
    assert libc.calls == []


def _mallinfo():
    """glibc's mallinfo2 (hblkhd: bytes in mmapped blocks, fordblks: free heap bytes), or None
    where it is missing."""
    try:
        libc = ctypes.CDLL("libc.so.6")
        mallinfo2 = libc.mallinfo2
    except (OSError, AttributeError):
        return None

    class MallInfo2(ctypes.Structure):
        _fields_ = [(name, ctypes.c_size_t) for name in ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks",
                                                        "fsmblks", "uordblks", "fordblks", "keepcost")]

    mallinfo2.restype = MallInfo2
    return mallinfo2


def test_keep_freed_keeps_large_blocks_off_mmap_while_active_on_glibc():
    mallinfo = _mallinfo()
    if mallinfo is None:
        pytest.skip("needs glibc's mallinfo2")

    def mmapped():
        return mallinfo().hblkhd

    # above glibc's largest dynamic mmap threshold (32 MiB), which earlier frees can raise, and
    # larger than all the free heap memory that earlier large steps in this process left behind,
    # from which glibc would serve the block without a new mapping
    size = max(64 * 2**20, mallinfo().fordblks + 2**20)

    def mmapped_by_one_allocation():
        before = mmapped()
        block = torch.empty(size, dtype=torch.uint8)
        grown = mmapped() - before
        del block
        return grown

    with CpuDevice().keep_freed():
        assert mmapped_by_one_allocation() == 0
    assert mmapped_by_one_allocation() >= size


@pytest.mark.cuda
@needs_cuda
def test_the_cuda_device_names_itself_and_keeps_nothing_special():
    gpu = parse_device("cuda")
    assert isinstance(gpu, CudaDevice) and gpu.index == torch.cuda.current_device()
    assert gpu.torch_device == f"cuda:{gpu.index}" and gpu.model_name() == torch.cuda.get_device_name(gpu.index)
    assert 0 < gpu.free_memory() <= gpu.total_memory() and gpu.threads() is None
    assert not gpu.write_allocate and not gpu.foreach_kernel_per_tensor and "max_memory_allocated" in gpu.peak_method
    with gpu.keep_freed():
        pass
    assert parse_device(f"cuda:{gpu.index}") == gpu


@pytest.mark.cuda
@needs_cuda
def test_cuda_allocated_counts_a_tensor_exactly():
    gpu = parse_device("cuda")
    gpu.release()
    before = gpu.allocated()
    block = torch.empty(2**20, dtype=torch.uint8, device=gpu.torch_device)
    assert gpu.allocated() - before == 2**20
    del block
    assert gpu.allocated() == before


@pytest.mark.cuda
@needs_cuda
def test_cuda_peak_during_sees_a_temporary_beyond_what_was_held():
    gpu = parse_device("cuda")
    held = torch.ones(2**20, device=gpu.torch_device)
    size = 8 * 2**20

    def temporary():
        return float(torch.ones(size // 4, device=gpu.torch_device).sum())

    result, peak = gpu.peak_during(temporary)
    assert result == size // 4 and size <= peak <= size + 2**16
    assert gpu.peak_during(lambda: 7) == (7, 0)
    del held


@pytest.mark.cuda
@needs_cuda
def test_cuda_time_steps_are_event_times_per_call():
    gpu = parse_device("cuda")
    matrix = torch.randn(2048, 2048, device=gpu.torch_device)
    after = []
    times = gpu.time_steps(lambda: matrix @ matrix, 4, lambda: after.append(1))
    assert len(times) == 4 and len(after) == 4 and all(ms > 0 for ms in times)
    slept = gpu.time_steps(lambda: time.sleep(0.01), 2)
    assert all(ms >= 9.0 for ms in slept)


@pytest.mark.cuda
@needs_cuda
def test_cuda_release_returns_cached_blocks_and_resets_the_peak():
    gpu = parse_device("cuda")
    gpu.release()
    reserved = torch.cuda.memory_reserved(gpu.index)
    block = torch.empty(64 * 2**20, dtype=torch.uint8, device=gpu.torch_device)
    del block
    assert torch.cuda.memory_reserved(gpu.index) >= reserved + 64 * 2**20
    gpu.release()
    assert torch.cuda.memory_reserved(gpu.index) == reserved
    assert torch.cuda.max_memory_allocated(gpu.index) == gpu.allocated()
