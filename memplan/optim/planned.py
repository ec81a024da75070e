"""One optimizer built from a plan: every parameter routed to its planned method and layout.

:func:`from_plan` checks the plan against the model, builds one inner optimizer per method spec
(memplan's own ones get each parameter's planned matricization, tensor index or cover), and
wraps them in :class:`PlannedOptimizer`, a ``torch.optim.Optimizer`` whose ``param_groups`` are
the inner optimizers' groups themselves (so LR schedulers and per-group settings reach them),
whose ``state`` is their state, and whose ``state_dict`` round-trips through each of them.
"""

from __future__ import annotations

from collections.abc import Mapping as MappingABC
from typing import Any, Callable, Iterable, Iterator, Mapping

import torch

from memplan.errors import SpecError
from memplan.methods import build, get_method, parse_spec
from memplan.methods.spec import MethodSpec
from memplan.optim.base import run_closure
from memplan.plan import Plan, PlanError
from memplan.profile import ModelProfile, ParamSpec

NamedParameters = Iterable[tuple[str, torch.nn.Parameter]]


def from_plan(model_or_params: torch.nn.Module | NamedParameters, plan: Plan | str, lr: float | None = None,
              lr_scale: float = 1.0, **overrides: Any) -> "PlannedOptimizer":
    """The optimizer a plan describes, for ``model_or_params`` (a module or named parameters).

    Learning rates come from the plan's hyperparameters, times ``lr_scale``; ``lr`` sets one
    learning rate for every method instead. Other ``overrides`` (e.g. ``weight_decay=0.01``)
    go to every method that has that hyperparameter; one that no planned method has is an error.
    """
    if isinstance(plan, str):
        plan = Plan.load(plan)
    named = list(model_or_params.named_parameters() if isinstance(model_or_params, torch.nn.Module)
                 else model_or_params)
    plan.check_model(_profile_of(named, plan))
    by_name = dict(named)
    groups: dict[str, list[tuple[torch.nn.Parameter, tuple[int, ...] | None]]] = {}
    for entry in plan.entries:
        groups.setdefault(entry.method, []).append((by_name[entry.name], entry.layout))
    used_overrides: set[str] = set()
    inner = []
    for spec_text, members in groups.items():
        spec = parse_spec(spec_text)
        hyperparameters = dict(plan.hyperparameters.get(spec.name, {}))
        method_lr = lr if lr is not None else hyperparameters.pop("lr", get_method(spec.name).default_lr) * lr_scale
        hyperparameters.pop("lr", None)
        optimizer, accepted = _inner_optimizer(spec, members, method_lr, hyperparameters, overrides)
        used_overrides |= accepted
        for group in optimizer.param_groups:
            group["method"] = spec_text
        inner.append(optimizer)
    unused = sorted(set(overrides) - used_overrides)
    if unused:
        raise SpecError(f"no planned method takes {unused[0]!r} (methods: {', '.join(groups)})")
    return PlannedOptimizer(inner, plan)


def _profile_of(named: list[tuple[str, torch.nn.Parameter]], plan: Plan) -> ModelProfile:
    """The shape inventory of the parameters given (tied tensors counted once, under their first name)."""
    seen: set[int] = set()
    specs = []
    for name, param in named:
        if id(param) in seen:
            continue
        seen.add(id(param))
        specs.append(ParamSpec(name, tuple(param.shape), str(param.dtype), trainable=bool(param.requires_grad)))
    return ModelProfile(plan.model_name, "model", tuple(specs))


def _inner_optimizer(spec: MethodSpec, members: list[tuple[torch.nn.Parameter, tuple[int, ...] | None]], lr: float,
           hyperparameters: dict[str, Any], overrides: Mapping[str, Any]) -> tuple[torch.optim.Optimizer, set[str]]:
    """One inner optimizer for all parameters of one spec; returns it and the overrides it took.

    The plan's hyperparameters come first, then the spec's own options, then the overrides that
    this method takes. An override of a variant option (one that changes which state exists) is
    refused: the optimizer would no longer allocate what the plan predicts.
    """
    method = get_method(spec.name)
    options = method.resolve(spec)
    taken = {key for key in overrides if method.takes(key, options)}
    for key in sorted(taken):
        if any(option.name == key and option.variant for option in method.options):
            raise SpecError(f"{key} changes {spec}'s state layout: edit the plan's method specs instead of "
                            f"overriding it")
    given = {key: value for key, value in hyperparameters.items() if key not in spec.given()}
    given.update({key: overrides[key] for key in taken})
    layouts = {param: layout for param, layout in members if layout is not None}
    optimizer = build(spec, [param for param, _ in members], lr=lr, layouts=layouts, **given)
    return optimizer, taken


class _MergedState(MappingABC):
    """The inner optimizers' state, as one mapping from parameter to state dict."""

    def __init__(self, optimizers: list[torch.optim.Optimizer]) -> None:
        self._owner = {param: optimizer for optimizer in optimizers for group in optimizer.param_groups
                       for param in group["params"]}

    def __getitem__(self, param: torch.Tensor) -> dict[str, Any]:
        owner = self._owner.get(param)
        if owner is None:
            raise KeyError("parameter is not in this plan")
        return owner.state[param]

    def __iter__(self) -> Iterator[torch.Tensor]:
        return (param for param, owner in self._owner.items() if param in owner.state)

    def __len__(self) -> int:
        return sum(1 for _ in self)


class PlannedOptimizer(torch.optim.Optimizer):
    """Several optimizers behaving as one (see the module docstring)."""

    def __init__(self, optimizers: list[torch.optim.Optimizer], plan: Plan) -> None:
        params = [param for optimizer in optimizers for group in optimizer.param_groups for param in group["params"]]
        super().__init__(params, {})
        self.optimizers = optimizers
        self.plan = plan
        self._link()

    def _link(self) -> None:
        self.param_groups = [group for optimizer in self.optimizers for group in optimizer.param_groups]
        self.state = _MergedState(self.optimizers)  # type: ignore[assignment]

    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        """Evaluate ``closure`` once (if given), then step every inner optimizer."""
        loss = run_closure(closure)
        for optimizer in self.optimizers:
            optimizer.step()
        return loss

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Hand each inner optimizer its share of ``state_dict`` (each keeps its own dtype rules)."""
        saved_groups = state_dict["param_groups"]
        if len(saved_groups) != len(self.param_groups):
            raise PlanError(f"state_dict has {len(saved_groups)} parameter groups, this plan's optimizer "
                            f"{len(self.param_groups)}")
        position = 0
        for optimizer in self.optimizers:
            count = len(optimizer.param_groups)
            groups = saved_groups[position:position + count]
            position += count
            local = {saved_id: index for index, saved_id in
                     enumerate(saved_id for group in groups for saved_id in group["params"])}
            optimizer.load_state_dict({
                "state": {local[saved_id]: value for saved_id, value in state_dict["state"].items()
                          if saved_id in local},
                "param_groups": [{**group, "params": [local[saved_id] for saved_id in group["params"]]}
                                 for group in groups],
            })
        self._link()
