"""plan.yaml: the contract between the planner and the optimizer, and a file people read and edit.

A plan holds a format version, the model's identity (name, source, fingerprint), the budget and
the predicted totals, the objective, its Adam-equivalent learning rate and each method spec's
learning-rate ratio to Adam, the hyperparameter defaults per method, and one entry per
trainable parameter: name, shape, dtype, method spec, layout, momentum kind, state dtype,
predicted state bytes, quality (and measured distortion when calibrated). Loading checks every
entry (known method, layout fits the shape, bytes equal the byte model's) and names the
offending parameter; :meth:`Plan.check_model` names every parameter a model has that the plan
does not, and the reverse.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

from memplan.errors import PlanError, ProfileError, SpecError
from memplan.yamlfile import YamlDocument
from memplan.methods import ADAM_LR, get_method, param_state, parse_spec
from memplan.methods.spec import Option
from memplan.priors import BUNDLED_SCALE, QUALITY_SCALES
from memplan.profile import ModelProfile
from memplan.sharding import SHARDINGS, Sharding
from memplan.schema import (
    Anything, Expected, Fields, Flag, Integer, ListOf, MapOf, Nullable, Number, OneOf, Text, check, find_problems,
    mismatch, raise_problems,
)

PLAN_FORMAT = 1


def check_hyperparameters(method: str, values: Mapping[str, Any]) -> None:
    """Raise one PlanError naming every hyperparameter of ``method`` that it does not have, that has the
    wrong type or value, or that changes its state."""
    raise_problems(_hyperparameter_problems(method, values), PlanError)


def _hyperparameter_problems(method: str, values: Any) -> list[str]:
    """Every problem of the ``hyperparameters.<method>`` mapping ``values``, each naming its key."""
    path = f"hyperparameters.{method}"
    try:
        known = {option.name: option for option in get_method(method).options}
    except SpecError as error:
        return [f"{path}: {error}"]
    if not isinstance(values, Mapping):
        return [mismatch(path, "a mapping", values)]
    options = {name: option for name, option in known.items() if not option.variant}
    problems = [f"{path}.{key} changes the state layout: put it in each parameter's method spec instead "
                f"(e.g. {method}:{key}=...)" for key in values if key in known and known[key].variant]
    expected: dict[str, Expected] = {"lr": Number(at_least=0), **{name: _option_value(option)
                                                                  for name, option in options.items()}}
    given = {key: value for key, value in values.items() if key not in known or not known[key].variant}
    problems += find_problems(given, Fields(optional=expected), path)
    for key, value in given.items():
        if key in options and not find_problems(value, expected[key]):
            # the option's own range check (e.g. eps >= 0), once the type is right
            try:
                options[key].validate(value)
            except SpecError as error:
                problems.append(f"{path}: {error}")
    return problems


def _option_value(option: Option) -> Expected:
    """What a plan may give for a method option: a value of its kind or one of its choices, or null when nullable."""
    kinds: dict[str, Expected] = {"float": Number(), "int": Integer(), "bool": Flag(), "str": Text()}
    expected = OneOf(*option.choices) if option.choices else kinds[option.kind]
    return Nullable(expected) if option.nullable else expected


PLAN_ENTRY_FIELDS = Fields(
    required={"name": Text(), "shape": ListOf(Integer(at_least=0)), "dtype": Text(), "method": Text(),
              "layout": Nullable(ListOf(Integer())), "state_bytes": Integer(at_least=0)},
    optional={"momentum": Text(), "state_dtype": Text(), "quality": Number(), "distortion": Nullable(Number())},
)
"""The keys of one ``parameters`` entry and their types; :meth:`PlanEntry.from_dict` then checks that
the method is known, the layout fits the shape and the bytes are the byte model's."""

PLAN_PREDICTION_FIELDS = Fields(
    required={"state_bytes": Integer(at_least=0), "quality": Number(), "objective": Number(),
              "objective_bound": Number()},
    optional={"traffic_ms": Nullable(Number(at_least=0)), "device": Nullable(Text())},
)
"""The keys of a plan's ``predicted`` mapping and their types."""

PLAN_FIELDS = Fields(
    required={"memplan_plan": OneOf(PLAN_FORMAT),
              "model": Fields(required={"name": Text(), "fingerprint": Text()}, optional={"source": Text()}),
              "budget_bytes": Integer(at_least=0), "predicted": PLAN_PREDICTION_FIELDS,
              "parameters": ListOf(PLAN_ENTRY_FIELDS)},
    optional={"objective": Fields(optional={"name": Text(), "time_weight": Number()}), "priors": Text(),
              "quality_scale": OneOf(*QUALITY_SCALES),
              "sharding": Fields(required={"kind": OneOf(*SHARDINGS), "world_size": Integer(at_least=1)},
                                 optional={"rank_state_bytes": ListOf(Integer(at_least=0))}),
              "calibration": Nullable(MapOf(Anything())),
              "learning_rate": Number(above=0), "lr_ratios": MapOf(Number(above=0)),
              "hyperparameters": Nullable(MapOf(Anything()))},
)
"""The keys of a plan file and their types (each method's hyperparameters are checked against its options)."""


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
        name = data.get("name") if isinstance(data, Mapping) else None
        check(data, PLAN_ENTRY_FIELDS, PlanError, where=f"parameter {name}" if isinstance(name, str) else "plan entry")
        try:
            spec = parse_spec(data["method"])
        except SpecError as error:
            raise PlanError(f"parameter {name}: {error}") from None
        shape = tuple(data["shape"])
        layout = None if data["layout"] is None else tuple(data["layout"])
        try:
            state = param_state(spec, shape, data["dtype"], layout)
        except (ValueError, ProfileError) as error:
            raise PlanError(f"parameter {name}: {error}") from None
        if layout is not None and layout != state.layout:
            raise PlanError(f"parameter {name}: layout {list(layout)} is not what {spec} uses")
        if data["state_bytes"] != state.state_bytes:
            raise PlanError(f"parameter {name}: state_bytes {data['state_bytes']} but {spec} with layout "
                            f"{None if layout is None else list(layout)} keeps {state.state_bytes}")
        for key, derived in (("momentum", state.momentum), ("state_dtype", state.state_dtype)):
            if data.get(key) not in (None, "", derived):
                raise PlanError(f"parameter {name}: {key} {data[key]!r} is not what {spec} keeps ({derived!r}); "
                                f"{key} follows from the method: edit the method spec instead (options in "
                                f"docs/methods.md)")
        return cls(name=name, shape=shape, dtype=data["dtype"], method=str(spec), layout=state.layout,
                   momentum=state.momentum, state_dtype=state.state_dtype,
                   state_bytes=state.state_bytes, quality=float(data.get("quality", 0.0)),
                   distortion=None if data.get("distortion") is None else float(data["distortion"]))


@dataclass(frozen=True)
class PlanPrediction:
    """What the planner predicted for the choice it wrote: the plan's ``predicted`` mapping.

    ``quality`` is the element-weighted mean quality of the chosen states (1 = Adam everywhere),
    ``objective`` what the search maximised (quality less the weighted step time) and
    ``objective_bound`` the most any choice could reach. ``traffic_ms`` is one step's compulsory
    memory traffic on the ``device`` profile named (a floor on the step time), when the planner had one.
    """

    state_bytes: int
    quality: float
    objective: float
    objective_bound: float
    traffic_ms: float | None = None
    device: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """A plain dict in the file's key order; ``traffic_ms`` and ``device`` only when known."""
        data: dict[str, Any] = {"state_bytes": self.state_bytes, "quality": self.quality,
                                "objective": self.objective, "objective_bound": self.objective_bound}
        if self.traffic_ms is not None:
            data["traffic_ms"] = self.traffic_ms
        if self.device is not None:
            data["device"] = self.device
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "PlanPrediction":
        """Build from :meth:`to_dict` output; PlanError names every bad key (``predicted.quality``)."""
        check(data, PLAN_PREDICTION_FIELDS, PlanError, path="predicted")
        traffic_ms = data.get("traffic_ms")
        return cls(state_bytes=data["state_bytes"], quality=float(data["quality"]), objective=float(data["objective"]),
                   objective_bound=float(data["objective_bound"]),
                   traffic_ms=None if traffic_ms is None else float(traffic_ms), device=data.get("device"))


MISMATCHES_SHOWN = 4
"""How many mismatching parameters a plan/model mismatch error names."""

WRAPPER_PREFIX = "module."
"""The prefix DistributedDataParallel, DataParallel and FSDP(1) wrappers put before every name."""


def mismatch_cause(planned: Sequence[str], trainable: Sequence[str], frozen: set[str],
                   retyped: set[tuple[str, str]]) -> str:
    """The likeliest reason a model's trainable parameter names (``trainable``; ``frozen`` the
    others) and dtypes do not match a plan's (``planned``), in words a user can act on."""
    planned_set, trainable_set = set(planned), set(trainable)
    if trainable and all(name.startswith(WRAPPER_PREFIX) for name in trainable) and \
            {name[len(WRAPPER_PREFIX):] for name in trainable} == planned_set:
        return (f"every name in the model has a {WRAPPER_PREFIX!r} prefix the plan lacks: pass model.module "
                f"(a DDP/FSDP wrapper adds {WRAPPER_PREFIX!r})")
    if planned and all(name.startswith(WRAPPER_PREFIX) for name in planned) and \
            {name[len(WRAPPER_PREFIX):] for name in planned} == trainable_set:
        return (f"every name in the plan has a {WRAPPER_PREFIX!r} prefix the model lacks: plan the unwrapped "
                f"model (or the checkpoint with --strip-prefix {WRAPPER_PREFIX})")
    now_frozen = planned_set & frozen
    now_trainable = trainable_set - planned_set
    if (now_frozen or now_trainable) and planned_set - now_frozen <= trainable_set and \
            trainable_set - now_trainable <= planned_set:
        parts = []
        if now_trainable:
            parts.append(f"{len(now_trainable)} parameter(s) trainable in the model were frozen (or absent) when "
                         f"planned")
        if now_frozen:
            parts.append(f"{len(now_frozen)} parameter(s) planned are frozen in the model")
        return " and ".join(parts) + ": freeze the same parameters as when planning (--freeze), or plan again"
    if len(retyped) == 1 and planned_set == trainable_set:
        model_dtype, plan_dtype = next(iter(retyped))
        return (f"the model's parameters are {model_dtype}, the plan's {plan_dtype}: plan the model in the dtype "
                f"it trains in")
    shared = planned_set & trainable_set
    if len(shared) < min(len(planned_set), len(trainable_set)) / 2:
        return (f"it is another model: {len(shared)} of the plan's {len(planned_set)} parameter names are "
                f"trainable parameters of this model")
    return "the model changed since it was planned: plan it again"


def _round_robin(groups: Sequence[Sequence[str]], limit: int) -> list[str]:
    """Up to ``limit`` items taken from each group in turn, so every kind of problem is shown."""
    taken: list[str] = []
    for index in range(max((len(group) for group in groups), default=0)):
        for group in groups:
            if index < len(group) and len(taken) < limit:
                taken.append(group[index])
    return taken


@dataclass(frozen=True)
class Plan(YamlDocument):
    """A whole plan (see the module docstring)."""

    model_name: str
    model_source: str
    fingerprint: str
    budget_bytes: int
    entries: tuple[PlanEntry, ...]
    predicted: PlanPrediction
    objective: str = "quality"
    time_weight: float = 0.0
    priors: str = "bundled"
    quality_scale: str = BUNDLED_SCALE
    """The scale the priors' qualities, and so the entries' and the predicted quality, are on
    (:data:`memplan.priors.QUALITY_SCALES`)."""
    hyperparameters: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    calibration: Mapping[str, Any] | None = None
    learning_rate: float = ADAM_LR
    """The Adam-equivalent learning rate the plan trains at unless ``from_plan`` is given one."""
    lr_ratios: Mapping[str, float] = field(default_factory=dict)
    """Per method spec, its learning rate over Adam's (a spec without one uses its method's default)."""
    sharding: Sharding | None = None
    """The data-parallel layout planned for (None: one device); the budget is then per rank."""

    document_name = "plan"
    error = PlanError

    def yaml_header(self) -> str:
        """The comment line above a plan file."""
        return f"memplan plan for {self.model_name}: {self.state_bytes:,} of {self.budget_bytes:,} bytes"

    @property
    def state_bytes(self) -> int:
        """Total predicted state bytes (over all ranks' shards, for a sharded plan: the model's state)."""
        return sum(entry.state_bytes for entry in self.entries)

    def lr_ratio(self, spec_text: str) -> float:
        """The learning rate of ``spec_text`` over Adam's: the plan's, else its method's default."""
        if spec_text in self.lr_ratios:
            return self.lr_ratios[spec_text]
        return get_method(parse_spec(spec_text).name).lr_ratio

    def learning_rate_for(self, spec_text: str, adam_lr: Any = None) -> Any:
        """The learning rate of the groups of ``spec_text``: ``adam_lr`` (an Adam-equivalent rate,
        a float or a tensor) times the spec's ratio; without it, the plan's own rate, which is an
        ``lr`` written in ``hyperparameters`` for the method, else :attr:`learning_rate` times the ratio."""
        if adam_lr is None:
            own = self.hyperparameters.get(parse_spec(spec_text).name, {}).get("lr")
            if own is not None:
                return own
            adam_lr = self.learning_rate
        ratio = self.lr_ratio(spec_text)
        return adam_lr if ratio == 1.0 else adam_lr * ratio

    @property
    def rank_state_bytes(self) -> list[int]:
        """Each rank's predicted state bytes under :attr:`sharding` (one device: the total)."""
        if self.sharding is None:
            return [self.state_bytes]
        return self.sharding.rank_state_bytes([(entry.shape, param_state(entry.method, entry.shape, entry.dtype,
                                                                         entry.layout).tensors)
                                               for entry in self.entries])

    def method_groups(self) -> dict[str, list[PlanEntry]]:
        """The entries by method spec, in the order each spec first appears: the parameters one
        inner optimizer of :func:`memplan.optim.from_plan` steps."""
        groups: dict[str, list[PlanEntry]] = {}
        for entry in self.entries:
            groups.setdefault(entry.method, []).append(entry)
        return groups

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
            **({"sharding": {**self.sharding.to_dict(), "rank_state_bytes": self.rank_state_bytes}}
               if self.sharding else {}),
            "plan_path": path,
            "quality": self.predicted.quality,
            "parameters": [{"name": e.name, "method": e.method, "layout": None if e.layout is None else list(e.layout),
                            "state_bytes": e.state_bytes} for e in self.entries],
        }


    def to_dict(self) -> dict[str, Any]:
        """A plain dict in the file's key order."""
        data: dict[str, Any] = {
            "memplan_plan": PLAN_FORMAT,
            "model": {"name": self.model_name, "source": self.model_source, "fingerprint": self.fingerprint},
            "budget_bytes": self.budget_bytes,
            "objective": {"name": self.objective, "time_weight": self.time_weight},
            "priors": self.priors,
            "quality_scale": self.quality_scale,
            "predicted": self.predicted.to_dict(),
        }
        if self.calibration is not None:
            data["calibration"] = dict(self.calibration)
        data["learning_rate"] = self.learning_rate
        data["lr_ratios"] = {spec: self.lr_ratio(spec) for spec in dict.fromkeys(e.method for e in self.entries)}
        if self.sharding is not None:
            data["sharding"] = {**self.sharding.to_dict(), "rank_state_bytes": self.rank_state_bytes}
        data["hyperparameters"] = {name: dict(values) for name, values in self.hyperparameters.items()}
        data["parameters"] = [entry.to_dict() for entry in self.entries]
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "Plan":
        """Build and check a plan: its keys and types, every entry, the hyperparameters, the totals, the budget.

        Each stage lists all of its problems in one PlanError.
        """
        if not isinstance(data, Mapping) or data.get("memplan_plan") != PLAN_FORMAT:
            found = data.get("memplan_plan") if isinstance(data, Mapping) else None
            raise PlanError(f"not a memplan plan of format {PLAN_FORMAT} (memplan_plan: {found!r})")
        hyperparameters = data.get("hyperparameters") or {}
        problems = find_problems(data, PLAN_FIELDS)
        if isinstance(hyperparameters, Mapping):
            problems += [problem for method, values in hyperparameters.items() if isinstance(method, str)
                         for problem in _hyperparameter_problems(method, values)]
        raise_problems(problems, PlanError)
        entries: list[PlanEntry] = []
        for item in data["parameters"]:
            try:
                entries.append(PlanEntry.from_dict(item))
            except PlanError as error:
                problems.append(str(error))
        counts = Counter(entry.name for entry in entries)
        problems += [f"parameter {name} appears twice in the plan" for name, count in counts.items() if count > 1]
        raise_problems(problems, PlanError)
        used = {parse_spec(entry.method).name for entry in entries}
        raise_problems([f"hyperparameters for {method}, which no parameter uses"
                        for method in hyperparameters if method not in used], PlanError)
        specs = {entry.method for entry in entries}
        lr_ratios = {}
        for text, ratio in (data.get("lr_ratios") or {}).items():
            try:
                lr_ratios[str(parse_spec(text))] = ratio
            except SpecError as error:
                problems.append(f"lr_ratios.{text}: {error}")
        raise_problems(problems, PlanError)
        raise_problems([f"lr_ratios.{spec}: no parameter uses this method spec (used: {', '.join(sorted(specs))})"
                        for spec in lr_ratios if spec not in specs], PlanError)
        model, objective = data["model"], data.get("objective", {})
        plan = cls(
            model_name=model["name"], model_source=model.get("source", ""), fingerprint=model["fingerprint"],
            budget_bytes=data["budget_bytes"], entries=tuple(entries), objective=objective.get("name", "quality"),
            time_weight=float(objective.get("time_weight", 0.0)), priors=data.get("priors", "bundled"),
            quality_scale=data.get("quality_scale", BUNDLED_SCALE),
            hyperparameters={method: dict(values) for method, values in hyperparameters.items()},
            predicted=PlanPrediction.from_dict(data["predicted"]), calibration=data.get("calibration"),
            learning_rate=float(data.get("learning_rate", ADAM_LR)),
            lr_ratios={spec: float(ratio) for spec, ratio in lr_ratios.items()},
            sharding=Sharding(data["sharding"]["kind"], data["sharding"]["world_size"]) if "sharding" in data else None,
        )
        if plan.predicted.state_bytes != plan.state_bytes:
            raise PlanError(f"predicted state_bytes {plan.predicted.state_bytes} but the entries add up to "
                            f"{plan.state_bytes}")
        ranks = plan.rank_state_bytes
        given = data.get("sharding", {}).get("rank_state_bytes")
        if given is not None and list(given) != ranks:
            raise PlanError(f"sharding.rank_state_bytes {list(given)} but the entries give {ranks} per rank")
        if max(ranks) > plan.budget_bytes:
            per_rank = " on one rank" if plan.sharding else ""
            raise PlanError(f"the entries need {max(ranks):,} bytes{per_rank}, over the budget of "
                            f"{plan.budget_bytes:,}")
        return plan

    def check_world(self, world_size: int, shardings: tuple[str, ...]) -> None:
        """Raise PlanError unless the plan was made for ``world_size`` ranks sharded as one of
        ``shardings`` (what the running job can be). A plan without sharding fits any job: no
        rank holds more than the whole state."""
        if self.sharding is None:
            return
        if self.sharding.world_size != world_size or self.sharding.kind not in shardings:
            running = "one process" if world_size == 1 else f"{' or '.join(shardings)} over {world_size} ranks"
            raise PlanError(f"plan made for {self.sharding.kind} over {self.sharding.world_size} ranks, but this job "
                            f"runs {running}: plan again with --world-size and --sharding to match")

    def check_model(self, profile: ModelProfile) -> None:
        """Raise PlanError unless ``profile``'s trainable parameters are exactly the plan's.

        A different fingerprint alone is not an error (a frozen layer changes it); missing,
        extra, reshaped or re-typed parameters are. The message leads with the likely cause
        (a wrapper's ``module.`` prefix, frozen/trainable swaps, one dtype for all, another
        model) and names at most :data:`MISMATCHES_SHOWN` parameters.
        """
        planned = {entry.name: entry for entry in self.entries}
        trainable = {spec.name: spec for spec in profile.trainable_params}
        frozen = {spec.name for spec in profile.params if not spec.trainable}
        unplanned = [name for name in trainable if name not in planned]
        untrained = [name for name in planned if name not in trainable]
        missing = [f"{name} is in the plan but " + ("frozen in the model" if name in frozen else
                                                    "not a trainable parameter of the model")
                   for name in untrained]
        extra = [f"{name} {list(trainable[name].shape)} is trainable in the model but has no plan entry"
                 for name in unplanned]
        changed: list[str] = []
        retyped: set[tuple[str, str]] = set()
        for name in (name for name in planned if name in trainable):
            entry, spec = planned[name], trainable[name]
            if entry.shape != spec.shape:
                changed.append(f"{name} is {list(spec.shape)} in the model but {list(entry.shape)} in the plan")
            elif entry.dtype != spec.dtype:
                retyped.add((spec.dtype, entry.dtype))
                changed.append(f"{name} is {spec.dtype} in the model but {entry.dtype} in the plan")
        count = len(missing) + len(extra) + len(changed)
        if not count:
            return
        cause = mismatch_cause(sorted(planned), sorted(trainable), frozen, retyped)
        examples = _round_robin([missing, extra, changed], MISMATCHES_SHOWN)
        shown = "; ".join(examples) + (f"; and {count - len(examples)} more" if count > len(examples) else "")
        raise PlanError(f"plan for {self.model_name} does not fit this model: {cause} ({shown})")
