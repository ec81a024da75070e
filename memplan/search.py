"""Candidate states per parameter, and pruning to the Pareto front.

For every trainable parameter, every allowed method contributes its candidate layouts (SMMF
matricizations, ET tensor indices, SM3 covers, the fixed layouts of the baselines), each with
its exact state bytes, its traffic per step and a predicted quality. Dominated candidates
(more bytes, no better value) are dropped. The choice across parameters is
:mod:`memplan.planner`'s.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterable, Sequence

from memplan.methods import ParamState, as_spec, get_method, param_state
from memplan.methods.spec import MethodSpec
from memplan.priors import Priors
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
            quality = (priors.calibrated_quality(state.momentum, measured) if measured is not None
                       else priors.quality(spec.name, options, param.shape, state.layout))
            found[key] = Candidate(
                spec=state.spec, layout=state.layout, state_bytes=state.state_bytes, bytes_moved=state.bytes_moved,
                momentum=state.momentum, state_dtype=state.state_dtype, quality=quality,
                seconds=seconds(state) if seconds else 0.0, distortion=measured,
                rank_bytes=sharding.budgeted_bytes(state.tensors, param.shape) if sharding else None)
    return list(found.values())


def prune(candidates: Sequence[Candidate], value: Callable[[Candidate], float]) -> list[Candidate]:
    """Drop every candidate that another beats: no more bytes and more value (ties: fewer bytes,
    then the earlier one). Returns the Pareto front, cheapest first (bytes as the budget counts them)."""
    ordered = sorted(candidates, key=lambda c: (c.charged_bytes, -value(c)))
    front: list[Candidate] = []
    for candidate in ordered:
        if not front or value(candidate) > value(front[-1]) + 1e-15:
            front.append(candidate)
    return front
