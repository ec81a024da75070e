"""Loading an optimizer's state_dict the way torch does, with the state-tensor policy chosen per parameter.

torch's ``Optimizer.load_state_dict`` casts every floating-point state tensor to its parameter's
dtype, through ``Optimizer._process_value_according_to_param_policy`` called by class name (a
subclass cannot replace it). memplan keeps state in its byte model's dtypes (packed uint8 signs,
fp32 factors of bf16 parameters), so its optimizers load through :func:`load_state_dict` here: the
same steps as torch's (load pre-hooks, the group checks, the saved-id to parameter mapping,
``__setstate__``, load post-hooks), with a ``restore`` function per parameter deciding what each
saved state tensor becomes. Hyperparameters a saved group lacks (a checkpoint from before an
option existed) keep the optimizer's current values.
"""

from __future__ import annotations

from collections import defaultdict
from copy import deepcopy
from itertools import chain
from typing import Any, Callable, Mapping

import torch

Restore = Callable[[torch.Tensor, torch.Tensor, Any, list, Any], torch.Tensor]
"""``restore(param, saved_tensor, saved_param_id, saved_param_groups, state_key) -> tensor``."""

GroupCheck = Callable[[int, Mapping[str, Any], Mapping[str, Any]], None]
"""``check(index, current_group, saved_group)``: raise when a saved group cannot replace the current one."""


def keep_saved_dtype(param: torch.Tensor, value: torch.Tensor, param_id: Any, saved_groups: list,
                     key: Any) -> torch.Tensor:
    """memplan's policy: a copy of the saved tensor on the parameter's device, in the saved dtype."""
    return value.to(device=param.device, copy=True)


def torch_policy(param: torch.Tensor, value: torch.Tensor, param_id: Any, saved_groups: list,
                 key: Any) -> torch.Tensor:
    """torch.optim's policy: floating state in the parameter's dtype, step counters where torch keeps them."""
    return torch.optim.Optimizer._process_value_according_to_param_policy(param, value, param_id, saved_groups, key)


def load_state_dict(optimizer: torch.optim.Optimizer, state_dict: Mapping[str, Any],
                    restore_for: Callable[[torch.Tensor], Restore], check_group: GroupCheck | None = None) -> None:
    """Load ``state_dict`` into ``optimizer`` as ``torch.optim.Optimizer.load_state_dict`` does, except
    that ``restore_for(param)`` restores each saved state tensor and missing group keys keep their
    current values; ``check_group`` may refuse a saved group (after the pre-hooks ran)."""
    state_dict = dict(state_dict)
    for pre_hook in optimizer._optimizer_load_state_dict_pre_hooks.values():
        result = pre_hook(optimizer, state_dict)
        if result is not None:
            state_dict = result
    groups = optimizer.param_groups
    saved_groups = deepcopy(state_dict["param_groups"])
    if len(groups) != len(saved_groups):
        raise ValueError("loaded state dict has a different number of parameter groups")
    if any(len(group["params"]) != len(saved["params"]) for group, saved in zip(groups, saved_groups)):
        raise ValueError("loaded state dict contains a parameter group that doesn't match the size of "
                         "optimizer's group")
    if check_group is not None:
        for index, (group, saved) in enumerate(zip(groups, saved_groups)):
            check_group(index, group, saved)
    params_by_id = dict(zip(chain.from_iterable(saved["params"] for saved in saved_groups),
                            chain.from_iterable(group["params"] for group in groups)))
    state: defaultdict[Any, dict[Any, Any]] = defaultdict(dict)
    for param_id, value in state_dict["state"].items():
        param = params_by_id.get(param_id)
        if param is None:
            state[param_id] = value  # state not tied to a parameter is kept as it is, as torch does
        else:
            state[param] = _restored(value, param, param_id, state_dict["param_groups"], restore_for(param))
    param_groups = [_merged_group(group, saved) for group, saved in zip(groups, saved_groups)]
    optimizer.__setstate__({"state": state, "param_groups": param_groups})
    for post_hook in optimizer._optimizer_load_state_dict_post_hooks.values():
        post_hook(optimizer)


StateMap = Callable[[Mapping[str, Any], torch.Tensor, dict[str, Any]], dict[str, Any]]
"""``convert(group, param, state) -> state``: one parameter's state as saved or loaded."""


def with_param_states(optimizer: torch.optim.Optimizer, state_dict: Mapping[str, Any],
                      convert: StateMap) -> dict[str, Any]:
    """``state_dict`` (as ``optimizer.state_dict()`` returns it, or one to load) with each
    parameter's state replaced by ``convert(group, param, state)``, matching saved ids to the
    optimizer's parameters by position as loading does; unchanged where the groups do not match
    (loading then refuses it)."""
    groups = optimizer.param_groups
    saved_groups = state_dict.get("param_groups", [])
    if len(groups) != len(saved_groups) or any(len(group["params"]) != len(saved["params"])
                                               for group, saved in zip(groups, saved_groups)):
        return dict(state_dict)
    owners = {param_id: (group, param) for group, saved in zip(groups, saved_groups)
              for param_id, param in zip(saved["params"], group["params"])}
    state = {param_id: convert(*owners[param_id], value) if param_id in owners and isinstance(value, dict) else value
             for param_id, value in state_dict["state"].items()}
    return {**state_dict, "state": state}


def _merged_group(group: Mapping[str, Any], saved: dict[str, Any]) -> dict[str, Any]:
    """The saved group with the current parameters, and the current value of every key it lacks."""
    saved["params"] = group["params"]
    for key, value in group.items():
        saved.setdefault(key, value)
    return saved


def _restored(value: Any, param: torch.Tensor, param_id: Any, saved_groups: list, restore: Restore,
              key: Any = None) -> Any:
    """A copy of a saved state value: tensors through ``restore``, containers element by element."""
    if isinstance(value, torch.Tensor):
        return restore(param, value, param_id, saved_groups, key)
    if isinstance(value, dict):
        return {name: _restored(item, param, param_id, saved_groups, restore, name) for name, item in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_restored(item, param, param_id, saved_groups, restore) for item in value)
    return deepcopy(value)
