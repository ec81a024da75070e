"""Optimizers: memplan's own (SMMF, extreme tensoring, SM3), and any method's optimizer by spec.

:func:`build_optimizer` is :func:`memplan.methods.build`: memplan's own methods get memplan's
classes, the baselines torch.optim or pytorch_optimizer, each configured by the spec's options.
"""

from __future__ import annotations

from memplan.methods import build as build_optimizer
from memplan.optim.base import DEFAULT_CHUNK_BYTES, MemplanOptimizer
from memplan.optim.extreme import ETInfinity, ExtremeTensoring
from memplan.optim.planned import PlannedOptimizer, from_plan
from memplan.optim.sm3 import SM3
from memplan.optim.smmf import SMMF

__all__ = ["DEFAULT_CHUNK_BYTES", "ETInfinity", "ExtremeTensoring", "MemplanOptimizer", "PlannedOptimizer", "SM3",
           "SMMF", "build_optimizer", "from_plan"]
