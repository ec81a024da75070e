"""The cost model of a step's time, and what it knows about devices.

The cost model::

    seconds = memory_traffic / memory_bandwidth + reduction_bytes / reduction_bandwidth
              + cache_traffic / cache_bandwidth + strided_norm_bytes / strided_norm_bandwidth
              + kernels * kernel_overhead

except that the elements of memplan's one-pass kernels whose rate the profile measured
(``fused_element_seconds``, keyed by :meth:`memplan.methods.Method.fused_kernel`) take
``elements * rate`` (plus the kernel's measured ``fused_step_seconds`` once a step) instead of
their bytes over the memory bandwidth, which misjudges them on a CPU both ways: SMMF's step is
bound by each core's work per element (its time stays the same when the memory runs faster),
while extreme tensoring and SM3 read at close to the machine's read rate when the memory is slow
(their writes, to lines just read, cost little); a measured rate holds whichever binds. Without
one (a bundled profile, a GPU) a kernel's bytes go over the memory bandwidth.

The traffic and kernel counts come from :mod:`memplan.census`; the device figures from a
:class:`DeviceProfile`: bundled (``profiles/devices/*.yaml``: spec-sheet numbers, each naming its
source) or measured on this machine by :func:`memplan.timing.calibrate` (``memplan bench
--calibrate``), which saves it at :data:`DEFAULT_DEVICE_PROFILE_PATH`.

A sharded step adds its collective (:class:`memplan.sharding.StepCommunication`, whose bytes are
the methods' reduced state)::

    collective_seconds = collectives * latency + bus_bytes / bus_bandwidth

with a :class:`CollectiveModel` that ``memplan bench --world-size`` measures on the job's own
ranks (gloo on CPU, NCCL on CUDA: latencies from tens of microseconds to a millisecond, bandwidths
from under 1 to hundreds of GB/s, so no default would do).

This module never imports torch: planning from a bundled profile uses it.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping

from memplan.devices import DEVICE_KINDS, Device, device_type
from memplan.errors import ProfileError
from memplan.schema import Fields, Flag, Integer, ListOf, MapOf, Nullable, Number, OneOf, Text, check
from memplan.yamlfile import YamlDocument, bundled_names, bundled_text

if TYPE_CHECKING:
    from memplan.census import StepCensus
    from memplan.sharding import StepCommunication


DEVICE_FORMAT = 1

DEVICE_PROFILE_FIELDS = Fields(
    required={"name": Text(), "kind": OneOf(*DEVICE_KINDS), "memory_bandwidth": Number(above=0),
              "kernel_overhead": Number(at_least=0), "source": Text()},
    optional={"memplan_device": OneOf(DEVICE_FORMAT), "memory_bytes": Nullable(Integer(at_least=0)),
              "cache_bytes": Integer(at_least=0), "cache_bandwidth": Nullable(Number(above=0)),
              "reduction_bandwidth": Nullable(Number(above=0)), "strided_norm_bandwidth": Nullable(Number(above=0)),
              "write_allocate": Flag(), "threads": Nullable(Integer(at_least=0)), "match": Nullable(ListOf(Text())),
              "fused_element_seconds": MapOf(Number(above=0)), "fused_step_seconds": MapOf(Number(at_least=0)),
              "made_with": Text()},
)
"""The keys of a device profile and their types."""
DEFAULT_DEVICE_PROFILE_PATH = Path(".memplan") / "device.yaml"
"""Where ``memplan bench --calibrate`` saves the measured profile, and later runs look for it."""


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
    fused_element_seconds: tuple[tuple[str, float], ...] = ()
    """Measured seconds per element of memplan's one-pass kernels, by kernel key (a mapping in
    the file; see :meth:`fused_rate`)."""
    fused_step_seconds: tuple[tuple[str, float], ...] = ()
    """Measured seconds a step of each one-pass kernel besides its elements (preparing and starting
    the call, its threads, combining their statistics), by kernel key (a mapping in the file)."""
    made_with: str = ""

    document_name = "device profile"
    error = ProfileError

    def yaml_header(self) -> str:
        """The comment line above a device profile file."""
        return f"memplan device profile: {self.name}"

    def __post_init__(self) -> None:
        values = {item.name: getattr(self, item.name) for item in fields(self)}
        for name in ("fused_element_seconds", "fused_step_seconds"):
            values[name] = dict(getattr(self, name) or ())
        check(values, DEVICE_PROFILE_FIELDS, ProfileError, where=f"device profile {self.name}")
        object.__setattr__(self, "match", tuple(self.match or ()))
        for name in ("fused_element_seconds", "fused_step_seconds"):
            figures = getattr(self, name)
            object.__setattr__(self, name,
                               tuple(sorted((figures.items() if isinstance(figures, Mapping) else figures) or ())))

    def fused_rate(self, key: str) -> float | None:
        """Seconds per element of the one-pass kernel ``key``, when this profile measured it."""
        return dict(self.fused_element_seconds).get(key)

    def fused_step(self, key: str) -> float:
        """Seconds a step of the one-pass kernel ``key`` takes besides its elements (0 unmeasured)."""
        return dict(self.fused_step_seconds).get(key, 0.0)

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
            if item.name in ("fused_element_seconds", "fused_step_seconds"):
                value = dict(value)
            data[item.name] = list(value) if item.name == "match" else value
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "DeviceProfile":
        """Build from :meth:`to_dict` output; unknown keys and another format version are errors."""
        version = data.get("memplan_device", DEVICE_FORMAT) if isinstance(data, Mapping) else DEVICE_FORMAT
        if version != DEVICE_FORMAT:
            raise ProfileError(f"device profile format {version!r} is not supported (this memplan reads "
                               f"{DEVICE_FORMAT})")
        check(data, DEVICE_PROFILE_FIELDS, ProfileError)
        known = {item.name for item in fields(cls)}
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
    """The bundled profile for ``device``: one of its kind whose ``match`` names its model
    (``NVIDIA H100 80GB HBM3`` -> ``h100``), else the first of its kind that names no model
    (``cpu-generic`` for any CPU), else None."""
    unnamed = None
    for name in bundled_device_names():
        profile = load_bundled_device(name)
        if profile.kind != device.kind:
            continue
        if not profile.match:
            unnamed = unnamed or profile
        elif describes(profile, device):
            return profile
    return unnamed


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


@dataclass(frozen=True)
class StepCost:
    """A predicted step time and the six terms it adds up (seconds)."""

    seconds: float
    memory_seconds: float
    reduction_seconds: float
    cache_seconds: float
    strided_norm_seconds: float
    overhead_seconds: float
    fused_seconds: float = 0.0
    """memplan's one-pass kernels timed at their measured rates (their bytes are then not in
    ``memory_seconds``)."""


def predict_seconds(census: StepCensus, device: DeviceProfile) -> StepCost:
    """The cost model: one census on one device."""
    rated = [(elements, moved, device.fused_rate(key)) for key, elements, moved in census.fused]
    fused = sum(elements * rate for elements, _, rate in rated if rate is not None)
    fused += sum(device.fused_step(key) for key in {key for key, _, _ in census.fused}
                 if device.fused_rate(key) is not None)   # one call a step for each kernel
    rated_bytes = sum(moved for _, moved, rate in rated if rate is not None)
    memory = (census.memory_traffic(device.write_allocate) - rated_bytes) / device.memory_bandwidth
    reductions = census.reduction_miss / device.effective_reduction_bandwidth
    cache = census.cache_traffic / device.effective_cache_bandwidth
    norms = census.strided_norm_bytes / device.effective_strided_norm_bandwidth
    overhead = census.launches(device_type(device.kind).foreach_kernel_per_tensor) * device.kernel_overhead
    return StepCost(memory + reductions + cache + norms + overhead + fused, memory, reductions, cache, norms,
                    overhead, fused)


@dataclass(frozen=True)
class CollectiveModel:
    """The time of one collective on a job's ranks: ``latency`` seconds plus its bus bytes (see
    :meth:`memplan.sharding.StepCommunication.bus_bytes`) over ``bandwidth`` (bytes per second,
    NCCL-tests' "bus bandwidth", so that all-reduces and all-gathers share one figure)."""

    latency: float
    bandwidth: float

    def seconds(self, communication: "StepCommunication", world_size: int) -> float:
        """Predicted seconds of one step's collectives on ``world_size`` ranks."""
        return communication.collectives * self.latency + communication.bus_bytes(world_size) / self.bandwidth


__all__ = ["CollectiveModel", "DEFAULT_DEVICE_PROFILE_PATH", "DEVICE_FORMAT", "DeviceProfile", "StepCost",
           "bundled_device_names",
           "default_device_profile", "describes", "load_bundled_device", "predict_seconds",
           "resolve_device_profile"]
