"""Candidate states per parameter, and pruning to the Pareto front.

For every trainable parameter, every allowed method contributes its candidate layouts (SMMF
matricizations, ET tensor indices, SM3 covers, the fixed layouts of the baselines), each with
its exact state bytes, its traffic per step and a predicted quality. Dominated candidates
(more bytes, no better value) are dropped. The choice across parameters is
:mod:`memplan.planner`'s.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass, replace
from typing import Callable, Iterable, Sequence

from memplan.errors import SpecError
from memplan.methods import ParamState, as_spec, get_method, param_state
from memplan.methods.base import Layout, Method, Options
from memplan.methods.shapes import Shape
from memplan.methods.spec import MethodSpec
from memplan.priors import BUNDLED_SCALE, Priors
from memplan.profile import ParamSpec
from memplan.sharding import Sharding


@dataclass(frozen=True)
class Candidate:
    """One way to keep one parameter's optimizer state."""

    spec: str
    layout: tuple[int, ...] | None
    state_bytes: int
    bytes_moved: int
    momentum: str
    state_dtype: str
    quality: float
    seconds: float = 0.0
    distortion: float | None = None
    quality_std: float = 0.0
    """The standard error of ``quality`` when it was measured over seeds (0: no spread known)."""
    quality_seeds: tuple[float, ...] = ()
    """The per-seed qualities behind ``quality``, seed 0 first, where the priors recorded them."""
    rank_bytes: int | None = None
    """Under sharding, the bytes the per-rank budget counts (see :meth:`memplan.sharding.Sharding.budgeted_bytes`)."""

    @property
    def charged_bytes(self) -> int:
        """The bytes the budget counts: :attr:`rank_bytes` under sharding, else :attr:`state_bytes`."""
        return self.state_bytes if self.rank_bytes is None else self.rank_bytes


def expand_methods(texts: Iterable[str]) -> list[MethodSpec]:
    """The method variants the planner tries for a ``--methods`` list.

    A bare family name stands for itself and its :attr:`~memplan.methods.Method.planner_variants`
    (``smmf`` with and without first moment, ``sm3`` with and without momentum, ...); a spec with
    options is taken as given.
    """
    variants: list[MethodSpec] = []
    for text in texts:
        spec = as_spec(text)
        extra = () if spec.options else get_method(spec.name).planner_variants
        variants.extend([spec, *(as_spec(item) for item in extra)])
    return list(dict.fromkeys(variants))


SCORING_SHAPE = (8, 8)
"""A shape every method has a layout for: asking its prior there tells whether the priors score it."""


def scored_methods(methods: Sequence[MethodSpec], priors: Priors) -> tuple[list[MethodSpec], list[MethodSpec]]:
    """``methods`` split into those ``priors`` give a quality and those they cannot: only a priors
    file on another scale than the bundled one leaves some out (it has no quality for a method its
    trial did not measure, and no curve without two ET presets)."""
    if priors.scale == BUNDLED_SCALE:
        return list(methods), []  # a method without a prior is the error candidates_for names
    scored, unscored = [], []
    for spec in methods:
        method = get_method(spec.name)
        options = method.resolve(spec)
        layout = method.default_layout(SCORING_SHAPE, options)
        (unscored if math.isnan(prior_or_nan(method, priors, options, SCORING_SHAPE, layout)) else scored).append(spec)
    return scored, unscored


def prior_or_nan(method: Method, priors: Priors, options: Options, shape: Shape, layout: Layout,
                 role: str | None = None) -> float:
    """``method``'s prior quality, or NaN where ``priors`` have none for it (a file on another scale
    than the bundled one that did not measure it; priors themselves are always finite)."""
    try:
        return method.prior_quality(priors, options, shape, layout, role)
    except SpecError:
        return math.nan


def candidates_for(param: ParamSpec, methods: Sequence[MethodSpec], priors: Priors,
                   seconds: Callable[[ParamState], float] | None = None,
                   distortion: Callable[[ParamState], float] | None = None,
                   sharding: Sharding | None = None) -> list[Candidate]:
    """Every candidate state of ``param`` under ``methods`` (not yet pruned).

    ``distortion`` (from measured gradient moments) replaces the data-free prior by a measured
    quality; ``sharding`` makes each candidate's budgeted bytes what one rank holds.
    """
    found: dict[tuple[str, tuple[int, ...] | None], Candidate] = {}
    for spec in methods:
        method = get_method(spec.name)
        options = method.resolve(spec)
        if sharding is not None and sharding.splits_parameters and method.sharded_alternative(options) is not None:
            continue  # its optimizer cannot step FSDP2's DTensors
        for layout in method.candidate_layouts(param.shape, options):
            state = param_state(spec, param.shape, param.dtype, layout)
            key = (state.spec, state.layout)
            if key in found:
                continue
            measured = distortion(state) if distortion else None
            if measured is not None:
                quality, spread, seeds = priors.calibrated_quality(state.momentum, measured), 0.0, ()
            else:
                quality = method.prior_quality(priors, options, param.shape, state.layout, param.role)
                spread = method.prior_std(priors, options, param.role)
                seeds = method.prior_seeds(priors, options, param.shape, state.layout, param.role)
            found[key] = Candidate(
                spec=state.spec, layout=state.layout, state_bytes=state.state_bytes, bytes_moved=state.bytes_moved,
                momentum=state.momentum, state_dtype=state.state_dtype, quality=quality,
                seconds=seconds(state) if seconds else 0.0, distortion=measured, quality_std=spread, quality_seeds=seeds,
                rank_bytes=sharding.budgeted_bytes(state.tensors, param.shape) if sharding else None)
    return list(found.values())


def within_noise(candidates: Sequence[Candidate], z: float = 1.0) -> list[Candidate]:
    """The candidates with each one's quality capped at that of any cheaper candidate, measured at
    least as precisely, that it does not beat by more than ``z`` standard errors of their
    difference: a method within noise of a cheaper one should lose to it, and after the cap
    :func:`prune` drops it (ties go to fewer bytes). A cheaper candidate whose own spread is the
    larger does not cap (its mean is what is in doubt), and candidates without a recorded spread
    compare as before. The difference's standard error is :func:`difference_se`."""
    ordered = sorted(candidates, key=lambda c: c.charged_bytes)
    settled: list[Candidate] = []
    for candidate in ordered:
        quality = candidate.quality
        for cheaper in settled:
            if cheaper.charged_bytes >= candidate.charged_bytes:
                continue
            noise = z * difference_se(candidate, cheaper)
            # a cheaper quality less precise than this one's cannot set it: its mean is the doubtful one
            if noise > 0 and cheaper.quality_std <= candidate.quality_std and candidate.quality - cheaper.quality <= noise:
                quality = min(quality, cheaper.quality)
        settled.append(candidate if quality == candidate.quality else replace(candidate, quality=quality))
    return settled


def difference_se(first: Candidate, second: Candidate) -> float:
    """The standard error of ``first.quality - second.quality``: from the per-seed differences where
    both were measured on the same seeds (their shared luck cancels), else from the two standard
    errors as if independent."""
    if len(first.quality_seeds) == len(second.quality_seeds) >= 2:
        differences = [a - b for a, b in zip(first.quality_seeds, second.quality_seeds)]
        return statistics.stdev(differences) / math.sqrt(len(differences))
    return math.hypot(first.quality_std, second.quality_std)


def prune(candidates: Sequence[Candidate], value: Callable[[Candidate], float]) -> list[Candidate]:
    """Drop every candidate that another beats: no more bytes and more value (ties: fewer bytes,
    then the earlier one). Returns the Pareto front, cheapest first (bytes as the budget counts them)."""
    ordered = sorted(candidates, key=lambda c: (c.charged_bytes, -value(c)))
    front: list[Candidate] = []
    for candidate in ordered:
        if not front or value(candidate) > value(front[-1]) + 1e-15:
            front.append(candidate)
    return front
