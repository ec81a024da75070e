"""The planner: one candidate per parameter under a byte budget, and the Plan that records it.

Every trainable parameter gets its pruned candidate list (:mod:`memplan.search`); parameters with
the same shape, dtype, kind and role share one list. The choice across parameters is a multiple-choice
knapsack (:mod:`memplan.mckp`): maximise the sum of each parameter's share of the model's
elements times its candidate's quality, minus an optional time penalty, with the total state
bytes within the budget.
"""

from __future__ import annotations

import time
import warnings
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Callable, Mapping, Sequence

from memplan import mckp
from memplan.errors import AssumptionWarning, BudgetError, SpecError, UsageError
from memplan.methods import ADAM_LR, PLAN_METHODS, REFERENCE_FAMILY, ParamState, get_method, param_state, parse_spec
from memplan.plan import Plan, PlanEntry, PlanPrediction
from memplan.priors import BUNDLED_SCALE, Priors, load_priors
from memplan.profile import ModelProfile
from memplan.search import Candidate, candidates_for, expand_methods, prior_or_nan, prune, scored_methods, within_noise
from memplan.sharding import Sharding, zero1_owners

if TYPE_CHECKING:
    from memplan.moments import GradientMoments

OBJECTIVES = {"quality": 0.0, "balanced": 0.25, "speed": 1.0}
"""Named time weights: the penalty, in quality units, of a plan as slow as Adam's step."""

GENERIC_BANDWIDTH_BYTES_PER_SECOND = 20e9
"""Memory bandwidth assumed for the time objective when no device profile is given."""


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
    priors: Priors | None = None
    """The priors the qualities came from (their learning-rate ratios go into the plan)."""

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


def plan_search(profile: ModelProfile, budget_bytes: int, methods: Sequence[str] = PLAN_METHODS,
                priors: Priors | None = None, time_weight: float = 0.0,
                seconds: Callable[[ParamState], float] | None = None,
                distortions: Mapping[str, Callable[[ParamState], float]] | None = None,
                sharding: Sharding | None = None) -> Choice:
    """Choose one candidate per trainable parameter: best total value with state <= budget.

    ``seconds`` predicts a candidate's step time (needed when ``time_weight`` > 0);
    ``distortions`` maps parameter names to measured-distortion functions (gradient moments).
    With ``sharding`` the budget is per rank: what rank 0 holds (the most any rank does) for
    fsdp2, hsdp and ddp; for zero1, which places each parameter's whole state on a rank chosen
    by the parameter's size, one knapsack per rank over the parameters it owns.
    Raises BudgetError when even the smallest state of every parameter exceeds the budget.
    """
    started = time.perf_counter()
    priors = priors or load_priors()
    variants, unscored = scored_methods(expand_methods(methods), priors)
    if unscored:
        if not variants:
            raise SpecError(f"the priors' {priors.scale} scale has a quality for none of the methods "
                            f"({', '.join(map(str, unscored))}): plan with --methods its trial measured")
        warnings.warn(AssumptionWarning(
            f"left out of the plan, with no quality on the priors' {priors.scale} scale (their trial did not "
            f"measure them): {', '.join(map(str, unscored))}"))
    params = profile.trainable_params
    if not params:
        return Choice(profile, budget_bytes, {}, 0.0, 0.0, time_weight, 0, time.perf_counter() - started,
                      priors=priors)
    total_numel = sum(param.numel for param in params) or 1
    reference_seconds = sum(seconds(param_state(REFERENCE_FAMILY, p.shape, p.dtype)) for p in params) \
        if seconds and time_weight else 0
    shared: dict[tuple, list[Candidate]] = {}
    groups: list[list[mckp.Option]] = []
    considered = 0
    for param in params:
        weight = param.numel / total_numel

        def value(candidate: Candidate, weight: float = weight) -> float:
            penalty = time_weight * candidate.seconds / reference_seconds if reference_seconds else 0.0
            return weight * candidate.quality - penalty

        measured = distortions.get(param.name) if distortions else None
        key = (param.shape, param.dtype, param.kind, param.role)  # a role may be scored apart from its kind
        if measured is None and key in shared:
            front = shared[key]
        else:
            found = candidates_for(param, variants, priors, seconds, measured, sharding)
            if not found:
                raise SpecError(f"no candidate state for {param.name}: check --methods")
            considered += len(found)
            front = prune(within_noise(found), value)
            if measured is None:
                shared[key] = front
        groups.append([mckp.Option(candidate.charged_bytes, value(candidate), candidate) for candidate in front])
    names = [param.name for param in params]
    if sharding is not None and sharding.kind == "zero1":
        # ZeRO-1 assigns parameters to ranks by size alone: one knapsack per rank, each within the budget
        owners = zero1_owners([param.shape for param in params], sharding.world_size)
        members = [[i for i, owner in enumerate(owners) if owner == rank] for rank in range(sharding.world_size)]
    else:
        members = [list(range(len(params)))]
    picks: dict[str, Candidate] = {}
    objective = bound = 0.0
    for indices in members:
        try:
            solution = mckp.solve([groups[i] for i in indices], budget_bytes)
        except mckp.Infeasible as error:
            raise _budget_error(error, [groups[i] for i in indices], [names[i] for i in indices]) from None
        picks.update({names[i]: groups[i][solution.picks[k]].payload for k, i in enumerate(indices)})
        objective += solution.value
        bound += solution.bound
    picks = {name: picks[name] for name in names}
    return Choice(profile, budget_bytes, picks, objective, bound, time_weight, considered,
                  time.perf_counter() - started, shared_lists=len(shared), priors=priors)


def _budget_error(error: mckp.Infeasible, groups: Sequence[Sequence[mckp.Option]], names: list[str]) -> BudgetError:
    """The infeasible budget in a user's terms: the smallest size, and the parameters behind it."""
    heaviest = sorted(range(len(groups)), key=lambda i: -groups[i][0].bytes)[:5]
    listed = ", ".join(f"{names[i]} ({groups[i][0].bytes:,} B)" for i in heaviest if groups[i][0].bytes)
    return BudgetError(f"no plan fits {error.budget:,} bytes: the smallest achievable state is {error.minimum:,} bytes"
                       + (f", dominated by {listed}" if listed else ""), minimum_bytes=error.minimum)


def traffic_seconds(bandwidth_bytes_per_second: float = GENERIC_BANDWIDTH_BYTES_PER_SECOND
                    ) -> Callable[[ParamState], float]:
    """A step-time estimate for the time objective: compulsory traffic over a bandwidth."""
    return lambda state: state.bytes_moved / bandwidth_bytes_per_second


def make_plan(profile: ModelProfile, budget_bytes: int, methods: Sequence[str] = PLAN_METHODS,
              priors_path: str | None = None, objective: str = "quality", time_weight: float | None = None,
              seconds: Callable[[ParamState], float] | None = None, device: str | None = None,
              moments: "GradientMoments | None" = None, sharding: Sharding | None = None) -> Plan:
    """Plan ``profile`` under ``budget_bytes`` and return the :class:`memplan.plan.Plan`.

    ``objective`` names a time weight (:data:`OBJECTIVES`) unless ``time_weight`` is given;
    ``seconds`` estimates a candidate's step time (default: its compulsory traffic over a generic
    bandwidth; ``device`` names the device profile it comes from, and the plan records the total as
    ``traffic_ms``); ``moments`` supplies measured second moments (``memplan plan --calibrate``).
    """
    if objective not in OBJECTIVES and time_weight is None:
        raise SpecError(f"unknown objective {objective!r} (valid: {', '.join(OBJECTIVES)})")
    weight = OBJECTIVES.get(objective, 0.0) if time_weight is None else time_weight
    if weight < 0:
        raise SpecError(f"--time-weight must be >= 0, got {weight}")
    priors = load_priors(priors_path)
    if moments is not None and priors.scale != BUNDLED_SCALE:
        # the calibrated constants score a distortion on the bundled scale: mixed with these, the
        # calibrated parameters' qualities would be compared with numbers on another scale
        raise UsageError(f"--calibrate scores on the {BUNDLED_SCALE} scale and {priors_path} is on the "
                         f"{priors.scale} scale: plan with one of them")
    distortions = moments.distortions(profile) if moments else None
    choice = plan_search(profile, budget_bytes, methods, priors, weight, seconds or traffic_seconds(), distortions,
                         sharding)
    plan = plan_from_choice(choice, objective=objective if time_weight is None else "custom",
                            priors=str(priors_path or "bundled"),
                            calibration=moments.summary() if moments else None, device=device, sharding=sharding)
    return plan


def learning_rate_ratios(specs: Sequence[str], priors: Priors) -> dict[str, float]:
    """Each spec's learning rate over Adam's (measured in ``priors``, else its method's default)."""
    ratios = {}
    for text in dict.fromkeys(specs):
        spec = parse_spec(text)
        method = get_method(spec.name)
        ratios[text] = method.learning_rate_ratio(priors, method.resolve(spec))
    return ratios


def plan_from_choice(choice: Choice, objective: str = "quality", priors: str = "bundled",
                     calibration: Mapping[str, object] | None = None, device: str | None = None,
                     sharding: Sharding | None = None) -> Plan:
    """The plan of a planner's choice, with default hyperparameters for every method it uses (and
    the sharding it was planned for)."""
    entries = []
    for spec in choice.profile.trainable_params:
        candidate = choice.picks[spec.name]
        entries.append(PlanEntry(
            name=spec.name, shape=spec.shape, dtype=spec.dtype, method=candidate.spec, layout=candidate.layout,
            momentum=candidate.momentum, state_dtype=candidate.state_dtype, state_bytes=candidate.state_bytes,
            quality=candidate.quality, distortion=candidate.distortion))
    methods = sorted({parse_spec(entry.method).name for entry in entries})
    priors_used = choice.priors or load_priors()
    seconds = sum(candidate.seconds for candidate in choice.picks.values())
    # compulsory traffic over the device's bandwidth: a floor; memplan bench predicts the full step
    timed = bool(seconds and device)
    predicted = PlanPrediction(
        state_bytes=sum(entry.state_bytes for entry in entries), quality=round(choice.quality, 6),
        objective=round(choice.objective, 6), objective_bound=round(choice.bound, 6),
        traffic_ms=round(seconds * 1e3, 3) if timed else None, device=device if timed else None)
    return Plan(
        model_name=choice.profile.name, model_source=choice.profile.source,
        fingerprint=choice.profile.fingerprint, budget_bytes=choice.budget_bytes, entries=tuple(entries),
        objective=objective, time_weight=choice.time_weight, priors=priors, quality_scale=priors_used.scale,
        hyperparameters={method: get_method(method).hyperparameter_defaults() for method in methods},
        learning_rate=priors_used.adam_lr or ADAM_LR,
        lr_ratios=learning_rate_ratios([entry.method for entry in entries], priors_used),
        predicted=predicted, calibration=dict(calibration) if calibration else None, sharding=sharding,
    )


def assigned_plan(profile: ModelProfile, specs: Callable[[str], str], learning_rate: float = ADAM_LR,
                  lr_ratios: Mapping[str, float] | None = None, priors: Priors | None = None) -> Plan:
    """A plan that gives each trainable parameter of ``profile`` the method spec ``specs(name)``, in
    its default layout, with no budget beyond its own bytes (``memplan trial``'s probes and uniform
    baselines). ``lr_ratios`` (by spec) replace the ratios ``priors`` give."""
    priors = priors or load_priors()
    picks = {}
    for param in profile.trainable_params:
        spec = parse_spec(specs(param.name))
        method = get_method(spec.name)
        options = method.resolve(spec)
        state = param_state(spec, param.shape, param.dtype)
        picks[param.name] = Candidate(
            spec=state.spec, layout=state.layout, state_bytes=state.state_bytes, bytes_moved=state.bytes_moved,
            momentum=state.momentum, state_dtype=state.state_dtype,
            quality=prior_or_nan(method, priors, options, param.shape, state.layout, param.role))
    choice = Choice(profile, sum(c.state_bytes for c in picks.values()), picks, 0.0, 0.0, 0.0, len(picks),
                    priors=priors)
    plan = plan_from_choice(choice, priors="assigned")
    ratios = {**plan.lr_ratios, **(lr_ratios or {})}
    return replace(plan, learning_rate=learning_rate, lr_ratios={spec: ratios[spec] for spec in plan.lr_ratios})
