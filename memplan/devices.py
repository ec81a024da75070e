"""Devices memplan benchmarks on (CPU, CUDA) and their profiles: memory, bandwidths, kernel overhead.

A :class:`Device` is a place to run (``cpu``, ``cuda``, ``cuda:N``) with its free memory; a
:class:`DeviceProfile` holds the figures the cost model in :mod:`memplan.timing` needs, bundled in
``profiles/devices/*.yaml`` or measured by ``memplan bench --calibrate``.
"""

from __future__ import annotations

import contextlib
import ctypes
import math
import platform
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Iterator, Mapping


from memplan.errors import DeviceError, ProfileError
from memplan.yamlfile import YamlDocument, bundled_names, bundled_text


DEVICE_FORMAT = 1
DEVICE_KINDS = ("cpu", "cuda")
DEFAULT_DEVICE_PROFILE_PATH = Path(".memplan") / "device.yaml"
"""Where ``memplan bench --calibrate`` saves the measured profile, and later runs look for it."""

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


@dataclass(frozen=True)
class DeviceProfile(YamlDocument):
    """What the cost model knows about a device, and where the numbers come from.

    Bandwidths are bytes per second and ``kernel_overhead`` is seconds per kernel launched.
    ``cache_bytes`` of 0 or no ``cache_bandwidth`` makes every access a memory access; no
    ``reduction_bandwidth`` or ``strided_norm_bandwidth`` means those stream at ``memory_bandwidth``.
    """

    name: str
    kind: str
    memory_bandwidth: float
    kernel_overhead: float
    source: str
    memory_bytes: int | None = None
    cache_bytes: int = 0
    cache_bandwidth: float | None = None
    reduction_bandwidth: float | None = None
    strided_norm_bandwidth: float | None = None
    write_allocate: bool = False
    """Whether a write that misses the cache first reads the line (CPU caches do)."""
    threads: int | None = None
    """CPU threads torch used when the profile was measured."""
    match: tuple[str, ...] = ()
    """Substrings of the device model names this profile describes (``"H100 80GB HBM3"``); a
    calibrated profile names the model it was measured on."""
    made_with: str = ""

    document_name = "device profile"
    error = ProfileError

    def yaml_header(self) -> str:
        """The comment line above a device profile file."""
        return f"memplan device profile: {self.name}"

    def __post_init__(self) -> None:
        if self.kind not in DEVICE_KINDS:
            raise ProfileError(f"device profile {self.name}: kind must be one of {', '.join(DEVICE_KINDS)}, "
                               f"got {self.kind!r}")
        for name in ("memory_bandwidth", "kernel_overhead", "cache_bandwidth", "reduction_bandwidth",
                     "strided_norm_bandwidth"):
            value = getattr(self, name)
            optional = name in ("cache_bandwidth", "reduction_bandwidth", "strided_norm_bandwidth")
            if value is None and optional:
                continue
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) \
                    or value < 0 or (value == 0 and name != "kernel_overhead"):
                raise ProfileError(f"device profile {self.name}: {name} must be a positive number, got {value!r}")
        for name in ("memory_bytes", "cache_bytes", "threads"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 0):
                raise ProfileError(f"device profile {self.name}: {name} must be a non-negative integer, "
                                   f"got {value!r}")
        if not isinstance(self.write_allocate, bool):
            raise ProfileError(f"device profile {self.name}: write_allocate must be true or false")
        object.__setattr__(self, "match", tuple(str(item) for item in self.match))

    @property
    def effective_cache_bandwidth(self) -> float:
        """The rate of cache accesses (the memory bandwidth when the profile knows no cache)."""
        return self.cache_bandwidth if self.cache_bandwidth and self.cache_bytes else self.memory_bandwidth

    @property
    def effective_reduction_bandwidth(self) -> float:
        """The rate reductions read memory at (the memory bandwidth when unmeasured)."""
        return self.reduction_bandwidth or self.memory_bandwidth

    @property
    def effective_strided_norm_bandwidth(self) -> float:
        """The rate of norms over a non-innermost axis (the memory bandwidth when unmeasured)."""
        return self.strided_norm_bandwidth or self.memory_bandwidth

    def to_dict(self) -> dict[str, Any]:
        """A plain dict for YAML/JSON, the format version first."""
        data: dict[str, Any] = {"memplan_device": DEVICE_FORMAT}
        for item in fields(self):
            value = getattr(self, item.name)
            data[item.name] = list(value) if item.name == "match" else value
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "DeviceProfile":
        """Build from :meth:`to_dict` output; unknown keys and another format version are errors."""
        if not isinstance(data, Mapping):
            raise ProfileError("a device profile must be a mapping")
        known = {item.name for item in fields(cls)}
        unknown = set(data) - known - {"memplan_device"}
        if unknown:
            raise ProfileError(f"unknown keys {', '.join(sorted(map(str, unknown)))}")
        version = data.get("memplan_device", DEVICE_FORMAT)
        if version != DEVICE_FORMAT:
            raise ProfileError(f"device profile format {version!r} is not supported (this memplan reads "
                               f"{DEVICE_FORMAT})")
        missing = {"name", "kind", "memory_bandwidth", "kernel_overhead", "source"} - set(data)
        if missing:
            raise ProfileError(f"missing keys {', '.join(sorted(missing))}")
        values = {key: value for key, value in data.items() if key in known}
        values["match"] = tuple(values.get("match") or ())
        return cls(**values)



def bundled_device_names() -> list[str]:
    """Names of the bundled device profiles, sorted (``a100``, ``cpu-generic``, ``h100``, ...)."""
    return bundled_names("devices")


def load_bundled_device(name: str) -> DeviceProfile:
    """The bundled device profile called ``name``; ProfileError lists the bundled names otherwise."""
    text = bundled_text("devices", name)
    if text is None:
        raise ProfileError(f"no device profile file or bundled device {name!r} "
                           f"(bundled: {', '.join(bundled_device_names())})")
    return DeviceProfile.from_yaml(text, where=f"bundled device profile {name}")


def describes(profile: DeviceProfile, device: Device) -> bool:
    """Whether ``profile`` is about ``device``: the same kind, and a model named in ``match``
    (a profile with no ``match``, such as cpu-generic, describes every device of its kind)."""
    if profile.kind != device.kind:
        return False
    model = device.model_name().lower()
    return not profile.match or any(token.lower() in model for token in profile.match)


def default_device_profile(device: Device) -> DeviceProfile | None:
    """The bundled profile for ``device``: ``cpu-generic`` for a CPU; for a GPU the bundled profile
    whose ``match`` names it (``NVIDIA H100 80GB HBM3`` -> ``h100``), or None when none does."""
    if device.kind == "cpu":
        return load_bundled_device("cpu-generic")
    for name in bundled_device_names():
        profile = load_bundled_device(name)
        if profile.match and describes(profile, device):
            return profile
    return None


def resolve_device_profile(device: Device, given: str | Path | None = None,
                           saved: str | Path = DEFAULT_DEVICE_PROFILE_PATH) -> tuple[DeviceProfile | None, str]:
    """The device profile predictions use, and where it came from.

    ``given`` (a profile file, or the name of a bundled profile) wins and must be of the
    device's kind; else the profile ``--calibrate`` saved at ``saved``, when it describes this
    device; else the bundled default (:func:`default_device_profile`).
    """
    if given is not None:
        path = Path(given)
        profile = DeviceProfile.load(path) if path.is_file() else load_bundled_device(str(given))
        if profile.kind != device.kind:
            raise ProfileError(f"device profile {given} describes a {profile.kind} device, "
                               f"but the benchmark runs on {device.torch_device}")
        return profile, str(given)
    saved_path = Path(saved)
    if saved_path.is_file():
        profile = DeviceProfile.load(saved_path)
        if describes(profile, device):
            return profile, str(saved_path)
    profile = default_device_profile(device)
    return profile, "none" if profile is None else f"bundled {profile.name}"
