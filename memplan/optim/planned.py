"""One optimizer built from a plan: every parameter routed to its planned method and layout.

:func:`from_plan` checks the plan against the model, builds one inner optimizer per method spec
(memplan's own ones get each parameter's planned matricization, tensor index or cover), and
wraps them in :class:`PlannedOptimizer`, a ``torch.optim.Optimizer`` that behaves as one:

- its ``param_groups`` are the inner optimizers' groups themselves, each with a ``method`` key (the
  spec), so LR schedulers and per-group settings reach them;
- its ``state`` is one dict that the inner optimizers share, so anything may be stored in it;
- ``state_dict()`` is torch's, over those groups and that state, and holds only state tensors and
  small values (layouts are tuples of ints); ``load_state_dict`` restores each parameter's state
  with its inner optimizer's dtype policy, running load hooks as torch does;
- step hooks (its own and the global ones) fire once per step, not once per inner optimizer;
- it deep-copies, pickles and ``torch.save``-s whole, inner optimizers included.
"""

from __future__ import annotations

from functools import cache
from typing import Any, Callable, Iterable, Mapping

import torch

from memplan.errors import SpecError
from memplan.methods import build, get_method, parse_spec
from memplan.methods.spec import MethodSpec
from memplan.optim.base import MemplanOptimizer, run_closure, saved_state
from memplan.optim.sharding import PartialReductions, running_sharding
from memplan.optim.state_dicts import keep_saved_dtype, load_state_dict, torch_policy, with_param_states
from memplan.plan import Plan, PlanError
from memplan.profile import ModelProfile, ParamSpec

NamedParameters = Iterable[tuple[str, torch.nn.Parameter]]

METHOD_KEY = "method"
"""The param-group key that names the group's method spec."""


def from_plan(model_or_params: torch.nn.Module | NamedParameters, plan: Plan | str,
              lr: float | torch.Tensor | None = None, lr_scale: float = 1.0, **overrides: Any) -> "PlannedOptimizer":
    """The optimizer a plan describes, for ``model_or_params`` (a module or named parameters).

    ``lr`` is an Adam-equivalent learning rate: the parameters of each method spec train at ``lr``
    times that spec's ratio in the plan (``plan.lr_ratios``; 1 for Adam), so one number trains a
    mixed plan, and a learning rate tuned for Adam carries over. Without ``lr`` each spec trains at
    the plan's own rate (:meth:`memplan.plan.Plan.learning_rate_for`), times ``lr_scale``. Other ``overrides`` (e.g. ``weight_decay=0.01``,
    ``maximize=True``) go to every planned method, and one that some planned method does not take
    is an error naming those methods: an override never reaches only part of the model. (A
    setting meant for some methods only is a per-group edit after construction:
    ``group["chunk_bytes"] = ...`` for the groups that have that key.)
    """
    if isinstance(plan, str):
        plan = Plan.load(plan)
    named = list(model_or_params.named_parameters() if isinstance(model_or_params, torch.nn.Module)
                 else model_or_params)
    plan.check_model(_profile_of(named, plan))
    plan.check_world(*running_sharding([param for _, param in named]))
    by_name = dict(named)
    groups = {spec_text: [(entry.name, by_name[entry.name], entry.layout) for entry in entries]
              for spec_text, entries in plan.method_groups().items()}
    _check_overrides(groups, overrides)
    return PlannedOptimizer([_group_optimizer(plan, spec_text, members, lr, lr_scale, overrides)
                             for spec_text, members in groups.items()], plan)


def planned_group(plan: Plan, spec_text: str, named: NamedParameters) -> torch.optim.Optimizer:
    """The inner optimizer :func:`from_plan` builds for the plan's parameters of method spec
    ``spec_text``, over ``named`` (those parameters, by the plan's names), at the plan's own rate:
    one part of a planned step, for counting it (:func:`memplan.bench.plan_entry`)."""
    layouts = {entry.name: entry.layout for entry in plan.entries}
    return _group_optimizer(plan, spec_text, [(name, param, layouts[name]) for name, param in named], None, 1.0, {})


def _group_optimizer(plan: Plan, spec_text: str, members: list[tuple[str, torch.nn.Parameter, tuple[int, ...] | None]],
                     lr: float | torch.Tensor | None, lr_scale: float,
                     overrides: Mapping[str, Any]) -> torch.optim.Optimizer:
    """The inner optimizer of one method spec (see :func:`from_plan`), its groups tagged with the spec."""
    spec = parse_spec(spec_text)
    hyperparameters = dict(plan.hyperparameters.get(spec.name, {}))
    hyperparameters.pop("lr", None)
    method_lr = plan.learning_rate_for(spec_text, lr)
    if lr is None and lr_scale != 1.0:
        method_lr = method_lr * lr_scale
    optimizer = _build(spec, members, method_lr, hyperparameters, overrides)
    for group in optimizer.param_groups:
        group[METHOD_KEY] = spec_text
    return optimizer


def _check_overrides(groups: Mapping[str, Any], overrides: Mapping[str, Any]) -> None:
    """SpecError for an override that some planned method does not take (or that changes a method's state)."""
    for key in sorted(overrides):
        refusing = []
        for spec_text in groups:
            spec = parse_spec(spec_text)
            method = get_method(spec.name)
            options = method.resolve(spec)
            if not method.takes(key, options):
                refusing.append(spec_text)
            elif any(option.name == key and option.variant for option in method.options):
                raise SpecError(f"{key} changes {spec}'s state layout: edit the plan's method specs instead of "
                                f"overriding it")
        if len(refusing) == len(groups):
            raise SpecError(f"no planned method takes {key!r} (methods: {', '.join(groups)})")
        if refusing:
            raise SpecError(f"{key!r} would reach only some planned methods: {', '.join(refusing)} "
                            f"take{'s' if len(refusing) == 1 else ''} no {key!r}; set it on the groups "
                            f"that have it (optimizer.param_groups) instead")


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


def _build(spec: MethodSpec, members: list[tuple[str, torch.nn.Parameter, tuple[int, ...] | None]],
           lr: float | torch.Tensor, hyperparameters: dict[str, Any],
           overrides: Mapping[str, Any]) -> torch.optim.Optimizer:
    """One inner optimizer for all parameters of one spec, over named parameters (so its groups
    keep ``param_names``). The plan's hyperparameters come first, then the spec's own options,
    then the overrides."""
    given = {key: value for key, value in hyperparameters.items() if key not in spec.given()}
    given.update(overrides)
    layouts = {name: layout for name, _, layout in members if layout is not None}
    params = [(name, param) if optimizers_take_names() else param for name, param, _ in members]
    return build(spec, params, lr=lr, layouts=layouts, **given)


@cache
def optimizers_take_names() -> bool:
    """Whether this torch's optimizers take named parameters (and keep ``param_names``): 2.6 and later."""
    try:
        torch.optim.SGD([("probe", torch.zeros(1, requires_grad=True))], lr=0.1)
    except (TypeError, ValueError):
        return False
    return True


def _unhooked_step(optimizer: torch.optim.Optimizer) -> Callable[[], Any]:
    """``optimizer.step`` without torch's hook wrapper: the planned optimizer's own step already ran
    the global step hooks, which must fire once per step, not once per inner optimizer."""
    step = type(optimizer).step
    return getattr(step, "__wrapped__", step).__get__(optimizer)


class PlannedOptimizer(torch.optim.Optimizer):
    """Several optimizers behaving as one (see the module docstring).

    ``optimizers`` are the inner optimizers, one per method spec; ``plan`` the plan they follow.
    """

    def __init__(self, optimizers: list[torch.optim.Optimizer], plan: Plan) -> None:
        self.optimizers = list(optimizers)
        self.plan = plan
        super().__init__([group for optimizer in self.optimizers for group in optimizer.param_groups], {})
        for optimizer in self.optimizers:
            self.state.update(optimizer.state)
        self._link()

    def _link(self) -> None:
        """Give every inner optimizer its own share of the groups (by method) and this optimizer's state.

        Each inner optimizer's ``__setstate__`` first sees its own groups and states alone, so its
        class's fix-ups of loaded state (torch's turn step counters into tensors, fill in newer
        flags) apply to its parameters and no others.
        """
        for optimizer in self.optimizers:
            method = optimizer.param_groups[0][METHOD_KEY]
            groups = [group for group in self.param_groups if group[METHOD_KEY] == method]
            own_state = {param: self.state[param] for group in groups for param in group["params"]
                         if param in self.state}
            optimizer.__setstate__({"state": own_state, "param_groups": groups})
            optimizer.state = self.state

    def __getstate__(self) -> dict[str, Any]:
        return {**super().__getstate__(), "optimizers": self.optimizers, "plan": self.plan}

    def __setstate__(self, state: dict[str, Any]) -> None:
        super().__setstate__(state)
        self._link()

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        """Add a group of named parameters under the method spec in ``param_group["method"]``.

        The group joins the inner optimizer of that spec (one is built when the plan has none),
        which validates its hyperparameters and layouts and fills in its defaults. A group without
        a method spec is refused, since no method would update its parameters, and so is one of
        unnamed parameters (every group of a planned optimizer names its parameters). Parameters
        added this way are not in :attr:`plan`.
        """
        if any(param_group is group for optimizer in self.optimizers for group in optimizer.param_groups):
            self.param_groups.append(param_group)  # an inner optimizer's group, at construction
            return
        method = param_group.get(METHOD_KEY)
        if not isinstance(method, str):
            raise ValueError(f"a group added to a PlannedOptimizer needs '{METHOD_KEY}': the method spec that "
                             f"updates its parameters (one of: {', '.join(self.methods)})")
        spec_text = str(parse_spec(method))
        group = {key: value for key, value in param_group.items() if key != METHOD_KEY}
        owner = next((optimizer for optimizer in self.optimizers if optimizer.param_groups[0][METHOD_KEY] == spec_text),
                     None)
        self._check_new_parameters(group)
        if owner is None:
            owner = build(spec_text, [group], lr=group.get("lr"))
            self.optimizers.append(owner)
        else:
            owner.add_param_group(group)
        owner.param_groups[-1][METHOD_KEY] = spec_text
        self.param_groups.append(owner.param_groups[-1])
        self._link()

    def _check_new_parameters(self, group: dict[str, Any]) -> None:
        """Refuse unnamed parameters (where the groups name theirs) and parameters already in a group
        (``group["params"]`` becomes a list)."""
        params = group["params"]
        group["params"] = params = [params] if isinstance(params, torch.Tensor) else list(params)
        named = all("param_names" in existing for existing in self.param_groups)
        if named and not all(isinstance(param, tuple) for param in params):
            raise ValueError("a PlannedOptimizer's groups name their parameters: add (name, parameter) pairs")
        present = {id(param) for existing in self.param_groups for param in existing["params"]}
        if any(id(param[1] if isinstance(param, tuple) else param) in present for param in params):
            raise ValueError("some parameters appear in more than one parameter group")

    @property
    def methods(self) -> list[str]:
        """The method specs of the inner optimizers, in order."""
        return [optimizer.param_groups[0][METHOD_KEY] for optimizer in self.optimizers]

    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        """Evaluate ``closure`` once (if given), then step every inner optimizer; memplan's reduce
        the partial statistics of their sharded parameters together, in one packed collective for
        the whole plan (an all-gather when SM3's maxima mix with sums)."""
        loss = run_closure(closure)
        reductions = PartialReductions()
        finishers = []
        for optimizer in self.optimizers:
            # the label torch's hook wrapper would give, so profiles still show each inner step
            with torch.autograd.profiler.record_function(f"Optimizer.step#{type(optimizer).__name__}.step"):
                if isinstance(optimizer, MemplanOptimizer):
                    finishers.extend(optimizer.begin_step(reductions))
                else:
                    _unhooked_step(optimizer)()
        self._communication = reductions.finish(finishers)
        return loss

    def last_communication(self) -> tuple[int, int]:
        """The collectives and the bytes (this rank's buffers) that the last step's reduction moved."""
        return getattr(self, "_communication", (0, 0))

    def state_dict(self) -> dict[str, Any]:
        """torch's state_dict, with packed bits of sharded parameters saved one bool per element, as
        :meth:`MemplanOptimizer.state_dict` saves them (loadable on another world size)."""
        return with_param_states(self, super().state_dict(), saved_state)

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Load a state_dict: each parameter's state comes back with its inner optimizer's dtype
        policy (memplan's keeps saved dtypes, torch's casts to the parameter's); a saved group of
        another method than the current one at that position is refused."""
        owners = {param: optimizer for optimizer in self.optimizers
                  for group in optimizer.param_groups for param in group["params"]}

        def loaded_state(group: Mapping[str, Any], param: torch.Tensor, state: dict[str, Any]) -> dict[str, Any]:
            owner = owners.get(param)
            return owner.loaded_state(group, param, state) if isinstance(owner, MemplanOptimizer) else state

        def restore_for(param: torch.Tensor):
            return keep_saved_dtype if isinstance(owners.get(param), MemplanOptimizer) else torch_policy

        def check_group(index: int, group: Mapping[str, Any], saved: Mapping[str, Any]) -> None:
            if saved.get(METHOD_KEY) != group[METHOD_KEY]:
                raise PlanError(f"state_dict's parameter group {index} is for {saved.get(METHOD_KEY)!r}, this "
                                f"optimizer's for {group[METHOD_KEY]!r}: it was saved from another plan")

        load_state_dict(self, with_param_states(self, state_dict, loaded_state), restore_for, check_group)


__all__ = ["METHOD_KEY", "PlannedOptimizer", "from_plan"]
