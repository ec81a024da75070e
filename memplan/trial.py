"""``memplan trial``: measured quality on the user's own model.

A trial trains short matched runs (:mod:`memplan.training`: the same initial weights and the same
batches per seed) and puts every method on one scale: 1 = Adam, 0 = SGD without momentum, each
at its best learning rate; or, where SGD trained about as well as Adam and that scale has no unit,
1 = Adam and 1 - x a loss x times above Adam's (:data:`memplan.priors.QUALITY_SCALES`). It runs,
within a budget of steps, seeds and wall time:

1. **uniform sweeps**: every method everywhere, at a few learning rates around a start (Adam's
   best times the method's ratio in the priors), widened while the best rate is at an edge;
   further seeds rerun the best rate, so each quality has a seed spread;
2. **per-role probes**: Adam everywhere except one role (:mod:`memplan.roles`) under a compressed
   method, at the two methods' best rates, so that the sensitivity of embeddings, the output head,
   vectors and hidden matrices is measured, not guessed;
3. with a plan, the plan itself (``from_plan`` with an Adam-equivalent learning rate, swept)
   beside every uniform method that fits its budget.

:func:`priors_document` turns the result into a ``--priors`` file for ``memplan plan``.
"""

from __future__ import annotations

import dataclasses
import math
import statistics
import time
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path
from typing import Any, Callable, Sequence

import pandas as pd
import torch

from memplan.errors import MemplanError, SourceError
from memplan.methods import ADAM_LR, REFERENCE_FAMILY, build, get_method, param_state, parse_spec
from memplan.plan import Plan
from memplan.priors import LOSS_SCALE, PRIORS_FORMAT, QUALITY_SCALES, SGD_SCALE, Priors, load_priors
from memplan.profile import ModelProfile
from memplan.roles import ROLES
from memplan.training import RunResult, Schedule, Workload, train

SGD_REFERENCE = "sgd"
"""The quality scale's zero: SGD without momentum."""

TRIAL_METHODS = ("adam", "sgd", "sgd:momentum=0.9", "smmf", "smmf:beta1=none", "adafactor", "adafactor:beta1=0.9", "came",
                 "sm3", "sm3:momentum=0", "adagrad", "et1", "et2", "et3", "et_inf", "adamw8bit", "adamw4bit")
"""What a trial measures by default (methods whose extra is not installed are left out with a note)."""

COMPRESSED_SHARE = 0.5
"""A method is compressed (a probe candidate) when its state is at most this share of Adam's."""


@dataclass(frozen=True)
class TrialSettings:
    """How much a trial trains and how: steps and schedule, seeds, the learning-rate grid, probes
    and a wall-time limit (None: none)."""

    schedule: Schedule
    seeds: int = 1
    sweep_seeds: int = 1
    """Seeds each swept rate trains on, the first of ``seeds``: a rate is chosen by its mean loss
    over them (on a noisy model one seed's luck picks the rate otherwise)."""
    lr_factors: tuple[float, ...] = (1 / 3, 1.0, 3.0)
    widen: int = 4
    refine: bool = True
    probes: int = 2
    probe_methods: tuple[str, ...] | None = None
    time_limit: float | None = None
    device: str = "cpu"
    jobs: int = 1

    def __post_init__(self) -> None:
        if self.seeds < 1:
            raise SourceError(f"--seeds must be at least 1, got {self.seeds}")
        if not 1 <= self.sweep_seeds <= self.seeds:
            raise SourceError(f"--sweep-seeds must be from 1 to --seeds ({self.seeds}), got {self.sweep_seeds}")
        if not self.lr_factors or any(not factor > 0 for factor in self.lr_factors):
            raise SourceError("--lr-factors must be positive numbers")
        if self.probes < 0:
            raise SourceError(f"--probes must be >= 0, got {self.probes}")
        if self.widen < 0:
            raise SourceError(f"--widen must be >= 0, got {self.widen}")
        if self.jobs < 1:
            raise SourceError(f"--jobs must be at least 1, got {self.jobs}")
        if self.jobs > 1 and self.device != "cpu":
            raise SourceError("--jobs above 1 trains in several processes on the CPU: give --device cpu")


@dataclass(frozen=True)
class Arm:
    """One thing a trial trains: a method everywhere (``uniform``), Adam except ``role`` under
    ``spec`` (``probe``), or a plan (``plan``). Probes and plans take an Adam-equivalent rate."""

    label: str
    kind: str
    spec: str | None = None
    role: str | None = None
    plan: Plan | None = None


@dataclass
class TrialResult:
    """Every run, and the tables built from them."""

    source: str
    settings: TrialSettings
    profile: ModelProfile
    runs: list[dict[str, Any]] = field(default_factory=list)
    best_lr: dict[str, float] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    complete: bool = True

    def runs_frame(self) -> pd.DataFrame:
        """One row per run: arm, kind, spec, role, seed, lr, loss, diverged, steps, seconds, state bytes."""
        return pd.DataFrame(self.runs, columns=["arm", "kind", "spec", "role", "seed", "lr", "loss", "diverged",
                                                "steps_run", "seconds", "state_bytes"])

    def best_runs(self, label: str) -> dict[int, float]:
        """Per seed, the loss of ``label`` at its best learning rate (empty when never trained)."""
        lr = self.best_lr.get(label)
        return {run["seed"]: run["loss"] for run in self.runs if run["arm"] == label and run["lr"] == lr}

    def quality(self, label: str, scale: str | None = None) -> tuple[float, float | None]:
        """Mean quality of ``label`` on ``scale`` (default :meth:`scale`) over the seeds trained with
        the references, and its standard error (None from one seed). NaN when the references are
        missing or tie."""
        values = list(self.seed_qualities(label, scale).values())
        if not values:
            return math.nan, None
        mean = statistics.fmean(values) if all(math.isfinite(v) for v in values) else -math.inf
        spread = statistics.stdev(values) / math.sqrt(len(values)) if len(values) > 1 and math.isfinite(mean) else None
        return mean, spread

    def seed_qualities(self, label: str, scale: str | None = None) -> dict[int, float]:
        """Per seed trained with the references, the quality of ``label`` on ``scale`` (default
        :meth:`scale`; -inf where the run diverged)."""
        values = {}
        scale = scale or self.scale()
        adam, sgd, own = self.best_runs(REFERENCE_FAMILY), self.best_runs(SGD_REFERENCE), self.best_runs(label)
        for seed, loss in own.items():
            if seed not in adam or not math.isfinite(adam[seed]):
                continue
            # quality = (zero - loss) / unit: the loss that scores 0, and how far below it Adam is
            if scale == LOSS_SCALE:
                zero, unit = 2 * adam[seed], adam[seed]
            elif seed in sgd and math.isfinite(sgd[seed]):
                zero, unit = sgd[seed], sgd[seed] - adam[seed]
            else:
                continue
            if unit != 0:
                values[seed] = (zero - loss) / unit if math.isfinite(loss) else -math.inf
        return values

    def scale_unit(self) -> tuple[float, float | None]:
        """The quality scale's unit, L_SGD - L_Adam at their best rates (mean over the seeds both
        trained), and its standard error (None from one seed); NaN when either is missing."""
        adam, sgd = self.best_runs(REFERENCE_FAMILY), self.best_runs(SGD_REFERENCE)
        gaps = [sgd[seed] - adam[seed] for seed in adam if seed in sgd and math.isfinite(sgd[seed] - adam[seed])]
        if not gaps:
            return math.nan, None
        return statistics.fmean(gaps), statistics.stdev(gaps) / math.sqrt(len(gaps)) if len(gaps) > 1 else None

    def scale_inverted(self) -> bool:
        """Whether SGD trained as well as Adam or better: the scale then runs backwards, and priors
        written from it would steer a plan the wrong way (False when the unit was not measured)."""
        unit, _ = self.scale_unit()
        return math.isfinite(unit) and unit <= 0

    def scale_note(self, least_z: float = 3.0) -> str | None:
        """A warning when the scale's unit is not positive, or within ``least_z`` standard errors of
        zero: qualities then divide by noise (or run backwards) and rank nothing; None when it holds."""
        unit, error = self.scale_unit()
        if not math.isfinite(unit):
            return None
        if self.scale_inverted():
            return (f"SGD trained as well as Adam or better (L_SGD - L_Adam = {unit:.4g}): the quality scale has "
                    f"no unit here and its qualities rank nothing; train longer (--steps) or on a harder task")
        if error is not None and unit < least_z * error:
            return (f"Adam beat SGD by {unit:.4g} ± {error:.2g} only (under {least_z:g} standard errors): the "
                    f"qualities are mostly seed noise; train longer (--steps) or with more --seeds")
        return None

    def scale_holds(self) -> bool:
        """Whether the quality scale has a unit above seed noise (no :meth:`scale_note`), so that
        the qualities rank the methods and priors written from them can steer a plan."""
        unit, _ = self.scale_unit()
        return math.isfinite(unit) and self.scale_note() is None

    def scale(self) -> str:
        """The scale the qualities are put on: ``adam_sgd`` where it holds, else ``adam_loss`` (Adam's loss
        as the unit: where SGD trains about as well as Adam, the methods' losses still differ, and
        that scale ranks them as their losses do). ``adam_sgd`` when Adam's loss is not positive."""
        adam = self.best_runs(REFERENCE_FAMILY)
        if self.scale_holds() or not adam or not all(math.isfinite(loss) and loss > 0 for loss in adam.values()):
            return SGD_SCALE
        return LOSS_SCALE

    def ranks_methods(self) -> bool:
        """Whether the qualities rank the methods, so that a priors file written from them steers a
        plan the right way: on Adam's loss, or on the SGD scale with SGD behind Adam."""
        unit, _ = self.scale_unit()
        return self.scale() == LOSS_SCALE or (math.isfinite(unit) and unit > 0)

    def table(self, scale: str | None = None) -> pd.DataFrame:
        """Per uniform method and plan: state bytes, best lr, its ratio to Adam's, loss (mean, std over
        seeds), quality on ``scale`` (default :meth:`scale`) and its standard error, seeds."""
        rows = []
        adam_lr = self.best_lr.get(REFERENCE_FAMILY)
        for label in dict.fromkeys(run["arm"] for run in self.runs if run["kind"] in ("uniform", "plan")):
            losses = list(self.best_runs(label).values())
            kind = next(run["kind"] for run in self.runs if run["arm"] == label)
            quality, spread = self.quality(label, scale)
            lr = self.best_lr.get(label)
            rows.append({
                "method": label, "kind": kind, "state_bytes": self._state_bytes(label), "best_lr": lr,
                "lr_ratio": lr / adam_lr if lr and adam_lr and kind == "uniform" else None,
                "loss": statistics.fmean(losses) if losses else math.nan,
                "loss_std": statistics.stdev(losses) if len(losses) > 1 and all(map(math.isfinite, losses)) else None,
                "quality": quality, "quality_se": spread, "seeds": len(losses),
            })
        return pd.DataFrame(rows, columns=["method", "kind", "state_bytes", "best_lr", "lr_ratio", "loss", "loss_std",
                                           "quality", "quality_se", "seeds"])

    def probe_table(self, scale: str | None = None) -> pd.DataFrame:
        """Per probe (method, role): the role's share of the elements, the probe's quality (Adam
        elsewhere) and the role's quality as if the whole model were that role, on ``scale``, and
        the probe's arm (its runs' label)."""
        shares = role_shares(self.profile)
        rows = []
        for label in dict.fromkeys(run["arm"] for run in self.runs if run["kind"] == "probe"):
            first = next(run for run in self.runs if run["arm"] == label)
            quality, spread = self.quality(label, scale)
            share = shares[first["role"]]
            rows.append({"method": first["spec"], "role": first["role"], "share": share, "probe_quality": quality,
                         "role_quality": 1.0 - (1.0 - quality) / share if math.isfinite(quality) else quality,
                         "role_quality_se": None if spread is None else spread / share, "arm": label})
        return pd.DataFrame(rows, columns=["method", "role", "share", "probe_quality", "role_quality",
                                           "role_quality_se", "arm"])

    def _state_bytes(self, label: str) -> int | None:
        sizes = [run["state_bytes"] for run in self.runs if run["arm"] == label and run["state_bytes"] is not None]
        return sizes[0] if sizes else None


def role_shares(profile: ModelProfile) -> dict[str, float]:
    """Each role's share of the trainable elements (roles without parameters are absent)."""
    total = sum(param.numel for param in profile.trainable_params) or 1
    shares: dict[str, float] = {}
    for param in profile.trainable_params:
        shares[param.role] = shares.get(param.role, 0.0) + param.numel / total
    return {role: share for role, share in shares.items() if share > 0}


def uniform_state_bytes(profile: ModelProfile, spec: str) -> int:
    """Predicted state bytes of ``spec`` on every trainable parameter."""
    return sum(param_state(spec, param.shape, param.dtype).state_bytes for param in profile.trainable_params)


def refined_rate(tried: dict[float, float], least_move: float = 0.125) -> float | None:
    """The learning rate at the vertex of the parabola through the best rate tried and its two
    neighbours, in log-rate, when the best is inside the sweep; None when it is at an edge, a
    neighbour diverged, or the vertex lies within ``least_move`` of a grid step from the best.

    A sweep's grid (a factor of 3 by default) can miss a method's best rate by a factor of
    about 1.7, and that costs loss in proportion to the curvature: one run at the vertex, kept
    only if it wins, tunes every method about as finely and so ranks them on their method,
    not on where the grid happened to fall. The vertex stays between the two neighbours."""
    rates = sorted(tried)
    best = min(rates, key=lambda lr: (tried[lr], lr))
    position = rates.index(best)
    if position in (0, len(rates) - 1):
        return None
    left, right = rates[position - 1], rates[position + 1]
    if not (math.isfinite(tried[left]) and math.isfinite(tried[right])):
        return None
    x0, x1, x2 = math.log(left), math.log(best), math.log(right)
    y0, y1, y2 = tried[left], tried[best], tried[right]
    # vertex of the parabola through three points (x, y), in the numerically stable form
    numerator = (x1 - x0) ** 2 * (y1 - y2) - (x1 - x2) ** 2 * (y1 - y0)
    denominator = (x1 - x0) * (y1 - y2) - (x1 - x2) * (y1 - y0)
    if not denominator < 0:  # not convex (a tie with a neighbour): no interior minimum to find
        return None
    vertex = x1 - 0.5 * numerator / denominator
    # keep it between the neighbours, half way at most, where the parabola is trustworthy
    vertex = min(max(vertex, (x0 + x1) / 2), (x1 + x2) / 2)
    step = min(x1 - x0, x2 - x1)
    if abs(vertex - x1) < least_move * step:
        return None
    return math.exp(vertex)


class _OutOfTime(Exception):
    """The trial's time limit is spent."""


class Trial:
    """Runs a trial (see the module docstring); ``progress(done, label)`` is called after each run."""

    def __init__(self, path: Path, entry: str | None, methods: Sequence[str], settings: TrialSettings,
                 priors: Priors | None = None, plan: Plan | None = None,
                 progress: Callable[[int, str], None] | None = None,
                 worker_setup: Callable[[], None] | None = None) -> None:
        from memplan.loaders.module import profile_from_module

        self.path, self.entry, self.settings = path, entry, settings
        self.priors = priors or load_priors()
        self.plan = plan
        self.progress = progress or (lambda done, label: None)
        self.worker_setup = worker_setup  # run first in each worker process (a module-level function)
        self.workloads: dict[int, Workload] = {0: Workload.load(path, entry, settings.device, seed=0)}
        profile = profile_from_module(self.workloads[0].model, name=entry or path.stem, source=str(path))
        if plan is not None:
            plan.check_model(profile)
        self.result = TrialResult(source=str(path), settings=settings, profile=profile)
        self.methods = self._available([REFERENCE_FAMILY, SGD_REFERENCE, *methods])
        self.started = time.monotonic()  # system-wide: worker processes share the time limit
        self.pool: Any = None

    def run(self) -> TrialResult:
        """Train every arm (stopping cleanly at the time limit) and return the result."""
        try:
            return self._run_arms()
        finally:
            if self.pool is not None:
                self.pool.shutdown(cancel_futures=True)
                self.pool = None

    def _run_arms(self) -> TrialResult:
        try:
            self._uniform()
            weak = self.result.scale_note()
            if weak is not None:
                self.result.notes.append(weak)
            if self.result.scale() == LOSS_SCALE:
                self.result.notes.append(f"qualities are on Adam's loss instead ({QUALITY_SCALES[LOSS_SCALE]}), "
                                         f"and so is the priors file")
            if self.plan is not None:
                self._plan_arm()
            else:
                self._probes()
        except _OutOfTime:
            self.result.complete = False
            self.result.notes.append(f"stopped at the time limit ({self.settings.time_limit:g} s): "
                                     f"{len(self.result.runs)} runs finished")
        return self.result

    # -- what is trained ---------------------------------------------------------------------

    def _available(self, methods: Sequence[str]) -> list[str]:
        """``methods`` as canonical specs, without those whose extra is missing (with a note)."""
        from importlib.util import find_spec

        kept = []
        for text in dict.fromkeys(str(parse_spec(text)) for text in methods):
            method = get_method(parse_spec(text).name)
            module = method.optimizer_reference(method.resolve(parse_spec(text))).partition(":")[0]
            if find_spec(module.partition(".")[0]) is None:
                self.result.notes.append(f"{text} left out: it needs {module} (pip install 'memplan[{method.extra}]')")
                continue
            kept.append(text)
        return kept

    def _uniform(self) -> None:
        adam = Arm(REFERENCE_FAMILY, "uniform", REFERENCE_FAMILY)
        start = self.priors.adam_lr or ADAM_LR
        self._sweep_and_seed(adam, start)
        adam_lr = self.result.best_lr.get(REFERENCE_FAMILY)
        if adam_lr is None:
            raise SourceError(f"{self.path}: Adam diverged at every learning rate tried: check loss(model, batch)")
        budget = self.plan.budget_bytes if self.plan is not None else None
        sweeps = []
        for spec in self.methods[1:]:
            if budget is not None and spec != SGD_REFERENCE and uniform_state_bytes(self.result.profile, spec) > budget:
                continue
            method = get_method(parse_spec(spec).name)
            ratio = method.learning_rate_ratio(self.priors, method.resolve(parse_spec(spec)))
            sweeps.append((Arm(spec, "uniform", spec), adam_lr * ratio))
        self._in_jobs(SWEEP, sweeps)

    def _probes(self) -> None:
        probes = self.settings.probe_methods
        if probes is None:
            probes = self._probe_candidates()[:self.settings.probes]
        adam_lr = self.result.best_lr[REFERENCE_FAMILY]
        shares = role_shares(self.result.profile)
        roles = {param.name: param.role for param in self.result.profile.trainable_params}
        for spec in (str(parse_spec(text)) for text in probes):
            if spec not in self.result.best_lr:
                method = get_method(parse_spec(spec).name)
                self._sweep_and_seed(Arm(spec, "uniform", spec),
                                     adam_lr * method.learning_rate_ratio(self.priors, method.resolve(parse_spec(spec))))
            if spec not in self.result.best_lr:
                continue
            ratios = {REFERENCE_FAMILY: 1.0, spec: self.result.best_lr[spec] / adam_lr}
            arms = []
            for role in (role for role in ROLES if role in shares):
                plan = _assigned(self.result.profile, lambda name: spec if roles[name] == role else REFERENCE_FAMILY,
                                 adam_lr, ratios, self.priors)
                arms.append((Arm(f"{spec} on {role}", "probe", spec, role, plan), adam_lr))
            self._in_jobs(EVERY_SEED, arms)

    def _probe_candidates(self) -> list[str]:
        """Compressed methods measured so far, best quality first."""
        adam_bytes = uniform_state_bytes(self.result.profile, REFERENCE_FAMILY)
        scored = []
        for spec in self.result.best_lr:
            if spec in (REFERENCE_FAMILY, SGD_REFERENCE):
                continue
            quality, _ = self.result.quality(spec)
            if uniform_state_bytes(self.result.profile, spec) <= COMPRESSED_SHARE * adam_bytes and math.isfinite(quality):
                scored.append((quality, spec))
        return [spec for _, spec in sorted(scored, reverse=True)]

    def _plan_arm(self) -> None:
        self.add_plan(self.plan, "plan")

    def add_plan(self, plan: Plan, label: str) -> None:
        """Train ``plan`` as the arm ``label``: its Adam-equivalent learning rate swept around Adam's
        best, the best rate on every seed (after :meth:`run`, which measured Adam)."""
        plan.check_model(self.result.profile)
        self._sweep_and_seed(Arm(label, "plan", plan=plan), self.result.best_lr[REFERENCE_FAMILY])

    # -- sweeps and runs -----------------------------------------------------------------------

    def _sweep_and_seed(self, arm: Arm, start: float) -> None:
        """Sweep ``arm``'s learning rate on the first ``sweep_seeds`` seeds (widening past an edge
        that wins), then train the best rate on the other seeds."""
        tried: dict[float, float] = {}
        factors = sorted(self.settings.lr_factors)
        for factor in factors:
            tried[start * factor] = self._swept(arm, start * factor)
        step = factors[-1] / factors[-2] if len(factors) > 1 else 3.0
        for _ in range(self.settings.widen):
            best = min(tried, key=lambda lr: (tried[lr], lr))
            if not math.isfinite(tried[best]):
                lower = min(tried) / step  # everything diverged: only smaller rates can help
            elif best == max(tried):
                lower = best * step
            elif best == min(tried):
                lower = best / step
            else:
                break
            tried[lower] = self._swept(arm, lower)
        best = min(tried, key=lambda lr: (tried[lr], lr))
        if not math.isfinite(tried[best]):
            self.result.notes.append(f"{arm.label} diverged at every learning rate tried")
            return
        between = refined_rate(tried) if self.settings.refine else None
        if between is not None:
            tried[between] = self._swept(arm, between)
            best = min(tried, key=lambda lr: (tried[lr], lr))
        if len(tried) > 1 and best in (min(tried), max(tried)):
            # its loss, and so its quality, may be better at a rate not tried
            self.result.notes.append(f"{arm.label}: the best learning rate, {best:.3g}, is the "
                                     f"{'largest' if best == max(tried) else 'smallest'} of {len(tried)} tried; "
                                     f"its quality may be understated (widen the sweep: --widen, --lr-factors)")
        self.result.best_lr[arm.label] = best
        for seed in range(self.settings.sweep_seeds, self.settings.seeds):
            self._run(arm, best, seed)

    def _swept(self, arm: Arm, lr: float) -> float:
        """``arm``'s mean loss at ``lr`` over the sweep's seeds (infinite if any run diverged)."""
        losses = [self._run(arm, lr, seed).loss for seed in range(self.settings.sweep_seeds)]
        return statistics.fmean(losses) if all(map(math.isfinite, losses)) else math.inf

    def _every_seed(self, arm: Arm, lr: float) -> None:
        """Train ``arm`` at ``lr`` on every seed (a probe: its rates are the methods' best)."""
        for seed in range(self.settings.seeds):
            self._run(arm, lr, seed)
        self.result.best_lr[arm.label] = lr

    def _in_jobs(self, kind: str, arms: Sequence[tuple[Arm, float]]) -> None:
        """Train each (arm, rate) as ``kind`` (:data:`SWEEP` or :data:`EVERY_SEED`): here, one after
        the other, or in ``settings.jobs`` worker processes. Arms do not depend on each other and
        every run is deterministic given its seed, so the runs are the same either way, and they
        are recorded in the same order."""
        if self.settings.jobs == 1 or len(arms) < 2:
            for arm, lr in arms:
                (self._sweep_and_seed if kind == SWEEP else self._every_seed)(arm, lr)
            return
        threads = max(1, torch.get_num_threads() // self.settings.jobs)
        jobs = [_Job(self.path, self.entry, self.settings, self.priors, self.started, kind, arm, lr, threads)
                for arm, lr in arms]
        from concurrent.futures.process import BrokenProcessPool

        out_of_time = False
        try:
            for done in self._pool().map(_run_job, jobs):
                for run in done.runs:
                    self.result.runs.append(run)
                    self.progress(len(self.result.runs), f"{run['arm']} lr={run['lr']:.3g} seed={run['seed']}")
                self.result.best_lr.update(done.best_lr)
                self.result.notes.extend(done.notes)
                out_of_time = out_of_time or done.out_of_time
        except BrokenProcessPool:
            raise MemplanError(f"a trial worker process died (out of memory, or killed): rerun with --jobs 1 "
                               f"to train in this process") from None
        if out_of_time:
            raise _OutOfTime

    def _pool(self) -> Any:
        """The worker processes, started on first use (spawned: a forked copy of a process that has
        run torch's thread pool can hang) and kept for the trial."""
        if self.pool is None:
            import multiprocessing
            from concurrent.futures import ProcessPoolExecutor

            self.pool = ProcessPoolExecutor(self.settings.jobs, mp_context=multiprocessing.get_context("spawn"),
                                            initializer=self.worker_setup)
        return self.pool

    def _workload(self, seed: int) -> Workload:
        if seed not in self.workloads:
            self.workloads[seed] = Workload.load(self.path, self.entry, self.settings.device, seed=seed)
        return self.workloads[seed]

    def _run(self, arm: Arm, lr: float, seed: int) -> RunResult:
        limit = self.settings.time_limit
        if limit is not None and time.monotonic() - self.started > limit:
            raise _OutOfTime
        workload = self._workload(seed)
        result = train(workload, lambda model: self._optimizer(arm, model, lr), self.settings.schedule)
        self.result.runs.append({
            "arm": arm.label, "kind": arm.kind, "spec": arm.spec, "role": arm.role, "seed": seed, "lr": lr,
            "loss": result.loss, "diverged": result.diverged, "steps_run": result.steps_run,
            "seconds": round(result.seconds, 3), "state_bytes": result.state_bytes})
        self.progress(len(self.result.runs), f"{arm.label} lr={lr:.3g} seed={seed}")
        return result

    @staticmethod
    def _optimizer(arm: Arm, model: torch.nn.Module, lr: float) -> torch.optim.Optimizer:
        from memplan.optim.planned import from_plan

        if arm.plan is not None:
            return from_plan(model, arm.plan, lr=lr)
        named = [(name, param) for name, param in model.named_parameters() if param.requires_grad]
        return build(arm.spec, named, lr=lr)


SWEEP = "sweep"
"""A job that sweeps an arm's rate and trains the best on the other seeds."""
EVERY_SEED = "every seed"
"""A job that trains an arm at one rate on every seed."""


@dataclass(frozen=True)
class _Job:
    """One arm for a worker process: what it needs to rebuild the trial there, and the arm."""

    path: Path
    entry: str | None
    settings: TrialSettings
    priors: Priors
    started: float
    kind: str
    arm: Arm
    lr: float
    threads: int


@dataclass(frozen=True)
class _Done:
    """What a worker sends back: its runs, in order, the best rates it chose, its notes."""

    runs: list[dict[str, Any]]
    best_lr: dict[str, float]
    notes: list[str]
    out_of_time: bool


_WORKER_TRIALS: dict[tuple, "Trial"] = {}
"""A worker process's trials, by model file and settings, kept so that the model file is imported
and its workloads built once per process, not once per job."""


def _run_job(job: _Job) -> _Done:
    """Train one job in a worker process (see :meth:`Trial._in_jobs`)."""
    torch.set_num_threads(job.threads)
    key = (str(job.path), job.entry, job.settings)
    if key not in _WORKER_TRIALS:
        _WORKER_TRIALS[key] = Trial(job.path, job.entry, [], dataclasses.replace(job.settings, jobs=1), job.priors)
    trial = _WORKER_TRIALS[key]
    trial.started = job.started
    trial.result = TrialResult(source=trial.result.source, settings=trial.result.settings,
                               profile=trial.result.profile)
    out_of_time = False
    try:
        (trial._sweep_and_seed if job.kind == SWEEP else trial._every_seed)(job.arm, job.lr)
    except _OutOfTime:
        out_of_time = True
    return _Done(trial.result.runs, trial.result.best_lr, trial.result.notes, out_of_time)


def _assigned(profile: ModelProfile, specs: Callable[[str], str], adam_lr: float, ratios: dict[str, float],
              priors: Priors) -> Plan:
    from memplan.planner import assigned_plan

    return assigned_plan(profile, specs, learning_rate=adam_lr, lr_ratios=ratios, priors=priors)


def run_trial(path: Path, entry: str | None = None, methods: Sequence[str] = TRIAL_METHODS[2:],
              settings: TrialSettings | None = None, priors: Priors | None = None, plan: Plan | None = None,
              progress: Callable[[int, str], None] | None = None,
              worker_setup: Callable[[], None] | None = None) -> TrialResult:
    """Run a trial of the model file ``path`` (see the module docstring); Adam and SGD always run.
    ``worker_setup``, a module-level function, runs first in each worker process of
    ``settings.jobs`` (the command line silences library warnings there as in its own process)."""
    settings = settings or TrialSettings(schedule=Schedule(steps=600))
    return Trial(path, entry, methods, settings, priors, plan, progress, worker_setup).run()


# -- priors ----------------------------------------------------------------------------------------


def priors_document(result: TrialResult, evidence: str, scale: str | None = None) -> dict[str, Any]:
    """A ``--priors`` file from a trial: per prior key its quality on ``scale`` (default the
    result's :meth:`~TrialResult.scale`), standard error, learning-rate ratio and per-role
    qualities, and the extreme-tensoring curve points it measured."""
    if REFERENCE_FAMILY not in result.best_lr:
        raise MemplanError("no Adam run finished: the trial has no reference to write priors against")
    scale = scale or result.scale()
    table = result.table(scale).set_index("method")
    probes = result.probe_table(scale)
    seeds = lambda label: _seed_list(result.seed_qualities(label, scale), result.settings.seeds)
    speakers: dict[str, str] = {}  # prior key -> the spec whose measurement it records
    curve: list[dict[str, Any]] = []
    for spec in table.index:
        row = table.loc[spec]
        if row["kind"] != "uniform" or not math.isfinite(row["quality"]):
            continue
        parsed = parse_spec(spec)
        method = get_method(parsed.name)
        options = method.resolve(parsed)
        key = method.prior_key(options)
        depth = _mean_depth(result.profile, method, options)
        if depth is not None and all(point["depth"] != round(depth, 3) for point in curve):
            curve.append({"depth": round(depth, 3), **_measurement(row["quality"], row["quality_se"], seeds(spec)),
                          "evidence": f"{spec}: {evidence}"})
        # the first spec of a key speaks for it, unless a later one was probed
        if key not in speakers or (spec in set(probes["method"]) and speakers[key] not in set(probes["method"])):
            speakers[key] = spec
    methods = {key: _method_entry(spec, table.loc[spec], probes, evidence, seeds) for key, spec in speakers.items()}
    document: dict[str, Any] = {"memplan_priors": PRIORS_FORMAT, "scale": scale, "evidence": evidence,
                                "adam_lr": float(f"{result.best_lr[REFERENCE_FAMILY]:.3g}"), "methods": methods}
    if len({point["depth"] for point in curve}) >= 2:
        document["extreme_tensoring"] = sorted(curve, key=lambda point: point["depth"])
    return document


def _method_entry(spec: str, row: pd.Series, probes: pd.DataFrame, evidence: str,
                  seeds: Callable[[str], list[float]]) -> dict[str, Any]:
    """One ``methods`` entry of a priors file from a spec's row of the trial table and its probes
    (``seeds`` gives an arm's per-seed qualities)."""
    entry: dict[str, Any] = _measurement(row["quality"], row["quality_se"], seeds(spec))
    if row["lr_ratio"] is not None and not pd.isna(row["lr_ratio"]):
        entry["lr_ratio"] = float(f"{row['lr_ratio']:.3g}")
    roles = {}
    for _, probe in probes[probes["method"] == spec].iterrows():
        if math.isfinite(probe["role_quality"]):
            role_seeds = [1.0 - (1.0 - value) / probe["share"] for value in seeds(probe["arm"])]
            roles[probe["role"]] = _measurement(probe["role_quality"], probe["role_quality_se"], role_seeds)
    if roles:
        entry["roles"] = roles
    entry["evidence"] = f"{spec}: {evidence}"
    return entry


def _measurement(quality: float, error: float | None, per_seed: list[float]) -> dict[str, Any]:
    """A measured quality as a priors file writes it: rounded, with its standard error where known
    and its per-seed values where recorded."""
    measured: dict[str, Any] = {"quality": round(float(quality), 4)}
    if error is not None and not pd.isna(error):
        measured["std"] = round(float(error), 4)
    if per_seed:
        measured["seeds"] = [round(value, 4) for value in per_seed]
    return measured


def _seed_list(values: dict[int, float], seeds: int) -> list[float]:
    """Per-seed qualities as a list, seed 0 first, where every seed up to ``seeds`` has a finite
    one (a list that skipped a seed would pair the wrong runs); else empty."""
    if seeds < 2 or sorted(values) != list(range(seeds)) or not all(map(math.isfinite, values.values())):
        return []
    return [values[seed] for seed in range(seeds)]


def _mean_depth(profile: ModelProfile, method: Any, options: dict[str, Any]) -> float | None:
    """The element-weighted mean depth of ``method`` over the model's parameters, or None."""
    total, weighted = 0, 0.0
    for param in profile.trainable_params:
        depth = method.prior_depth(param.shape, options)
        if depth is None:
            return None
        total += param.numel
        weighted += depth * param.numel
    return weighted / total if total else None


def trial_evidence(source: str, settings: TrialSettings) -> str:
    """The line a priors entry cites: the command's settings and the date."""
    schedule = settings.schedule
    return (f"memplan trial {source} --steps {schedule.steps} --seeds {settings.seeds} --schedule {schedule.shape} "
            f"--warmup {schedule.warmup} --clip {schedule.clip} on {settings.device}, {date.today().isoformat()}")


# -- outputs ---------------------------------------------------------------------------------------


def write_csv(result: TrialResult, path: str | Path) -> Path:
    """Write every run as CSV (pandas), atomically."""
    from memplan.fileio import atomic_write_text

    return atomic_write_text(path, result.runs_frame().to_csv(index=False))


def write_priors(result: TrialResult, path: str | Path, evidence: str) -> Path:
    """Write the priors file the trial measured (see :func:`priors_document`), atomically."""
    import yaml

    from memplan.fileio import atomic_write_text

    header = "# memplan priors measured by memplan trial: use with memplan plan --priors THIS_FILE\n"
    return atomic_write_text(path, header + yaml.safe_dump(priors_document(result, evidence), sort_keys=False))


def write_plot(result: TrialResult, path: str | Path) -> Path:
    """Loss against state bytes: one point per method (and plan) with its seed spread as a bar, the
    Pareto front (the lowest loss at each state size or less) as a step line; state axis
    logarithmic in KiB/MiB/GiB. Written atomically."""
    from matplotlib.ticker import FuncFormatter

    from memplan.bench import load_pyplot
    from memplan.fileio import atomic_write
    from memplan.sizes import format_size

    pyplot = load_pyplot()
    table = result.table()
    table = table[table["loss"].apply(math.isfinite) & table["state_bytes"].notna()]
    figure, axes = pyplot.subplots(figsize=(7, 5))
    for row in table.itertuples(index=False):
        state = max(int(row.state_bytes), 1)  # a state of 0 bytes (sgd) sits on the axis floor
        spread = 0.0 if row.loss_std is None or pd.isna(row.loss_std) else row.loss_std
        axes.errorbar(state, row.loss, yerr=spread, fmt="s" if row.kind == "plan" else "o", capsize=3)
        axes.annotate(row.method, (state, row.loss), textcoords="offset points", xytext=(4, 4), fontsize=8)
    front_x, front_y, best = [], [], math.inf
    for row in table.sort_values(["state_bytes", "loss"]).itertuples(index=False):
        if row.loss < best:
            best = row.loss
            front_x.append(max(int(row.state_bytes), 1))
            front_y.append(best)
    if front_x:
        axes.step(front_x, front_y, where="post", alpha=0.4, label="best loss at this state or less")
        axes.legend(fontsize=8)
    axes.set_xscale("log")
    axes.xaxis.set_major_formatter(FuncFormatter(lambda value, _: format_size(int(round(value)))))
    schedule = result.settings.schedule
    axes.set_xlabel("optimizer state (measured)")
    axes.set_ylabel(f"loss after {schedule.steps} steps (mean over seeds, bar: std)")
    axes.set_title(f"Loss vs optimizer state: {Path(result.source).name}\n"
                   f"{result.settings.seeds} seed(s), each method at its best learning rate", fontsize=10)
    axes.grid(True, which="both", alpha=0.3)
    target = Path(path)
    try:
        return atomic_write(target, lambda name: figure.savefig(name, format=target.suffix.lstrip(".").lower() or "png",
                                                                dpi=120, bbox_inches="tight"))
    finally:
        pyplot.close(figure)
