"""Predicted quality of each candidate state layout: data-free priors, or calibrated from distortion.

The numbers live in ``profiles/priors.yaml`` (bundled, with the evidence behind each), not in
code; ``load_priors(path)`` overlays a user's file on them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any, Iterable, Mapping

from memplan.errors import ProfileError, SpecError
from memplan.methods.base import Layout
from memplan.methods.shapes import Shape
from memplan.schema import Either, Fields, ListOf, MapOf, Nullable, Number, OneOf, Text, check
from memplan.yamlfile import parse_yaml, read_text

PRIORS_FORMAT = 1
CALIBRATED_KEYS = ("momentum", "no_momentum", "distortion_scale")

METHOD_PRIOR = Either(Number(), Fields(required={"quality": Number()}, optional={"evidence": Text()}))
"""One method's prior: its quality, alone or with the evidence behind it."""

CURVE_POINT = Fields(required={"depth": Number(), "quality": Number()}, optional={"evidence": Text()})
"""One point of the extreme-tensoring curve: quality at an index depth."""

PRIORS_FIELDS = Fields(
    required={"methods": MapOf(METHOD_PRIOR), "extreme_tensoring": ListOf(CURVE_POINT),
              "calibrated": Fields(required={key: Number() for key in CALIBRATED_KEYS})},
    optional={"memplan_priors": OneOf(PRIORS_FORMAT)},
)
"""The keys of a complete priors document (the bundled one, or it with a user's file laid over it)."""


@dataclass(frozen=True)
class Priors:
    """Quality per method family, the ET depth curve, and the calibrated-quality constants."""

    methods: Mapping[str, float]
    et_curve: tuple[tuple[float, float], ...]
    calibrated: Mapping[str, float]

    def quality(self, method: str, options: Mapping[str, Any], shape: Shape, layout: Layout) -> float:
        """Data-free quality of ``method`` with ``options`` for a parameter of ``shape`` under ``layout``
        (each family decides how: :meth:`memplan.methods.Method.prior_quality`)."""
        from memplan.methods import get_method

        return get_method(method).prior_quality(self, options, shape, layout)

    def method_quality(self, key: str, default: float | None = None) -> float:
        """The prior called ``key``; ``default`` when there is none (SpecError without a default)."""
        if key in self.methods:
            return self.methods[key]
        if default is None:
            raise SpecError(f"no quality prior for {key!r}: add methods.{key} to a --priors file")
        return default

    def depth_quality(self, depth: float) -> float:
        """The ET curve at ``depth``: linear between its points, held beyond them."""
        points = self.et_curve
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
    bundled = resources.files("memplan.profiles") / "priors.yaml"
    data = parse_yaml(bundled.read_text(encoding="utf-8"), "bundled priors", ProfileError)
    check(data, PRIORS_FIELDS, ProfileError, where="bundled priors")
    if path is not None:
        override = parse_yaml(read_text(path, ProfileError), str(path), ProfileError) or {}
        data = _overlay(data, override, str(path))
    return _from_dict(data, str(path or "bundled priors"))


def _override_fields(methods: Iterable[str]) -> Fields:
    """What a user's priors file may hold: any key of the bundled file, and any of its ``methods``."""
    return Fields(optional={
        "memplan_priors": OneOf(PRIORS_FORMAT),
        "methods": Fields(optional={name: METHOD_PRIOR for name in methods}),
        "extreme_tensoring": ListOf(CURVE_POINT),
        "calibrated": Nullable(Fields(optional={key: Number() for key in CALIBRATED_KEYS})),
    })


def _overlay(base: dict[str, Any], override: Any, where: str) -> dict[str, Any]:
    """``base`` with the entries of the user's priors ``override`` in place of its own (the curve as a whole)."""
    check(override, _override_fields(base["methods"]), ProfileError, where=where)
    merged = dict(base)
    for key, value in override.items():
        if key in ("methods", "calibrated"):
            merged[key] = {**base[key], **(value or {})}
        else:
            merged[key] = value
    return merged


def _from_dict(data: Mapping[str, Any], where: str) -> Priors:
    """Priors from a complete priors document; ProfileError names every bad key."""
    check(data, PRIORS_FIELDS, ProfileError, where=where)
    methods = {name: float(entry["quality"] if isinstance(entry, Mapping) else entry)
               for name, entry in data["methods"].items()}
    curve = tuple(sorted((float(point["depth"]), float(point["quality"])) for point in data["extreme_tensoring"]))
    calibrated = {key: float(value) for key, value in data["calibrated"].items()}
    if len(curve) < 2 or len({depth for depth, _ in curve}) != len(curve):
        raise ProfileError(f"{where}: extreme_tensoring needs at least two points at distinct depths")
    return Priors(methods=methods, et_curve=curve, calibrated=calibrated)
