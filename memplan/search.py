"""The planner: candidate states per parameter, and one choice per parameter under a byte budget.

For every trainable parameter, every allowed method contributes its candidate layouts (SMMF
matricizations, ET tensor indices, SM3 covers, the fixed layouts of the baselines), each with
its exact state bytes, its traffic per step and a predicted quality. Dominated candidates
(more bytes, no better value) are dropped; parameters with the same shape, dtype and kind share
one candidate list. The choice across parameters is a multiple-choice knapsack: maximise the
sum of each parameter's share of the model's elements times its candidate's quality, minus an
optional time penalty, with the total state bytes within the budget.

The solver takes the LP relaxation's greedy path along each parameter's upper convex hull
(the classic MCKP greedy; it never exceeds the budget), fills what budget is left with the best
single upgrades, and, when the instance is small, finishes with an exact branch and bound under
the LP bound. It reports the LP bound, so the plan says how far from optimal it can be.
"""

from __future__ import annotations

import heapq
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Callable, Iterable, Mapping, Sequence

from memplan.errors import BudgetError, SpecError
from memplan.methods import PLAN_METHODS, ParamState, as_spec, get_method, param_state
from memplan.methods.spec import MethodSpec
from memplan.priors import Priors
from memplan.profile import ModelProfile, ParamSpec

if TYPE_CHECKING:
    from memplan.calibrate import Calibration
    from memplan.plan import Plan


OBJECTIVES = {"quality": 0.0, "balanced": 0.25, "speed": 1.0}
"""Named time weights: the penalty, in quality units, of a plan as slow as Adam's step."""

EXACT_SEARCH_GROUPS = 48
EXACT_SEARCH_NODES = 100_000
"""Branch and bound runs on instances of at most EXACT_SEARCH_GROUPS parameters and stops after
EXACT_SEARCH_NODES nodes; on larger ones the greedy solution stands, within one hull step of the
LP bound (a small fraction of the total when there are many parameters)."""


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


@dataclass
class Choice:
    """The planner's answer: one candidate per trainable parameter, and how good it is."""

    profile: ModelProfile
    budget_bytes: int
    picks: dict[str, Candidate]
    objective: float
    bound: float
    time_weight: float
    candidates_considered: int
    seconds_taken: float = 0.0
    shared_lists: int = 0
    notes: list[str] = field(default_factory=list)

    @property
    def state_bytes(self) -> int:
        """Total predicted state bytes of the chosen candidates."""
        return sum(candidate.state_bytes for candidate in self.picks.values())

    @property
    def quality(self) -> float:
        """Element-weighted mean quality of the chosen candidates."""
        params = {spec.name: spec for spec in self.profile.trainable_params}
        total = sum(spec.numel for spec in params.values()) or 1
        return sum(params[name].numel * candidate.quality for name, candidate in self.picks.items()) / total


def expand_methods(texts: Iterable[str]) -> list[MethodSpec]:
    """The method variants the planner tries for a ``--methods`` list.

    A bare family name stands for its useful variants (``smmf`` with and without first moment,
    ``sm3`` with and without momentum, ``adafactor`` with and without first moment, and for
    vectors ``smmf:vector_reshape=false``); a spec with options is taken as given.
    """
    variants: list[MethodSpec] = []
    for text in texts:
        spec = as_spec(text)
        if spec.options:
            variants.append(spec)
            continue
        extra = {"smmf": ["smmf:beta1=none", "smmf:vector_reshape=false", "smmf:vector_reshape=false,beta1=none"],
                 "sm3": ["sm3:momentum=0"], "adafactor": ["adafactor:beta1=0.9"]}.get(spec.name, [])
        variants.extend([spec, *(as_spec(item) for item in extra)])
    return list(dict.fromkeys(variants))


def candidates_for(param: ParamSpec, methods: Sequence[MethodSpec], priors: Priors,
                   seconds: Callable[[ParamState], float] | None = None,
                   distortion: Callable[[str, ParamState], float] | None = None) -> list[Candidate]:
    """Every candidate state of ``param`` under ``methods`` (not yet pruned).

    ``distortion`` (from calibration) replaces the data-free prior by a measured quality.
    """
    found: dict[tuple[str, tuple[int, ...] | None], Candidate] = {}
    for spec in methods:
        method = get_method(spec.name)
        options = method.resolve(spec)
        if spec.name == "smmf" and not options["vector_reshape"] and len(param.shape) > 1:
            continue  # only vectors differ; for matrices it repeats plain smmf
        for layout in method.candidate_layouts(param.shape, options):
            state = param_state(spec, param.shape, param.dtype, layout)
            key = (state.spec, state.layout)
            if key in found:
                continue
            measured = distortion(spec.name, state) if distortion else None
            quality = (priors.calibrated_quality(state.momentum, measured) if measured is not None
                       else priors.quality(spec.name, options, param.shape, state.layout))
            found[key] = Candidate(
                spec=state.spec, layout=state.layout, state_bytes=state.state_bytes, bytes_moved=state.bytes_moved,
                momentum=state.momentum, state_dtype=_state_dtype(state), quality=quality,
                seconds=seconds(state) if seconds else 0.0, distortion=measured)
    return list(found.values())


def _state_dtype(state: ParamState) -> str:
    dtypes = list(dict.fromkeys(tensor.dtype for tensor in state.tensors))
    return "+".join(dtypes) if dtypes else "none"


def prune(candidates: Sequence[Candidate], value: Callable[[Candidate], float]) -> list[Candidate]:
    """Drop every candidate that another beats: no more bytes and more value (ties: fewer bytes,
    then the earlier one). Returns the Pareto front, cheapest first."""
    ordered = sorted(candidates, key=lambda c: (c.state_bytes, -value(c)))
    front: list[Candidate] = []
    for candidate in ordered:
        if not front or value(candidate) > value(front[-1]) + 1e-15:
            front.append(candidate)
    return front


def plan_search(profile: ModelProfile, budget_bytes: int, methods: Sequence[str] = PLAN_METHODS,
                priors: Priors | None = None, time_weight: float = 0.0,
                seconds: Callable[[ParamState], float] | None = None,
                distortions: Mapping[str, Callable[[str, ParamState], float]] | None = None) -> Choice:
    """Choose one candidate per trainable parameter: best total value with state <= budget.

    ``seconds`` predicts a candidate's step time (needed when ``time_weight`` > 0);
    ``distortions`` maps parameter names to measured-distortion functions (calibration).
    Raises BudgetError when even the smallest state of every parameter exceeds the budget.
    """
    from memplan.priors import load_priors

    started = time.perf_counter()
    priors = priors or load_priors()
    variants = expand_methods(methods)
    params = profile.trainable_params
    if not params:
        return Choice(profile, budget_bytes, {}, 0.0, 0.0, time_weight, 0, time.perf_counter() - started)
    total_numel = sum(param.numel for param in params) or 1
    adam_seconds = sum(seconds(param_state("adam", p.shape, p.dtype)) for p in params) if seconds and time_weight else 0
    shared: dict[tuple, list[Candidate]] = {}
    groups: list[list[tuple[int, float, Candidate]]] = []
    considered = 0
    for param in params:
        weight = param.numel / total_numel

        def value(candidate: Candidate, weight: float = weight) -> float:
            penalty = time_weight * candidate.seconds / adam_seconds if adam_seconds else 0.0
            return weight * candidate.quality - penalty

        measured = distortions.get(param.name) if distortions else None
        key = (param.shape, param.dtype, param.kind)
        if measured is None and key in shared:
            front = shared[key]
        else:
            found = candidates_for(param, variants, priors, seconds, measured)
            if not found:
                raise SpecError(f"no candidate state for {param.name}: check --methods")
            considered += len(found)
            front = prune(found, value)
            if measured is None:
                shared[key] = front
        groups.append([(candidate.state_bytes, value(candidate), candidate) for candidate in front])
    picks, objective, bound = solve_mckp(groups, budget_bytes, [p.name for p in params])
    choice = Choice(profile, budget_bytes, {p.name: groups[i][picks[i]][2] for i, p in enumerate(params)},
                    objective, bound, time_weight, considered, time.perf_counter() - started,
                    shared_lists=len(shared))
    return choice


def solve_mckp(groups: Sequence[Sequence[tuple[int, float, object]]], budget: int,
               names: Sequence[str] | None = None) -> tuple[list[int], float, float]:
    """Multiple-choice knapsack: one option (bytes, value, payload) per group, bytes <= budget.

    Returns the chosen index per group, the total value and an upper bound on the optimum (the
    LP relaxation). Each group's options must be sorted by bytes with strictly rising value
    (see :func:`prune`).
    """
    names = list(names or [f"group {i}" for i in range(len(groups))])
    minimum = sum(group[0][0] for group in groups)
    if minimum > budget:
        heaviest = sorted(range(len(groups)), key=lambda i: -groups[i][0][0])[:5]
        listed = ", ".join(f"{names[i]} ({groups[i][0][0]:,} B)" for i in heaviest if groups[i][0][0])
        raise BudgetError(
            f"no plan fits {budget:,} bytes: the smallest achievable state is {minimum:,} bytes"
            + (f", dominated by {listed}" if listed else ""), minimum_bytes=minimum)
    hulls = [_upper_hull(group) for group in groups]
    picks, spent, bound = _greedy(groups, hulls, budget)
    _fill(groups, picks, budget - spent)
    value = sum(groups[i][picks[i]][1] for i in range(len(groups)))
    if bound - value > 1e-12 and len(groups) <= EXACT_SEARCH_GROUPS:
        picks, value = _branch_and_bound(groups, hulls, budget, picks, value)
    return picks, value, max(bound, value)


def _upper_hull(options: Sequence[tuple[int, float, object]]) -> list[int]:
    """Indices of the options on the upper-left convex hull of (bytes, value): the LP's path."""
    hull: list[int] = []
    for index, (cost, value, _) in enumerate(options):
        while len(hull) >= 2:
            (c1, v1, _), (c2, v2, _) = options[hull[-2]], options[hull[-1]]
            if (v2 - v1) * (cost - c1) <= (value - v1) * (c2 - c1):
                hull.pop()
            else:
                break
        hull.append(index)
    return hull


def _greedy(groups, hulls, budget: int) -> tuple[list[int], int, float]:
    """Walk every hull by falling efficiency while the budget allows; also return the LP bound."""
    picks = [hull[0] for hull in hulls]
    spent = sum(groups[i][picks[i]][0] for i in range(len(groups)))
    value = sum(groups[i][picks[i]][1] for i in range(len(groups)))
    position = [0] * len(groups)
    heap: list[tuple[float, int]] = []
    for i, hull in enumerate(hulls):
        if len(hull) > 1:
            heapq.heappush(heap, (-_efficiency(groups[i], hull[0], hull[1]), i))
    bound, bound_open = value, True
    while heap:
        _, i = heapq.heappop(heap)
        hull, step = hulls[i], position[i]
        before, after = groups[i][hull[step]], groups[i][hull[step + 1]]
        extra_bytes, extra_value = after[0] - before[0], after[1] - before[1]
        if spent + extra_bytes <= budget:
            spent += extra_bytes
            value += extra_value
            if bound_open:
                bound += extra_value
            picks[i] = hull[step + 1]
            position[i] = step + 1
            if step + 2 < len(hull):
                heapq.heappush(heap, (-_efficiency(groups[i], hull[step + 1], hull[step + 2]), i))
        elif bound_open:
            bound += extra_value * (budget - spent) / extra_bytes
            bound_open = False
    return picks, spent, bound


def _efficiency(group, low: int, high: int) -> float:
    extra_bytes = group[high][0] - group[low][0]
    return (group[high][1] - group[low][1]) / extra_bytes if extra_bytes else float("inf")


def _fill(groups, picks: list[int], left: int) -> None:
    """Spend what budget is left on the best single upgrades, any option, until none fits."""
    while True:
        best = None
        for i, group in enumerate(groups):
            current_bytes, current_value, _ = group[picks[i]]
            for j in range(picks[i] + 1, len(group)):
                extra_bytes, extra_value = group[j][0] - current_bytes, group[j][1] - current_value
                if extra_bytes <= left and extra_value > 0 and (best is None or extra_value > best[0]):
                    best = (extra_value, i, j, extra_bytes)
        if best is None:
            return
        _, i, j, extra_bytes = best
        picks[i] = j
        left -= extra_bytes


def _branch_and_bound(groups, hulls, budget: int, picks: list[int], value: float) -> tuple[list[int], float]:
    """Exact search under the LP bound, groups with the widest value range first; stops after
    :data:`EXACT_SEARCH_NODES` nodes and keeps the best solution found (never worse than the start)."""
    order = sorted(range(len(groups)), key=lambda i: -(groups[i][-1][1] - groups[i][0][1]))
    suffix_minimum = [0] * (len(order) + 1)
    for position in range(len(order) - 1, -1, -1):
        suffix_minimum[position] = suffix_minimum[position + 1] + groups[order[position]][0][0]
    steps = sorted(
        ((groups[i][h[k + 1]][1] - groups[i][h[k]][1]) / max(1, groups[i][h[k + 1]][0] - groups[i][h[k]][0]),
         groups[i][h[k + 1]][0] - groups[i][h[k]][0], groups[i][h[k + 1]][1] - groups[i][h[k]][1], rank)
        for rank, i in enumerate(order) for h in [hulls[i]] for k in range(len(h) - 1)
    )[::-1]
    base_value = [0.0] * (len(order) + 1)
    for position in range(len(order) - 1, -1, -1):
        base_value[position] = base_value[position + 1] + groups[order[position]][0][1]
    best = {"value": value, "picks": list(picks)}
    current = [0] * len(groups)
    nodes = 0

    def lp_bound(position: int, left: int) -> float:
        total, room = base_value[position], left - suffix_minimum[position]
        for _, extra_bytes, extra_value, rank in steps:
            if rank < position:
                continue
            if extra_bytes <= room:
                room -= extra_bytes
                total += extra_value
            else:
                return total + extra_value * room / extra_bytes
        return total

    def visit(position: int, left: int, gained: float) -> None:
        nonlocal nodes
        nodes += 1
        if nodes > EXACT_SEARCH_NODES:
            return
        if position == len(order):
            if gained > best["value"] + 1e-15:
                best["value"], best["picks"] = gained, list(current)
            return
        if gained + lp_bound(position, left) <= best["value"] + 1e-15:
            return
        group_index = order[position]
        group = groups[group_index]
        for option in range(len(group) - 1, -1, -1):
            cost, option_value, _ = group[option]
            if cost + suffix_minimum[position + 1] > left:
                continue
            current[group_index] = option
            visit(position + 1, left - cost, gained + option_value)

    visit(0, budget, 0.0)
    return best["picks"], best["value"]


GENERIC_BANDWIDTH_BYTES_PER_SECOND = 20e9
"""Memory bandwidth assumed for the time objective when no device profile is given."""


def traffic_seconds(bandwidth_bytes_per_second: float = GENERIC_BANDWIDTH_BYTES_PER_SECOND
                    ) -> Callable[[ParamState], float]:
    """A step-time estimate for the time objective: compulsory traffic over a bandwidth."""
    return lambda state: state.bytes_moved / bandwidth_bytes_per_second


def make_plan(profile: ModelProfile, budget_bytes: int, methods: Sequence[str] = PLAN_METHODS,
              priors_path: str | None = None, objective: str = "quality", time_weight: float | None = None,
              seconds: Callable[[ParamState], float] | None = None, device: str | None = None,
              calibration: "Calibration | None" = None) -> "Plan":
    """Plan ``profile`` under ``budget_bytes`` and return the :class:`memplan.plan.Plan`.

    ``objective`` names a time weight (:data:`OBJECTIVES`) unless ``time_weight`` is given;
    ``seconds`` estimates a candidate's step time (default: its compulsory traffic over a generic
    bandwidth; ``device`` names the device profile it comes from, and the plan records the total as
    ``step_ms``); ``calibration`` supplies measured second moments (``memplan plan --calibrate``).
    """
    from memplan.plan import Plan
    from memplan.priors import load_priors

    if objective not in OBJECTIVES and time_weight is None:
        raise SpecError(f"unknown objective {objective!r} (valid: {', '.join(OBJECTIVES)})")
    weight = OBJECTIVES.get(objective, 0.0) if time_weight is None else time_weight
    if weight < 0:
        raise SpecError(f"--time-weight must be >= 0, got {weight}")
    priors = load_priors(priors_path)
    distortions = calibration.distortions(profile) if calibration else None
    choice = plan_search(profile, budget_bytes, methods, priors, weight,
                         seconds or traffic_seconds(), distortions)
    return Plan.from_choice(choice, objective=objective if time_weight is None else "custom",
                            priors=str(priors_path or "bundled"),
                            calibration=calibration.summary() if calibration else None, device=device)
