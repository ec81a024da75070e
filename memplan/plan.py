"""plan.yaml: the contract between the planner and the optimizer, and a file people read and edit.

A plan holds a format version, the model's identity (name, source, fingerprint), the budget and
the predicted totals, the objective, the hyperparameter defaults per method, and one entry per
trainable parameter: name, shape, dtype, method spec, layout, momentum kind, state dtype,
predicted state bytes, quality (and measured distortion when calibrated). Loading checks every
entry (known method, layout fits the shape, bytes equal the byte model's) and names the
offending parameter; :meth:`Plan.check_model` names every parameter a model has that the plan
does not, and the reverse.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Mapping

from memplan.errors import PlanError, SpecError
from memplan.yamlfile import YamlDocument
from memplan.methods import get_method, param_state, parse_spec
from memplan.profile import ModelProfile

if TYPE_CHECKING:
    from memplan.search import Choice

PLAN_FORMAT = 1

DEFAULT_LEARNING_RATES = {
    "adam": 1e-3, "adamw": 1e-3, "adagrad": 1e-2, "sgd": 1e-2, "adafactor": 1e-3, "came": 2e-4,
    "smmf": 1e-3, "sm3": 0.1, "et": 0.1, "et1": 0.1, "et2": 0.1, "et3": 0.1, "et_inf": 0.1,
}
"""Starting learning rates written into new plans per method (the libraries' defaults; ET and
SM3 are AdaGrad-like and start higher). Edit the plan, or pass ``lr`` to ``from_plan``."""

STATE_OPTIONS = frozenset({"beta1", "sign_bits", "vector_reshape", "momentum", "amsgrad", "impl", "variant"})
"""Options that decide which state tensors exist: they live in each entry's method spec, never in
the shared hyperparameters, so a plan's bytes cannot be changed behind its back."""


def default_hyperparameters(method: str) -> dict[str, Any]:
    """The learning rate and the state-neutral options of ``method``, at their defaults."""
    values: dict[str, Any] = {"lr": DEFAULT_LEARNING_RATES[method]}
    values.update({option.name: option.default for option in get_method(method).options
                   if option.name not in STATE_OPTIONS})
    return values


def check_hyperparameters(method: str, values: Mapping[str, Any]) -> None:
    """Raise PlanError for a hyperparameter ``method`` does not have, or one that changes its state."""
    known = {option.name: option for option in get_method(method).options}
    for key, value in values.items():
        if key == "lr":
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
                raise PlanError(f"hyperparameters.{method}.lr must be a number >= 0, got {value!r}")
            continue
        if key in STATE_OPTIONS:
            raise PlanError(f"hyperparameters.{method}.{key} changes the state layout: put it in each "
                            f"parameter's method spec instead (e.g. {method}:{key}=...)")
        if key not in known:
            raise PlanError(f"hyperparameters.{method}: unknown option {key!r} "
                            f"(valid: lr, {', '.join(n for n in known if n not in STATE_OPTIONS)})")
        try:
            known[key].validate(value)
        except SpecError as error:
            raise PlanError(f"hyperparameters.{method}: {error}") from None


@dataclass(frozen=True)
class PlanEntry:
    """One trainable parameter's planned state."""

    name: str
    shape: tuple[int, ...]
    dtype: str
    method: str
    layout: tuple[int, ...] | None
    momentum: str
    state_dtype: str
    state_bytes: int
    quality: float
    distortion: float | None = None

    def to_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            "name": self.name, "shape": list(self.shape), "dtype": self.dtype, "method": self.method,
            "layout": None if self.layout is None else list(self.layout), "momentum": self.momentum,
            "state_dtype": self.state_dtype, "state_bytes": self.state_bytes, "quality": round(self.quality, 6),
        }
        if self.distortion is not None:
            data["distortion"] = round(self.distortion, 6)
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "PlanEntry":
        """Build and check one entry; errors name the parameter."""
        if not isinstance(data, Mapping) or "name" not in data:
            raise PlanError(f"a plan entry must be a mapping with a name, got {data!r}")
        name = str(data["name"])
        required = {"shape", "dtype", "method", "layout", "state_bytes"}
        missing = sorted(required - set(data))
        if missing:
            raise PlanError(f"parameter {name}: missing {', '.join(missing)}")
        try:
            spec = parse_spec(str(data["method"]))
        except SpecError as error:
            raise PlanError(f"parameter {name}: {error}") from None
        shape = tuple(int(dim) for dim in data["shape"])
        layout = None if data["layout"] is None else tuple(int(dim) for dim in data["layout"])
        try:
            state = param_state(spec, shape, str(data["dtype"]), layout)
        except ValueError as error:
            raise PlanError(f"parameter {name}: {error}") from None
        if layout is not None and layout != state.layout:
            raise PlanError(f"parameter {name}: layout {list(layout)} is not what {spec} uses")
        if int(data["state_bytes"]) != state.state_bytes:
            raise PlanError(f"parameter {name}: state_bytes {data['state_bytes']} but {spec} with layout "
                            f"{None if layout is None else list(layout)} keeps {state.state_bytes}")
        return cls(name=name, shape=shape, dtype=str(data["dtype"]), method=str(spec), layout=state.layout,
                   momentum=state.momentum, state_dtype=str(data.get("state_dtype", "")),
                   state_bytes=state.state_bytes, quality=float(data.get("quality", 0.0)),
                   distortion=None if data.get("distortion") is None else float(data["distortion"]))


@dataclass(frozen=True)
class Plan(YamlDocument):
    """A whole plan (see the module docstring)."""

    model_name: str
    model_source: str
    fingerprint: str
    budget_bytes: int
    entries: tuple[PlanEntry, ...]
    objective: str = "quality"
    time_weight: float = 0.0
    priors: str = "bundled"
    hyperparameters: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    predicted: Mapping[str, Any] = field(default_factory=dict)
    calibration: Mapping[str, Any] | None = None

    document_name = "plan"
    error = PlanError

    def yaml_header(self) -> str:
        """The comment line above a plan file."""
        return f"memplan plan for {self.model_name}: {self.state_bytes:,} of {self.budget_bytes:,} bytes"

    @property
    def state_bytes(self) -> int:
        """Total predicted state bytes."""
        return sum(entry.state_bytes for entry in self.entries)

    def by_method(self) -> list[dict[str, Any]]:
        """Per method spec: how many parameters, elements and state bytes it got (most bytes first)."""
        rows: dict[str, dict[str, Any]] = {}
        for entry in self.entries:
            row = rows.setdefault(entry.method, {"method": entry.method, "parameters": 0, "numel": 0, "state_bytes": 0})
            row["parameters"] += 1
            row["numel"] += math.prod(entry.shape)
            row["state_bytes"] += entry.state_bytes
        return sorted(rows.values(), key=lambda row: (-row["state_bytes"], -row["numel"]))

    def largest(self, count: int | None = None) -> list[PlanEntry]:
        """The entries of the largest parameters first (all of them when ``count`` is None)."""
        ordered = sorted(self.entries, key=lambda entry: -math.prod(entry.shape))
        return ordered if count is None else ordered[:count]

    def summary(self, path: str | None = None) -> dict[str, Any]:
        """The ``memplan plan --json`` document."""
        return {
            "budget_bytes": self.budget_bytes,
            "state_bytes": self.state_bytes,
            "plan_path": path,
            "quality": self.predicted.get("quality"),
            "parameters": [{"name": e.name, "method": e.method, "layout": None if e.layout is None else list(e.layout),
                            "state_bytes": e.state_bytes} for e in self.entries],
        }


    @classmethod
    def from_choice(cls, choice: "Choice", objective: str = "quality", priors: str = "bundled",
                    calibration: Mapping[str, Any] | None = None, device: str | None = None) -> "Plan":
        """The plan of a planner's choice, with default hyperparameters for every method it uses."""
        entries = []
        for spec in choice.profile.trainable_params:
            candidate = choice.picks[spec.name]
            entries.append(PlanEntry(
                name=spec.name, shape=spec.shape, dtype=spec.dtype, method=candidate.spec, layout=candidate.layout,
                momentum=candidate.momentum, state_dtype=candidate.state_dtype, state_bytes=candidate.state_bytes,
                quality=candidate.quality, distortion=candidate.distortion))
        methods = sorted({parse_spec(entry.method).name for entry in entries})
        predicted: dict[str, Any] = {
            "state_bytes": sum(entry.state_bytes for entry in entries),
            "quality": round(choice.quality, 6),
            "objective": round(choice.objective, 6),
            "objective_bound": round(choice.bound, 6),
        }
        seconds = sum(candidate.seconds for candidate in choice.picks.values())
        if seconds and device:
            # compulsory traffic over the device's bandwidth: a floor; memplan bench predicts the full step
            predicted["traffic_ms"] = round(seconds * 1e3, 3)
            predicted["device"] = device
        return cls(
            model_name=choice.profile.name, model_source=choice.profile.source,
            fingerprint=choice.profile.fingerprint, budget_bytes=choice.budget_bytes, entries=tuple(entries),
            objective=objective, time_weight=choice.time_weight, priors=priors,
            hyperparameters={method: default_hyperparameters(method) for method in methods},
            predicted=predicted, calibration=dict(calibration) if calibration else None,
        )

    def to_dict(self) -> dict[str, Any]:
        """A plain dict in the file's key order."""
        data: dict[str, Any] = {
            "memplan_plan": PLAN_FORMAT,
            "model": {"name": self.model_name, "source": self.model_source, "fingerprint": self.fingerprint},
            "budget_bytes": self.budget_bytes,
            "objective": {"name": self.objective, "time_weight": self.time_weight},
            "priors": self.priors,
            "predicted": dict(self.predicted),
        }
        if self.calibration is not None:
            data["calibration"] = dict(self.calibration)
        data["hyperparameters"] = {name: dict(values) for name, values in self.hyperparameters.items()}
        data["parameters"] = [entry.to_dict() for entry in self.entries]
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "Plan":
        """Build and check a plan: every entry, the totals, the budget."""
        if not isinstance(data, Mapping) or data.get("memplan_plan") != PLAN_FORMAT:
            found = data.get("memplan_plan") if isinstance(data, Mapping) else None
            raise PlanError(f"not a memplan plan of format {PLAN_FORMAT} (memplan_plan: {found!r})")
        try:
            model, objective = data["model"], data.get("objective", {})
            entries = tuple(PlanEntry.from_dict(item) for item in data["parameters"])
            plan = cls(
                model_name=str(model["name"]), model_source=str(model.get("source", "")),
                fingerprint=str(model["fingerprint"]), budget_bytes=int(data["budget_bytes"]), entries=entries,
                objective=str(objective.get("name", "quality")), time_weight=float(objective.get("time_weight", 0.0)),
                priors=str(data.get("priors", "bundled")),
                hyperparameters={str(k): dict(v) for k, v in (data.get("hyperparameters") or {}).items()},
                predicted=dict(data.get("predicted") or {}), calibration=data.get("calibration"),
            )
        except (KeyError, TypeError, ValueError, AttributeError) as error:
            raise PlanError(f"malformed plan: {type(error).__name__}: {error}") from None
        names = [entry.name for entry in entries]
        if len(set(names)) != len(names):
            duplicate = next(name for name in names if names.count(name) > 1)
            raise PlanError(f"parameter {duplicate} appears twice in the plan")
        unknown = sorted(set(plan.hyperparameters) - {parse_spec(e.method).name for e in entries})
        if unknown:
            raise PlanError(f"hyperparameters for {unknown[0]}, which no parameter uses")
        for method, values in plan.hyperparameters.items():
            check_hyperparameters(method, values)
        predicted_bytes = plan.predicted.get("state_bytes")
        if predicted_bytes is not None and int(predicted_bytes) != plan.state_bytes:
            raise PlanError(f"predicted state_bytes {predicted_bytes} but the entries add up to {plan.state_bytes}")
        if plan.state_bytes > plan.budget_bytes:
            raise PlanError(f"the entries need {plan.state_bytes:,} bytes, over the budget of {plan.budget_bytes:,}")
        return plan

    def check_model(self, profile: ModelProfile) -> None:
        """Raise PlanError unless ``profile``'s trainable parameters are exactly the plan's.

        A different fingerprint alone is not an error (a frozen layer changes it); missing,
        extra, reshaped or re-typed parameters are, and every one of them is named.
        """
        planned = {entry.name: entry for entry in self.entries}
        trainable = {spec.name: spec for spec in profile.trainable_params}
        problems = [f"{name} is in the plan but not a trainable parameter of the model"
                    for name in planned if name not in trainable]
        problems += [f"{name} {list(spec.shape)} has no plan entry" for name, spec in trainable.items()
                     if name not in planned]
        for name in planned.keys() & trainable.keys():
            entry, spec = planned[name], trainable[name]
            if entry.shape != spec.shape:
                problems.append(f"{name} is {list(spec.shape)} in the model but {list(entry.shape)} in the plan")
            elif entry.dtype != spec.dtype:
                problems.append(f"{name} is {spec.dtype} in the model but {entry.dtype} in the plan")
        if problems:
            shown = "; ".join(problems[:8]) + (f"; and {len(problems) - 8} more" if len(problems) > 8 else "")
            raise PlanError(f"plan for {self.model_name} ({self.fingerprint}) does not fit this model "
                            f"({profile.fingerprint}): {shown}")
