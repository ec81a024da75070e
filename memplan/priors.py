"""Predicted quality of each candidate state layout, and each method's learning rate relative to Adam's.

The numbers live in ``profiles/priors.yaml`` (bundled, measured with ``memplan trial`` on the
project's benchmark workloads, each entry citing its run), not in code; ``load_priors(path)``
overlays a user's file (typically one ``memplan trial`` wrote for their own model) on them.

Quality is on one of two scales (:data:`QUALITY_SCALES`), named by the file's ``scale``. The
bundled priors, and a trial where Adam beat SGD by more than seed noise, use ``adam_sgd``: 1 = Adam, 0 =
SGD without momentum, each at its best learning rate. A trial where SGD trained about as well as
Adam writes ``adam_loss``: 1 = Adam, and 1 - x a loss x times above Adam's. A file on another scale
than the bundled one does not mix with it: only the bundled learning-rate ratios stay, and methods
it did not measure have no quality (:func:`memplan.search.scored_methods` leaves them out).

A method's entry may hold, besides its ``quality``:

- ``std``: the standard error of that quality over seeds; the planner treats a method whose
  quality is within this noise of a cheaper candidate's as no better than it;
- ``seeds``: the per-seed qualities behind it (a trial writes them, seed 0 first): two methods
  measured on the same seeds are compared by their paired difference, whose noise is smaller
  than their two standard errors together where the seeds' luck is shared;
- ``lr_ratio``: its best learning rate over Adam's, which plans record so that one
  Adam-equivalent learning rate trains a mixed plan;
- ``roles``: the quality measured with Adam everywhere except on one role's parameters
  (:mod:`memplan.roles`), on the same scale as if the whole model were that role; a parameter of a
  role with an entry scores that instead of the method's uniform quality. A method without an
  entry for a role that other methods were probed on is scored by :meth:`Priors.role_transfer`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Iterable, Mapping

from memplan.errors import ProfileError, SpecError
from memplan.methods.base import Layout
from memplan.methods.shapes import Shape
from memplan.roles import ROLES
from memplan.schema import Either, Fields, ListOf, MapOf, Nullable, Number, OneOf, Text, check
from memplan.yamlfile import parse_yaml, read_text

PRIORS_FORMAT = 3
READABLE_FORMATS = (1, 2, 3)
"""Formats this version reads: 1 has qualities only; 2 adds std, lr_ratio, roles and adam_lr; 3 adds scale
and per-seed qualities (seeds)."""
SGD_SCALE, LOSS_SCALE = "adam_sgd", "adam_loss"
QUALITY_SCALES = {
    SGD_SCALE: "1 = Adam, 0 = SGD without momentum, each at its best learning rate",
    LOSS_SCALE: "1 = Adam, 1 - x = a loss x times above Adam's (0.95: 5% more loss)",
}
"""The scales a quality may be on, and what their numbers mean."""
BUNDLED_SCALE = SGD_SCALE
CALIBRATED_KEYS = ("momentum", "no_momentum", "distortion_scale")

SEEDS = ListOf(Number())
"""Per-seed qualities, seed 0 first."""

MEASURED = Either(Number(), Fields(required={"quality": Number()},
                                   optional={"std": Number(at_least=0), "seeds": SEEDS}))
"""A measured quality, alone or with its standard error and per-seed values."""

METHOD_PRIOR = Either(Number(), Fields(optional={
    "quality": Number(), "std": Number(at_least=0), "seeds": SEEDS, "lr_ratio": Number(above=0),
    "roles": Fields(optional={role: MEASURED for role in ROLES}), "evidence": Text(),
}))
"""One method's prior: its quality alone, or with its spread, learning-rate ratio, per-role
qualities and the evidence behind them."""

CURVE_POINT = Fields(required={"depth": Number(), "quality": Number()},
                     optional={"std": Number(at_least=0), "seeds": SEEDS, "evidence": Text()})
"""One point of the extreme-tensoring curve: quality at an index depth."""

PRIORS_FIELDS = Fields(
    required={"methods": MapOf(METHOD_PRIOR), "extreme_tensoring": ListOf(CURVE_POINT),
              "calibrated": Fields(required={key: Number() for key in CALIBRATED_KEYS})},
    optional={"memplan_priors": OneOf(*READABLE_FORMATS), "adam_lr": Nullable(Number(above=0)),
              "scale": OneOf(*QUALITY_SCALES), "evidence": Text()},
)
"""The keys of a complete priors document (the bundled one, or it with a user's file laid over it)."""


@dataclass(frozen=True)
class MethodPrior:
    """What is known of one prior key: quality (None: the method's default), its spread and
    per-seed values, its learning-rate ratio, and per-role (quality, std) pairs and per-seed values."""

    quality: float | None = None
    std: float = 0.0
    lr_ratio: float | None = None
    roles: Mapping[str, tuple[float, float]] = field(default_factory=dict)
    seeds: tuple[float, ...] = ()
    role_seeds: Mapping[str, tuple[float, ...]] = field(default_factory=dict)


@dataclass(frozen=True)
class Priors:
    """Per-key method priors, the ET depth curve (empty when a file on its own scale measured
    none), the calibrated-quality constants, the Adam learning rate the priors were measured at
    (None for the bundled, model-independent ones) and the scale of the qualities."""

    methods: Mapping[str, MethodPrior]
    et_curve: tuple[tuple[float, float], ...]
    calibrated: Mapping[str, float]
    adam_lr: float | None = None
    scale: str = BUNDLED_SCALE
    curve_seeds: Mapping[float, tuple[float, ...]] = field(default_factory=dict)
    """Per-seed qualities of the ET curve's points, by depth, where measured."""

    def quality(self, method: str, options: Mapping[str, Any], shape: Shape, layout: Layout,
                role: str | None = None) -> float:
        """Data-free quality of ``method`` with ``options`` for a parameter of ``shape`` and ``role``
        under ``layout`` (each family decides how: :meth:`memplan.methods.Method.prior_quality`)."""
        from memplan.methods import get_method

        return get_method(method).prior_quality(self, options, shape, layout, role)

    def method_quality(self, key: str, default: float | None = None, role: str | None = None) -> float:
        """The prior called ``key`` for a parameter of ``role``: the role's probe when ``key`` was
        probed there, else its uniform quality (``default`` when there is none; SpecError without a
        default) moved by :meth:`role_transfer`."""
        entry = self.methods.get(key)
        if entry is not None and role in entry.roles:
            return entry.roles[role][0]
        if entry is not None and entry.quality is not None:
            return entry.quality + self.role_transfer(role)
        if self.scale != BUNDLED_SCALE:  # a default is a guess on the bundled scale
            raise SpecError(f"no quality prior for {key!r} on the priors' {self.scale} scale: the trial that "
                            f"wrote them did not measure it")
        if default is None:
            raise SpecError(f"no quality prior for {key!r}: add methods.{key} to a --priors file")
        return default + self.role_transfer(role)

    def role_adjusted(self, key: str, quality: float, role: str | None) -> float:
        """``quality`` (from a curve, say) moved by what ``role`` measured against the uniform
        quality of the entry ``key``, or by :meth:`role_transfer` where ``key`` was not probed there."""
        entry = self.methods.get(key)
        if entry is None or entry.quality is None or role not in entry.roles:
            return quality + self.role_transfer(role)
        return quality + entry.roles[role][0] - entry.quality

    def quality_std(self, key: str, role: str | None = None) -> float:
        """The standard error recorded with the prior ``key`` (for ``role`` when measured); 0 if none."""
        entry = self.methods.get(key)
        if entry is None:
            return 0.0
        return entry.roles[role][1] if role in entry.roles else entry.std

    def quality_seeds(self, key: str, role: str | None = None) -> tuple[float, ...]:
        """The per-seed qualities behind the prior ``key`` for ``role`` (moved by
        :meth:`role_transfer` where ``key`` was not probed there, as its quality is); () if none."""
        entry = self.methods.get(key)
        if entry is None:
            return ()
        if role in entry.roles:
            return entry.role_seeds.get(role, ())
        shift = self.role_transfer(role)
        return tuple(value + shift for value in entry.seeds)

    def depth_seeds(self, depth: float) -> tuple[float, ...]:
        """The per-seed qualities of the ET curve at ``depth``, interpolated as :meth:`depth_quality`
        is; () where a point it uses has none, or the points have different seed counts."""
        points = self.et_curve
        if not points:
            return ()
        depth = min(max(depth, points[0][0]), points[-1][0])
        for (low, _), (high, _) in zip(points, points[1:]):
            if depth <= high:
                below, above = self.curve_seeds.get(low, ()), self.curve_seeds.get(high, ())
                if not below or len(below) != len(above):
                    return ()
                fraction = (depth - low) / (high - low)
                return tuple(a + fraction * (b - a) for a, b in zip(below, above))
        return self.curve_seeds.get(points[-1][0], ())

    def role_transfer(self, role: str | None) -> float:
        """How much a method not probed on ``role`` is moved from its uniform quality there.

        Each method probed on ``role`` moved by ``role quality - quality``. An unprobed method moves
        by their mean where that is a loss, and not at all where it is a gain: a role that hurt the
        methods measured on it is expected to hurt others too, while a gain credited to a method
        never measured there would be the first thing the planner chose. 0 when ``role`` is None or
        no method was probed on it.

        The unprobed method's standard error is left as recorded: a role's quality is extrapolated
        from its share of the elements, so the probes' spread on a small role is large, and adding
        it would hand every small role to its cheapest candidate through :func:`memplan.search.within_noise`.
        """
        shifts = [entry.roles[role][0] - entry.quality
                  for entry in self.methods.values() if role in entry.roles and entry.quality is not None]
        return min(0.0, sum(shifts) / len(shifts)) if shifts else 0.0

    def lr_ratio(self, key: str) -> float | None:
        """The measured learning-rate ratio to Adam of the prior ``key``, or None."""
        entry = self.methods.get(key)
        return None if entry is None else entry.lr_ratio

    def depth_quality(self, depth: float) -> float:
        """The ET curve at ``depth``: linear between its points, held beyond them."""
        points = self.et_curve
        if not points:
            raise SpecError(f"no extreme-tensoring curve on the priors' {self.scale} scale: the trial that "
                            f"wrote them measured fewer than two ET presets")
        if depth <= points[0][0]:
            return points[0][1]
        for (low_depth, low_quality), (high_depth, high_quality) in zip(points, points[1:]):
            if depth <= high_depth:
                fraction = (depth - low_depth) / (high_depth - low_depth)
                return low_quality + fraction * (high_quality - low_quality)
        return points[-1][1]

    def calibrated_quality(self, momentum: str, distortion: float) -> float:
        """Quality from a measured second-moment distortion (``memplan plan --calibrate``)."""
        base = self.calibrated["no_momentum" if momentum == "none" else "momentum"]
        return base * math.exp(-self.calibrated["distortion_scale"] * distortion)


def load_priors(path: str | Path | None = None) -> Priors:
    """The bundled priors, with the entries of the YAML file at ``path`` (if any) replacing theirs."""
    data = bundled_priors_document()
    if path is not None:
        override = parse_yaml(read_text(path, ProfileError), str(path), ProfileError) or {}
        if isinstance(override, Mapping) and override.get("scale", BUNDLED_SCALE) != data.get("scale", BUNDLED_SCALE):
            data = _rescaled(data, override)
        data = _overlay(data, override, str(path))
    return _from_dict(data, str(path or "bundled priors"))


def bundled_priors_document() -> dict[str, Any]:
    """The bundled priors file as a checked mapping."""
    bundled = resources.files("memplan.profiles") / "priors.yaml"
    data = parse_yaml(bundled.read_text(encoding="utf-8"), "bundled priors", ProfileError)
    check(data, PRIORS_FIELDS, ProfileError, where="bundled priors")
    return data


def _override_fields(methods: Iterable[str]) -> Fields:
    """What a user's priors file may hold: any key of the bundled file, and any of its ``methods``."""
    return Fields(optional={
        "memplan_priors": OneOf(*READABLE_FORMATS),
        "adam_lr": Nullable(Number(above=0)),
        "evidence": Text(),
        "methods": Fields(optional={name: METHOD_PRIOR for name in methods}),
        "scale": OneOf(*QUALITY_SCALES),
        "extreme_tensoring": ListOf(CURVE_POINT),
        "calibrated": Nullable(Fields(optional={key: Number() for key in CALIBRATED_KEYS})),
    })


def _rescaled(base: dict[str, Any], override: Any) -> dict[str, Any]:
    """What of the bundled ``base`` may sit under a file on another quality scale: the methods'
    learning-rate ratios (a ratio of rates has no scale) and the calibrated constants; no quality,
    spread, per-role quality or ET curve."""
    methods = {name: {"lr_ratio": entry["lr_ratio"]} if isinstance(entry, Mapping) and "lr_ratio" in entry else {}
               for name, entry in base["methods"].items()}
    return {**base, "methods": methods, "extreme_tensoring": [], "scale": override.get("scale")}


def _overlay(base: dict[str, Any], override: Any, where: str) -> dict[str, Any]:
    """``base`` with the entries of the user's priors ``override`` in place of its own (the curve as a whole)."""
    check(override, _override_fields(base["methods"]), ProfileError, where=where)
    merged = dict(base)
    for key, value in override.items():
        if key == "methods":
            merged[key] = {**base[key], **{name: _merge_entry(base[key].get(name), entry)
                                           for name, entry in (value or {}).items()}}
        elif key == "calibrated":
            merged[key] = {**base[key], **(value or {})}
        else:
            merged[key] = value
    return merged


MEASUREMENT_FIELDS = ("std", "seeds", "roles")
"""Fields that describe a quality measurement: an entry that gives its own quality drops the bundled
ones (another workload's standard error and per-role qualities do not belong to the new quality)."""


def _merge_entry(base: Any, override: Any) -> Any:
    """A method entry with the fields the user gave in place of the bundled ones (a bare number
    is a quality): a file that measured only a learning-rate ratio keeps the bundled quality, and
    one that gives a quality keeps none of the bundled :data:`MEASUREMENT_FIELDS`."""
    as_mapping = lambda entry: dict(entry) if isinstance(entry, Mapping) else ({} if entry is None else {"quality": entry})
    kept, given = as_mapping(base), as_mapping(override)
    if "quality" in given:
        kept = {key: value for key, value in kept.items() if key not in MEASUREMENT_FIELDS}
    return {**kept, **given}


def _measured(entry: Any) -> tuple[float, float]:
    """(quality, std) of a :data:`MEASURED` value."""
    if isinstance(entry, Mapping):
        return float(entry["quality"]), float(entry.get("std", 0.0))
    return float(entry), 0.0


def _seeds(entry: Any) -> tuple[float, ...]:
    """The per-seed qualities of a :data:`MEASURED` or :data:`METHOD_PRIOR` value (() if none)."""
    return tuple(float(value) for value in entry.get("seeds", ())) if isinstance(entry, Mapping) else ()


def _method_prior(entry: Any) -> MethodPrior:
    """A :class:`MethodPrior` from a :data:`METHOD_PRIOR` value."""
    if not isinstance(entry, Mapping):
        return MethodPrior(quality=float(entry))
    quality = entry.get("quality")
    ratio = entry.get("lr_ratio")
    roles = entry.get("roles") or {}
    return MethodPrior(
        quality=None if quality is None else float(quality), std=float(entry.get("std", 0.0)),
        lr_ratio=None if ratio is None else float(ratio),
        roles={role: _measured(value) for role, value in roles.items()}, seeds=_seeds(entry),
        role_seeds={role: _seeds(value) for role, value in roles.items() if _seeds(value)})


def _from_dict(data: Mapping[str, Any], where: str) -> Priors:
    """Priors from a complete priors document; ProfileError names every bad key."""
    check(data, PRIORS_FIELDS, ProfileError, where=where)
    methods = {name: _method_prior(entry) for name, entry in data["methods"].items()}
    curve = tuple(sorted((float(point["depth"]), float(point["quality"])) for point in data["extreme_tensoring"]))
    calibrated = {key: float(value) for key, value in data["calibrated"].items()}
    scale = data.get("scale", BUNDLED_SCALE)
    # a file on its own scale may have measured no curve: ET is then not scored, rather than wrongly
    if (len(curve) < 2 and (curve or scale == BUNDLED_SCALE)) or len({depth for depth, _ in curve}) != len(curve):
        raise ProfileError(f"{where}: extreme_tensoring needs at least two points at distinct depths")
    adam_lr = data.get("adam_lr")
    curve_seeds = {float(point["depth"]): _seeds(point) for point in data["extreme_tensoring"] if _seeds(point)}
    return Priors(methods=methods, et_curve=curve, calibrated=calibrated,
                  adam_lr=None if adam_lr is None else float(adam_lr), scale=scale, curve_seeds=curve_seeds)
