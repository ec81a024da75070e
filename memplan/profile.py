"""The shape inventory of a model: one :class:`ParamSpec` per parameter, in a :class:`ModelProfile`.

A profile is all that planning and benchmarking need: names, shapes, dtypes, kinds and which
parameters are trainable. It round-trips through YAML exactly (``from_yaml(p.to_yaml()) == p``
and ``from_yaml(t).to_yaml() == t`` for any text ``t`` that memplan wrote), and it carries a
fingerprint that plans use to recognise the model they were made for.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any, Iterable, Mapping

from memplan.dtypes import canonical_dtype, item_size
from memplan.errors import ProfileError
from memplan.roles import role_of
from memplan.schema import Fields, Flag, Integer, ListOf, MapOf, OneOf, Text, check, raise_problems
from memplan.yamlfile import YamlDocument

PARAM_KINDS = ("embedding", "linear", "conv", "norm", "bias", "other")
PROFILE_FORMAT = 1

PARAM_FIELDS = Fields(
    required={"name": Text(), "shape": ListOf(Integer(at_least=0))},
    optional={"dtype": Text(), "kind": OneOf(*PARAM_KINDS), "numel": Integer(at_least=0),
              "bytes": Integer(at_least=0), "trainable": Flag(), "aliases": ListOf(Text())},
)
"""The keys of one ``parameters`` entry of a profile and their types."""

PROFILE_FIELDS = Fields(
    required={"name": Text(), "parameters": ListOf(PARAM_FIELDS)},
    optional={"memplan_profile": OneOf(PROFILE_FORMAT), "source": Text(), "made_with": Text(),
              "fingerprint": Text(), "totals": MapOf(Integer())},
)
"""The keys of a profile file and their types; the fingerprint and totals must also match the parameters."""


@dataclass(frozen=True)
class ParamSpec:
    """One parameter tensor: its name, shape, dtype, kind and whether it is trained.

    ``aliases`` are other names bound to the same tensor (tied weights); the tensor is counted
    once, under ``name``. A frozen parameter (``trainable=False``) is listed but gets no
    optimizer state.
    """

    name: str
    shape: tuple[int, ...]
    dtype: str = "float32"
    kind: str = "other"
    trainable: bool = True
    aliases: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name:
            raise ProfileError(f"parameter name must be a non-empty string, got {self.name!r}")
        try:
            shape = tuple(_as_dim(dim) for dim in self.shape)
        except (TypeError, ValueError) as error:
            raise ProfileError(f"parameter {self.name}: bad shape {self.shape!r}: {error}") from None
        object.__setattr__(self, "shape", shape)
        try:
            object.__setattr__(self, "dtype", canonical_dtype(self.dtype))
        except ProfileError as error:
            raise ProfileError(f"parameter {self.name}: {error}") from None
        if self.kind not in PARAM_KINDS:
            raise ProfileError(
                f"parameter {self.name}: unknown kind {self.kind!r} (valid: {', '.join(PARAM_KINDS)})"
            )
        if not isinstance(self.trainable, bool):
            raise ProfileError(f"parameter {self.name}: trainable must be true or false")
        object.__setattr__(self, "aliases", tuple(str(alias) for alias in self.aliases))

    @property
    def role(self) -> str:
        """The parameter's role for measured quality (:func:`memplan.roles.role_of`)."""
        return role_of(self.name, self.shape, self.kind)

    @property
    def numel(self) -> int:
        """Number of elements (1 for a scalar, 0 for an empty tensor)."""
        return math.prod(self.shape)

    @property
    def nbytes(self) -> int:
        """Bytes of the parameter itself (numel times the dtype's element size)."""
        return self.numel * item_size(self.dtype)

    def to_dict(self) -> dict[str, Any]:
        """A plain dict for YAML/JSON; ``numel`` and ``bytes`` are included for human readers."""
        data: dict[str, Any] = {
            "name": self.name,
            "shape": list(self.shape),
            "dtype": self.dtype,
            "kind": self.kind,
            "numel": self.numel,
            "bytes": self.nbytes,
            "trainable": self.trainable,
        }
        if self.aliases:
            data["aliases"] = list(self.aliases)
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "ParamSpec":
        """Build from :meth:`to_dict` output; derived fields, when present, must agree."""
        name = data.get("name") if isinstance(data, Mapping) else None
        where = f"parameter {name}" if isinstance(name, str) else "parameter entry"
        check(data, PARAM_FIELDS, ProfileError, where=where)
        spec = cls(
            name=data["name"],
            shape=tuple(data["shape"]),
            dtype=data.get("dtype", "float32"),
            kind=data.get("kind", "other"),
            trainable=data.get("trainable", True),
            aliases=tuple(data.get("aliases", ())),
        )
        for key, actual in (("numel", spec.numel), ("bytes", spec.nbytes)):
            if key in data and data[key] != actual:
                raise ProfileError(
                    f"parameter {spec.name}: {key} is {data[key]} but shape {list(spec.shape)} "
                    f"of {spec.dtype} gives {actual}"
                )
        return spec


@dataclass(frozen=True)
class ModelProfile(YamlDocument):
    """All parameters of one model, in model order, with where they came from.

    ``made_with`` records how the profile was produced (command and library versions); it is
    the header of a bundled profile file.
    """

    name: str
    source: str
    params: tuple[ParamSpec, ...]
    made_with: str = ""
    _by_name: dict[str, ParamSpec] = field(init=False, repr=False, compare=False)

    document_name = "profile"
    error = ProfileError

    def yaml_header(self) -> str:
        """The comment line above a profile file."""
        return f"memplan model profile: {self.name}"

    def __post_init__(self) -> None:
        object.__setattr__(self, "params", tuple(self.params))
        by_name: dict[str, ParamSpec] = {}
        for spec in self.params:
            for label in (spec.name, *spec.aliases):
                if label in by_name:
                    raise ProfileError(f"parameter name {label!r} appears twice in profile {self.name}")
                by_name[label] = spec
        object.__setattr__(self, "_by_name", by_name)

    def __getitem__(self, name: str) -> ParamSpec:
        """The parameter called ``name`` (or one of its aliases)."""
        try:
            return self._by_name[name]
        except KeyError:
            raise KeyError(f"no parameter {name!r} in profile {self.name}") from None

    def __contains__(self, name: object) -> bool:
        return name in self._by_name

    def __len__(self) -> int:
        return len(self.params)

    @property
    def trainable_params(self) -> tuple[ParamSpec, ...]:
        """The parameters that get optimizer state."""
        return tuple(spec for spec in self.params if spec.trainable)

    @cached_property
    def fingerprint(self) -> str:
        """A stable hash of names, shapes and dtypes (independent of order, kinds and aliases)."""
        return fingerprint_of((spec.name, spec.shape, spec.dtype) for spec in self.params)

    def totals(self) -> dict[str, int]:
        """Counts over the whole model: tensors, elements, bytes, and the trainable share."""
        trainable = self.trainable_params
        return {
            "parameters": len(self.params),
            "numel": sum(spec.numel for spec in self.params),
            "param_bytes": sum(spec.nbytes for spec in self.params),
            "trainable_parameters": len(trainable),
            "trainable_numel": sum(spec.numel for spec in trainable),
        }

    def to_dict(self) -> dict[str, Any]:
        """A plain dict for YAML/JSON (format version, identity, totals, parameters)."""
        data: dict[str, Any] = {"memplan_profile": PROFILE_FORMAT, "name": self.name, "source": self.source}
        if self.made_with:
            data["made_with"] = self.made_with
        data["fingerprint"] = self.fingerprint
        data["totals"] = self.totals()
        data["parameters"] = [spec.to_dict() for spec in self.params]
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "ModelProfile":
        """Build from :meth:`to_dict` output, checking the keys and types (every problem is listed),
        each parameter, and the stored fingerprint and totals."""
        version = data.get("memplan_profile", PROFILE_FORMAT) if isinstance(data, Mapping) else PROFILE_FORMAT
        if version != PROFILE_FORMAT:
            raise ProfileError(f"profile format {version!r} is not supported (this memplan reads {PROFILE_FORMAT})")
        check(data, PROFILE_FIELDS, ProfileError)
        params: list[ParamSpec] = []
        problems: list[str] = []
        for entry in data["parameters"]:
            try:
                params.append(ParamSpec.from_dict(entry))
            except ProfileError as error:
                problems.append(str(error))
        raise_problems(problems, ProfileError)
        profile = cls(
            name=data["name"],
            source=data.get("source", ""),
            params=tuple(params),
            made_with=data.get("made_with", ""),
        )
        stored = data.get("fingerprint")
        if stored is not None and stored != profile.fingerprint:
            raise ProfileError(
                f"profile {profile.name}: stored fingerprint {stored} does not match its parameters "
                f"({profile.fingerprint}); delete the fingerprint line after editing shapes by hand"
            )
        stored_totals = data.get("totals")
        if stored_totals is not None and stored_totals != profile.totals():
            raise ProfileError(
                f"profile {profile.name}: stored totals {stored_totals} do not match its parameters "
                f"({profile.totals()}); delete the totals after editing by hand"
            )
        return profile



def fingerprint_of(entries: Iterable[tuple[str, tuple[int, ...], str]]) -> str:
    """Hash ``(name, shape, dtype)`` triples, sorted by name, into ``"sha256:<16 hex digits>"``."""
    canonical = sorted([name, list(shape), dtype] for name, shape, dtype in entries)
    digest = hashlib.sha256(json.dumps(canonical, separators=(",", ":")).encode()).hexdigest()
    return f"sha256:{digest[:16]}"


def _as_dim(dim: object) -> int:
    if isinstance(dim, bool) or not isinstance(dim, int) and not hasattr(dim, "__index__"):
        raise ValueError(f"dimension {dim!r} is not an integer")
    value = int(dim)  # type: ignore[call-overload]
    if value < 0:
        raise ValueError(f"dimension {value} is negative")
    return value
