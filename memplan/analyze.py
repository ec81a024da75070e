"""``memplan analyze``'s computation: per-parameter layouts and every method's total state bytes."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterable

from memplan.methods import ANALYZE_METHODS, LAYOUT_COLUMNS, as_spec, param_state
from memplan.dtypes import item_size
from memplan.profile import ModelProfile, ParamSpec
from memplan.sharding import Sharding


@dataclass(frozen=True)
class MethodTotal:
    """One method's optimizer state over a whole model (trainable parameters only)."""

    spec: str
    state_bytes: int
    bytes_moved: int
    ratio_to_adam: float | None
    """state_bytes / Adam's state bytes; None when Adam would keep no state (nothing trainable)."""
    rank_state_bytes: tuple[int, ...] | None = None
    """Each rank's state bytes under the analysis's sharding (None without one)."""


@dataclass(frozen=True)
class Analysis:
    """A profile with its per-method totals, ready to render or serialise."""

    profile: ModelProfile
    totals: tuple[MethodTotal, ...]
    sharding: Sharding | None = None

    def rank_param_bytes(self) -> int | None:
        """Bytes of the trainable parameters each rank stores under the sharding (gradients take as
        many); None without one."""
        if self.sharding is None:
            return None
        return sum(self.sharding.rank_param_elements(param.shape) * item_size(param.dtype)
                   for param in self.profile.trainable_params)

    def parameter_records(self) -> list[dict[str, Any]]:
        """One flat record per parameter, with its default layout under each of :data:`LAYOUT_COLUMNS`
    (SMMF's matricization, ET1's index)."""
        return [parameter_record(spec) for spec in self.profile.params]

    def to_json(self, source: str) -> dict[str, Any]:
        """The ``memplan analyze --json`` document."""
        totals = self.profile.totals()
        return {
            "source": source,
            "fingerprint": self.profile.fingerprint,
            "parameters": [
                {"name": spec.name, "shape": list(spec.shape), "numel": spec.numel, "dtype": spec.dtype,
                 "kind": spec.kind, "trainable": spec.trainable}
                for spec in self.profile.params
            ],
            "totals": {"parameters": totals["parameters"], "numel": totals["numel"],
                       "param_bytes": totals["param_bytes"], "trainable_numel": totals["trainable_numel"]},
            "methods": {
                total.spec: {"state_bytes": total.state_bytes, "ratio_to_adam": total.ratio_to_adam,
                             "bytes_moved_per_step": total.bytes_moved,
                             **({"rank_state_bytes": list(total.rank_state_bytes)} if self.sharding else {})}
                for total in self.totals
            },
            **({"sharding": {**self.sharding.to_dict(), "rank_param_bytes": self.rank_param_bytes()}}
               if self.sharding else {}),
        }


def parameter_record(spec: ParamSpec) -> dict[str, Any]:
    """A flat description of one parameter for tables and CSV."""
    record: dict[str, Any] = {
        "name": spec.name,
        "shape": "x".join(map(str, spec.shape)) or "scalar",
        "numel": spec.numel,
        "dtype": spec.dtype,
        "kind": spec.kind,
        "trainable": spec.trainable,
    }
    for method in LAYOUT_COLUMNS:
        layout = param_state(method, spec.shape, spec.dtype).layout
        record[method] = "x".join(map(str, layout or spec.shape)) or "scalar"
    record["aliases"] = " ".join(spec.aliases)
    return record


def model_state(spec: str, profile: ModelProfile) -> tuple[int, int]:
    """(state bytes, bytes moved per step) of ``spec`` over the trainable parameters of ``profile``."""
    state_bytes = bytes_moved = 0
    for param in profile.trainable_params:
        state = param_state(spec, param.shape, param.dtype)
        state_bytes += state.state_bytes
        bytes_moved += state.bytes_moved
    return state_bytes, bytes_moved


def analyze(profile: ModelProfile, specs: Iterable[str] = ANALYZE_METHODS,
            sharding: Sharding | None = None) -> Analysis:
    """Total every method's state over ``profile`` (and per rank under ``sharding``); specs are
    validated and printed canonically."""
    canonical = list(dict.fromkeys(str(as_spec(spec)) for spec in specs))
    adam_bytes = model_state("adam", profile)[0]
    totals = []
    for spec in canonical:
        state_bytes, bytes_moved = model_state(spec, profile)
        ratio = state_bytes / adam_bytes if adam_bytes else None
        ranks = None
        if sharding is not None:
            ranks = tuple(sharding.rank_state_bytes([(param.shape, param_state(spec, param.shape, param.dtype).tensors)
                                                     for param in profile.trainable_params]))
        totals.append(MethodTotal(spec, state_bytes, bytes_moved, ratio, ranks))
    return Analysis(profile=profile, totals=tuple(totals), sharding=sharding)


def made_with(command: list[str]) -> str:
    """Provenance line for a profile: the command and the versions of the libraries that built it."""
    import shlex
    import sys

    from memplan import __version__

    versions = [f"memplan {__version__}"]
    for module in ("torch", "transformers"):
        if module in sys.modules:
            versions.append(f"{module} {getattr(sys.modules[module], '__version__', '?')}")
    return f"{shlex.join(command)} ({', '.join(versions)})"
