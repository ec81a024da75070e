"""Optimizers: memplan's own (SMMF, extreme tensoring, SM3) and the third-party baselines, by spec."""

from memplan.optim.baselines import build_baseline

__all__ = ["build_baseline"]
