"""Optimizers: memplan's own (SMMF, extreme tensoring, SM3) and the third-party baselines, by spec."""

from __future__ import annotations

from typing import Any, Iterable

import torch

from memplan.methods import as_spec, get_method
from memplan.methods.spec import MethodSpec
from memplan.optim.baselines import build_baseline
from memplan.optim.base import DEFAULT_CHUNK_BYTES, MemplanOptimizer
from memplan.optim.extreme import ETInfinity, ExtremeTensoring
from memplan.optim.planned import PlannedOptimizer, from_plan
from memplan.optim.sm3 import SM3
from memplan.optim.smmf import SMMF


def build_optimizer(spec: str | MethodSpec, params: Iterable[Any], lr: float = 1e-3,
                    **overrides: Any) -> torch.optim.Optimizer:
    """The optimizer a method spec names (``smmf:sign_bits=8``, ``et2``, ``adam:impl=fused``, ...).

    memplan's own methods get memplan's classes with the spec's options; the baselines get
    torch.optim or pytorch_optimizer (see :func:`build_baseline`). ``overrides`` go to memplan's
    classes (e.g. ``chunk_bytes``).
    """
    parsed = as_spec(spec)
    method = get_method(parsed.name)
    options = method.resolve(parsed)
    if method.implementation != "memplan" or options.get("impl", "memplan") != "memplan":
        return build_baseline(parsed, params, lr=lr)
    options.pop("impl", None)
    if parsed.name == "smmf":
        return SMMF(params, lr=lr, **options, **overrides)
    if parsed.name == "sm3":
        return SM3(params, lr=lr, **options, **overrides)
    if parsed.name == "et_inf":
        return ETInfinity(params, lr=lr, **options, **overrides)
    preset = "et1" if parsed.name == "et" else parsed.name
    return ExtremeTensoring(params, lr=lr, index=preset, **options, **overrides)


__all__ = ["DEFAULT_CHUNK_BYTES", "ETInfinity", "ExtremeTensoring", "MemplanOptimizer", "PlannedOptimizer", "SM3",
           "SMMF", "build_baseline", "build_optimizer", "from_plan"]
