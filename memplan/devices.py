"""Devices memplan benchmarks on (CPU, CUDA): names, memory, and the allocator's settings.

A :class:`Device` is a place to run (``cpu``, ``cuda``, ``cuda:N``) with its free memory. What
the cost model knows about a device (its bandwidths) is a
:class:`memplan.costmodel.DeviceProfile`.
"""

from __future__ import annotations

import contextlib
import ctypes
import platform
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator


from memplan.errors import DeviceError


DEVICE_KINDS = ("cpu", "cuda")

_M_TRIM_THRESHOLD, _M_MMAP_MAX = -1, -4
_GLIBC_DEFAULT_TRIM_THRESHOLD, _GLIBC_DEFAULT_MMAP_MAX = 128 * 1024, 65536


@dataclass(frozen=True)
class Device:
    """A torch device to measure on: ``cpu``, or ``cuda`` with an index."""

    kind: str
    index: int | None = None

    @property
    def torch_device(self) -> str:
        """The name torch understands (``cpu``, ``cuda:0``)."""
        return self.kind if self.index is None else f"{self.kind}:{self.index}"

    @property
    def description(self) -> str:
        """The device and its model, for reports (``cuda:0 (NVIDIA H100 80GB HBM3)``)."""
        return f"{self.torch_device} ({self.model_name()})"

    def model_name(self) -> str:
        """The CPU model from /proc/cpuinfo, or the GPU's name."""
        if self.kind == "cuda":
            import torch

            return torch.cuda.get_device_name(self.index)
        try:
            for line in Path("/proc/cpuinfo").read_text().splitlines():
                if line.startswith("model name"):
                    return line.partition(":")[2].strip()
        except OSError:
            pass
        return platform.processor() or platform.machine()

    def synchronize(self) -> None:
        """Wait for queued work (a no-op on CPU)."""
        if self.kind == "cuda":
            import torch

            torch.cuda.synchronize(self.index)

    def free_memory(self) -> int:
        """Bytes that could be allocated now: MemAvailable on CPU, the driver's free memory on CUDA."""
        if self.kind == "cuda":
            import torch

            return int(torch.cuda.mem_get_info(self.index)[0])
        return _meminfo_bytes("MemAvailable")

    def total_memory(self) -> int | None:
        """Bytes of memory the device has (MemTotal on CPU)."""
        if self.kind == "cuda":
            import torch

            return int(torch.cuda.mem_get_info(self.index)[1])
        try:
            return _meminfo_bytes("MemTotal")
        except DeviceError:
            return None


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


def parse_device(text: str) -> Device:
    """``cpu``, ``cuda`` or ``cuda:N`` -> Device; DeviceError when unknown or not available here."""
    name = str(text).strip().lower()
    if name == "cpu":
        return Device("cpu")
    kind, _, index_text = name.partition(":")
    if kind != "cuda" or (index_text and not index_text.isdigit()):
        raise DeviceError(f"unknown device {text!r} (use cpu, cuda or cuda:N)")
    import torch

    if not torch.cuda.is_available():
        raise DeviceError(f"device {text!r} asked for, but CUDA is not available here (torch {torch.__version__})")
    index = int(index_text) if index_text else torch.cuda.current_device()
    if index >= torch.cuda.device_count():
        raise DeviceError(f"device {text!r}: only {torch.cuda.device_count()} CUDA device(s) here")
    return Device("cuda", index)


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


@contextlib.contextmanager
def keep_freed_memory(enabled: bool = True) -> Iterator[None]:
    """While active, glibc keeps freed memory for reuse instead of returning it to the system.

    By default glibc gives large freed blocks back with munmap (or trims the heap) and the
    next step page-faults them in again, so a CPU step time depended on the allocator's
    history: 210 or 380 ms for the same AdamW step, 215 or 410 ms for SM3
    (benchmarks/RESULTS.md). torch's CUDA caching allocator never returns memory between steps;
    this makes a CPU measurement mean the same thing. On exit the defaults come back and the
    freed memory is released (malloc_trim). Elsewhere than glibc this does nothing.
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


def release_freed_memory() -> None:
    """Give freed heap memory back to the system (glibc's malloc_trim), so free memory is accurate."""
    libc = _glibc()
    if libc is not None:
        libc.malloc_trim(0)
