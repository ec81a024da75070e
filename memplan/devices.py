"""The devices memplan measures on: a CPU, or a CUDA GPU, and how each one measures.

A :class:`Device` is a place to run (``cpu``, ``cuda``, ``cuda:N``) that knows how to measure
there: its free and total memory, the bytes its allocator holds, the peak of a function's
temporaries, the time of repeated calls, and how to give memory back between measurements.
:class:`CpuDevice` and :class:`CudaDevice` differ in every one of these, so nothing else in
memplan asks which kind of device it has. What the cost model knows about a device (its
bandwidths) is a :class:`memplan.costmodel.DeviceProfile`.

torch is imported only when a device measures: planning from a bundled profile never imports it.
"""

from __future__ import annotations

import contextlib
import ctypes
import gc
import os
import platform
import time
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, ClassVar, Iterator, TypeVar

from memplan.errors import DeviceError, UnknownDeviceError

Result = TypeVar("Result")

_M_TRIM_THRESHOLD, _M_MMAP_MAX = -1, -4
_GLIBC_DEFAULT_TRIM_THRESHOLD, _GLIBC_DEFAULT_MMAP_MAX = 128 * 1024, 65536


@dataclass(frozen=True)
class Device(ABC):
    """A torch device to measure on: ``cpu``, or ``cuda`` with an index."""

    index: int | None = None

    kind: ClassVar[str]
    """``cpu`` or ``cuda``: the device type torch names, and the ``kind`` of its device profiles."""
    peak_method: ClassVar[str]
    """How :meth:`peak_during` measures, for reports."""
    write_allocate: ClassVar[bool]
    """Whether a write that misses the cache first reads the line (CPU caches do)."""
    foreach_kernel_per_tensor: ClassVar[bool]
    """Whether torch's foreach operators launch one kernel per tensor here (on CUDA they launch
    one per group of chunks)."""

    @property
    def torch_device(self) -> str:
        """The name torch understands (``cpu``, ``cuda:0``)."""
        return self.kind if self.index is None else f"{self.kind}:{self.index}"

    @property
    def description(self) -> str:
        """The device and its model, for reports (``cuda:0 (NVIDIA H100 80GB HBM3)``)."""
        return f"{self.torch_device} ({self.model_name()})"

    @abstractmethod
    def model_name(self) -> str:
        """The device's model: the CPU model from /proc/cpuinfo, or the GPU's name."""

    @abstractmethod
    def synchronize(self) -> None:
        """Wait for queued work (a no-op on CPU)."""

    @abstractmethod
    def free_memory(self) -> int:
        """Bytes that could be allocated now: MemAvailable on CPU, the driver's free memory on CUDA."""

    @abstractmethod
    def total_memory(self) -> int | None:
        """Bytes of memory the device has, or None when it cannot be read."""

    @abstractmethod
    def allocated(self) -> int | None:
        """Bytes torch's allocator holds on the device now, or None where it keeps no such count (CPU)."""

    @abstractmethod
    def peak_during(self, function: Callable[[], Result]) -> tuple[Result, int]:
        """Run ``function``; return its result and the peak of the bytes it held at once on the
        device beyond what was allocated when it started."""

    @abstractmethod
    def time_steps(self, function: Callable[[], Any], count: int,
                   after_each: Callable[[], None] | None = None) -> list[float]:
        """Call ``function`` ``count`` times; return the milliseconds each call took on the device.
        ``after_each`` runs after each call, outside the timed part."""

    def release(self) -> None:
        """Collect garbage and give freed memory back, so the next measurement starts from a clean device."""
        gc.collect()

    def prepare(self) -> None:
        """Create the memory that libraries allocate on first use and keep for the process, so that
        no measurement counts it as an optimizer's (nothing on a CPU)."""

    @abstractmethod
    def keep_freed(self, enabled: bool = True) -> contextlib.AbstractContextManager[None]:
        """A context in which memory freed between steps stays with the process, as torch's CUDA
        caching allocator keeps it, so every step is timed with the same allocator state."""

    @abstractmethod
    def threads(self) -> int | None:
        """CPU threads torch runs this device's kernels with (None on a GPU, whose kernels do not use them)."""


@dataclass(frozen=True)
class CpuDevice(Device):
    """The host CPU. It keeps no allocation counter: peaks come from the profiler's memory events."""

    kind: ClassVar[str] = "cpu"
    peak_method: ClassVar[str] = ("torch.profiler memory events: the maximum of the running sum of the bytes "
                                  "allocated minus freed during one extra, untimed step")
    write_allocate: ClassVar[bool] = True
    foreach_kernel_per_tensor: ClassVar[bool] = True

    def __post_init__(self) -> None:
        if self.index is not None:
            raise DeviceError(f"the CPU device has no index (got {self.index!r})")

    def model_name(self) -> str:
        """The CPU model from /proc/cpuinfo, else what the platform module says."""
        try:
            for line in Path("/proc/cpuinfo").read_text().splitlines():
                if line.startswith("model name"):
                    return line.partition(":")[2].strip()
        except OSError:
            pass
        return platform.processor() or platform.machine()

    def synchronize(self) -> None:
        """CPU work is done when the call returns: nothing to wait for."""

    def free_memory(self) -> int:
        """MemAvailable from /proc/meminfo."""
        return _meminfo_bytes("MemAvailable")

    def total_memory(self) -> int | None:
        """MemTotal from /proc/meminfo, or None when it cannot be read."""
        try:
            return _meminfo_bytes("MemTotal")
        except DeviceError:
            return None

    def allocated(self) -> None:
        """None: the CPU allocator keeps no count of the bytes it holds."""
        return None

    def peak_during(self, function: Callable[[], Result]) -> tuple[Result, int]:
        """Run ``function`` under torch.profiler with memory events; the peak is the maximum of the
        running sum of their sizes (allocations positive, frees negative).

        The profiler slows the code it watches: never time a run that is measured this way.
        """
        from torch.profiler import ProfilerActivity, profile

        # kineto logs two "USDT" lines per profiled call below level 6
        os.environ.setdefault("KINETO_LOG_LEVEL", "6")
        with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as profiler:
            result = function()
        events = sorted(
            (event.start_ns(), event.nbytes())
            for event in profiler.profiler.kineto_results.events()
            if event.name() == "[memory]" and str(event.device_type()).endswith("CPU")
        )
        running = peak = 0
        for _, change in events:
            running += change
            peak = max(peak, running)
        return result, peak

    def time_steps(self, function: Callable[[], Any], count: int,
                   after_each: Callable[[], None] | None = None) -> list[float]:
        """Wall-clock milliseconds of each of ``count`` calls."""
        times = []
        for _ in range(count):
            began = time.perf_counter()
            function()
            times.append((time.perf_counter() - began) * 1e3)
            if after_each is not None:
                after_each()
        return times

    def release(self) -> None:
        """Collect garbage and return freed heap memory to the system (glibc's malloc_trim), so
        free memory reads true."""
        super().release()
        libc = _glibc()
        if libc is not None:
            libc.malloc_trim(0)

    @contextlib.contextmanager
    def keep_freed(self, enabled: bool = True) -> Iterator[None]:
        """While active, glibc keeps freed memory for reuse instead of returning it to the system.

        By default glibc gives large freed blocks back with munmap (or trims the heap) and the
        next step page-faults them in again, so a CPU step time depended on the allocator's
        history: 210 or 380 ms for the same AdamW step, 215 or 410 ms for SM3
        (benchmarks/RESULTS.md). torch's CUDA caching allocator never returns memory between steps;
        this makes a CPU measurement mean the same thing. On exit the defaults come back and the
        freed memory is released (malloc_trim). Elsewhere than glibc, or not ``enabled``, this
        does nothing.
        """
        libc = _glibc() if enabled else None
        if libc is None:
            yield
            return
        libc.mallopt(_M_MMAP_MAX, 0)
        libc.mallopt(_M_TRIM_THRESHOLD, 2**31 - 1)
        try:
            yield
        finally:
            libc.mallopt(_M_MMAP_MAX, _GLIBC_DEFAULT_MMAP_MAX)
            libc.mallopt(_M_TRIM_THRESHOLD, _GLIBC_DEFAULT_TRIM_THRESHOLD)
            libc.malloc_trim(0)

    def threads(self) -> int:
        """torch's intra-op thread count."""
        import torch

        return torch.get_num_threads()


@dataclass(frozen=True)
class CudaDevice(Device):
    """One CUDA GPU. torch's caching allocator counts its bytes and its peak."""

    index: int = 0
    kind: ClassVar[str] = "cuda"
    peak_method: ClassVar[str] = ("torch.cuda.max_memory_allocated after reset_peak_memory_stats, minus "
                                  "memory_allocated before the step")
    write_allocate: ClassVar[bool] = False
    foreach_kernel_per_tensor: ClassVar[bool] = False

    def model_name(self) -> str:
        """The GPU's name as the driver reports it."""
        import torch

        return torch.cuda.get_device_name(self.index)

    def synchronize(self) -> None:
        """Wait for the work queued on this GPU."""
        import torch

        torch.cuda.synchronize(self.index)

    def free_memory(self) -> int:
        """The driver's free memory on this GPU."""
        import torch

        return int(torch.cuda.mem_get_info(self.index)[0])

    def total_memory(self) -> int:
        """The GPU's memory as the driver reports it."""
        import torch

        return int(torch.cuda.mem_get_info(self.index)[1])

    def allocated(self) -> int:
        """``torch.cuda.memory_allocated``: bytes of live tensors, each rounded up to 512."""
        import torch

        return int(torch.cuda.memory_allocated(self.index))

    def peak_during(self, function: Callable[[], Result]) -> tuple[Result, int]:
        """The allocator's peak during ``function`` (``max_memory_allocated`` after
        ``reset_peak_memory_stats``) minus what it held before."""
        import torch

        self.synchronize()
        torch.cuda.reset_peak_memory_stats(self.index)
        before = torch.cuda.memory_allocated(self.index)
        result = function()
        self.synchronize()
        return result, int(torch.cuda.max_memory_allocated(self.index) - before)

    def time_steps(self, function: Callable[[], Any], count: int,
                   after_each: Callable[[], None] | None = None) -> list[float]:
        """Milliseconds between CUDA events recorded around each call on this GPU's current stream,
        read after one synchronisation at the end (synchronising after each call would add the
        host's launch latency to every step)."""
        import torch

        with torch.cuda.device(self.index):
            starts = [torch.cuda.Event(enable_timing=True) for _ in range(count)]
            ends = [torch.cuda.Event(enable_timing=True) for _ in range(count)]
            for start, end in zip(starts, ends):
                start.record()
                function()
                end.record()
                if after_each is not None:
                    after_each()
            self.synchronize()
            return [start.elapsed_time(end) for start, end in zip(starts, ends)]

    def release(self) -> None:
        """Collect garbage, return the caching allocator's unused blocks to the driver and reset
        the peak statistics."""
        import torch

        super().release()
        self.synchronize()
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(self.index)

    def prepare(self) -> None:
        """Create this GPU's cuBLAS workspace: torch allocates it through the caching allocator on
        a stream's first BLAS call (32 MiB on Hopper) and keeps it, so without this the first
        method whose step calls cuBLAS (a dot product, a norm) would seem to hold it as state."""
        import torch

        with torch.cuda.device(self.index):
            ones = torch.ones(1, 1, device=self.torch_device)
            torch.mm(ones, ones)
        self.synchronize()

    def keep_freed(self, enabled: bool = True) -> contextlib.AbstractContextManager[None]:
        """Nothing to do: the caching allocator keeps freed blocks already."""
        return contextlib.nullcontext()

    def threads(self) -> None:
        """None: GPU kernels do not run on the host's threads."""
        return None


DEVICE_TYPES: dict[str, type[Device]] = {"cpu": CpuDevice, "cuda": CudaDevice}
"""The device class for each kind."""

DEVICE_KINDS = tuple(DEVICE_TYPES)


def device_type(kind: str) -> type[Device]:
    """The device class for ``kind`` (``cpu`` or ``cuda``); DeviceError otherwise."""
    try:
        return DEVICE_TYPES[kind]
    except KeyError:
        raise UnknownDeviceError(f"unknown device kind {kind!r} (use {' or '.join(DEVICE_KINDS)})") from None


def parse_device(text: str) -> Device:
    """``cpu``, ``cuda`` or ``cuda:N`` -> Device; DeviceError when unknown or not available here."""
    name = str(text).strip().lower()
    if name == "cpu":
        return CpuDevice()
    kind, _, index_text = name.partition(":")
    if kind != "cuda" or (index_text and not index_text.isdigit()):
        raise UnknownDeviceError(f"unknown device {text!r} (use cpu, cuda or cuda:N)")
    import torch

    if not torch.cuda.is_available():
        raise DeviceError(f"device {text!r} asked for, but CUDA is not available here (torch {torch.__version__})")
    index = int(index_text) if index_text else torch.cuda.current_device()
    if index >= torch.cuda.device_count():
        raise DeviceError(f"device {text!r}: only {torch.cuda.device_count()} CUDA device(s) here")
    return CudaDevice(index)


def _meminfo_bytes(key: str) -> int:
    """A /proc/meminfo entry in bytes."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            name, _, value = line.partition(":")
            if name == key:
                return int(value.split()[0]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    raise DeviceError(f"cannot read {key} from /proc/meminfo; give the memory to use with --memory")


def _glibc() -> Any:
    """The C library when it is glibc (which has mallopt and malloc_trim), else None."""
    if platform.system() != "Linux":
        return None
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.gnu_get_libc_version  # noqa: B018 - present only in glibc
        return libc
    except (OSError, AttributeError):
        return None


__all__ = ["DEVICE_KINDS", "DEVICE_TYPES", "CpuDevice", "CudaDevice", "Device", "device_type", "parse_device"]
