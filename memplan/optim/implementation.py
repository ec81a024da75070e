"""Which implementation steps an optimizer: what ``memplan bench`` records beside each row.

memplan's optimizers report their groups' resolved ``impl`` (eager, compiled, triton; see
:mod:`memplan.kernels.select`); torch's report the kernel their flags select (fused, foreach,
forloop), as :func:`torch.optim.optimizer._default_to_fused_or_foreach` picks it when the flags are
left unset; another library's optimizer reports the library (``pytorch_optimizer``, ``torchao``); a
plan reports its inner optimizers'. Distinct values are joined with ``+``.
"""

from __future__ import annotations

from typing import Any, Mapping

import torch

from memplan.optim.base import MemplanOptimizer


def implementation_of(optimizer: torch.optim.Optimizer) -> str:
    """The implementations that step ``optimizer``'s groups, in group order, joined with ``+``."""
    inner = getattr(optimizer, "optimizers", None)   # a PlannedOptimizer
    if inner is not None:
        names = [implementation_of(part) for part in inner]
    elif isinstance(optimizer, MemplanOptimizer):
        names = [optimizer.implementation(group) for group in optimizer.param_groups]
    elif type(optimizer).__module__.split(".")[0] != "torch":
        names = [type(optimizer).__module__.split(".")[0]]   # another library's optimizer: its name
    else:
        names = [_torch_implementation(group) for group in optimizer.param_groups]
    return "+".join(dict.fromkeys(names))


def _torch_implementation(group: Mapping[str, Any]) -> str:
    """fused, foreach or forloop for a torch optimizer's group (forloop where it has no flags)."""
    if group.get("fused"):
        return "fused"
    foreach = group.get("foreach")
    if foreach is None and "foreach" in group:
        # torch's default: foreach when every parameter is on CUDA (or another foreach device)
        foreach = bool(group["params"]) and all(param.device.type == "cuda" for param in group["params"])
    return "foreach" if foreach else "forloop"


__all__ = ["implementation_of"]
