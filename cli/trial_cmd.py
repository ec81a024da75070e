"""``memplan trial MODEL.py``: train short matched runs on the user's model and measure each method's quality."""

from __future__ import annotations

import math
from fractions import Fraction
from pathlib import Path
from typing import Optional

import typer
from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
from rich.table import Table

from memplan.cli import output, options
from memplan.cli.options import EntryOpt, JsonOpt, methods_option
from memplan.errors import UsageError
from memplan.fileio import check_writable
from memplan.loaders import source_kind
from memplan.plan import Plan
from memplan.priors import QUALITY_SCALES, SGD_SCALE, load_priors
from memplan.sizes import format_size
from memplan.training import SCHEDULES, Schedule
from memplan.trial import (REFERENCE_FAMILY, TRIAL_METHODS, TrialResult, TrialSettings, run_trial, trial_evidence, write_csv, write_plot,
                           write_priors)

DEFAULT_TRIAL_DIR = Path(".memplan")
MethodsOpt = methods_option(TRIAL_METHODS[2:], "train (adam and sgd always run)")


def trial(
    source: str = typer.Argument(..., help="A model.py defining training_batch(step) and loss(model, batch)."),
    methods: MethodsOpt = None,
    steps: int = typer.Option(600, "--steps", help="Training steps per run (shorter runs rank methods by seed noise: see docs/trial.md)."),
    seeds: int = typer.Option(1, "--seeds", help="Seeds (initialisations and batch orders); >1 measures the spread."),
    sweep_seeds: int = typer.Option(1, "--sweep-seeds", help="Seeds each swept learning rate trains on (the first of "
                                                            "--seeds); a rate is chosen by their mean loss."),
    lr_factors: str = typer.Option("1/3,1,3", "--lr-factors",
                                   help="Learning-rate grid around each method's start (numbers or fractions such "
                                        "as 1/3), widened while an edge wins."),
    widen: int = typer.Option(4, "--widen", help="Extra rates a sweep may try past an edge that wins."),
    refine: bool = typer.Option(True, "--refine/--no-refine",
                                help="One more run per sweep, at the vertex of a parabola through the best rate and "
                                     "its neighbours (kept if it wins)."),
    schedule: str = typer.Option("cosine", "--schedule", help=f"{' | '.join(SCHEDULES)} after warm-up."),
    warmup: Optional[int] = typer.Option(None, "--warmup", help="Warm-up steps (default: 5% of --steps)."),
    clip: Optional[float] = typer.Option(1.0, "--clip", help="Clip the gradient's global norm (0: no clipping)."),
    probes: int = typer.Option(2, "--probes", help="Compressed methods probed per role (best measured first)."),
    probe: Optional[str] = typer.Option(None, "--probe", help="Probe these methods instead (comma-separated)."),
    plan_path: Optional[Path] = typer.Option(None, "--plan", help="Verify a plan: train it beside Adam and every "
                                                                  "uniform method that fits its budget."),
    priors: Optional[Path] = typer.Option(None, "--priors", help="Priors whose learning-rate ratios start the sweeps."),
    time_limit: Optional[float] = typer.Option(None, "--time-limit", help="Stop starting runs after this many seconds."),
    threads: Optional[int] = typer.Option(None, "--threads", help="CPU threads for torch (default: torch's)."),
    jobs: int = typer.Option(1, "--jobs", help="Train this many methods at once, each in its own process "
                                               "(CPU; torch's threads are shared among them)."),
    device: str = typer.Option("cpu", "--device", help="Where to train: cpu, cuda or cuda:N."),
    entry: EntryOpt = None,
    out_dir: Path = typer.Option(DEFAULT_TRIAL_DIR, "--out-dir", help="Where trial.csv, trial.png and "
                                                                       "priors.yaml go."),
    plot: bool = typer.Option(True, "--plot/--no-plot", help="Draw loss against state bytes (needs matplotlib)."),
    as_json: JsonOpt = False,
) -> None:
    """Measure each method's quality on your own model: matched short runs, learning-rate sweeps,
    per-role probes; writes a priors file for `memplan plan --priors`."""
    if source_kind(source) != "python":
        raise UsageError(f"trial needs a model.py with training_batch(step) and loss(model, batch), got {source!r}")
    specs = options.method_specs(methods, TRIAL_METHODS[2:])
    probe_specs = options.method_specs([probe], ()) if probe else None
    factors = options.parse_option("--lr-factors", _factors, lr_factors)
    settings = TrialSettings(
        schedule=Schedule(steps=steps, shape=schedule, warmup=max(0, steps // 20) if warmup is None else warmup,
                          clip=clip or None),
        seeds=seeds, sweep_seeds=sweep_seeds, lr_factors=factors, widen=widen, refine=refine, probes=probes,
        probe_methods=tuple(probe_specs) if probe_specs else None, time_limit=time_limit, device=device, jobs=jobs)
    paths = {name: out_dir / name for name in ("trial.csv", "priors.yaml", *(("trial.png",) if plot else ()))}
    for path in paths.values():
        check_writable(path)
    if plot:
        from memplan.bench import check_plot_support

        check_plot_support()
    plan = Plan.load(plan_path) if plan_path is not None else None
    if threads is not None:
        import torch

        torch.set_num_threads(threads)
    result = _run_with_progress(Path(source), entry, specs, settings, plan, priors)
    write_csv(result, paths["trial.csv"])
    wrote_priors = plan is None and REFERENCE_FAMILY in result.best_lr and result.ranks_methods()
    if plan is None and REFERENCE_FAMILY in result.best_lr and not wrote_priors:
        result.notes.append(f"no priors file written: with Adam not ahead of SGD and Adam's loss not positive, no "
                            f"scale ranks the methods ({paths['priors.yaml']} is left as it was)")
    if wrote_priors:
        write_priors(result, paths["priors.yaml"], trial_evidence(source, settings))
    if plot:
        write_plot(result, paths["trial.png"])
    if as_json:
        output.print_json(_document(result, plan is None))
        return
    _render(result)
    for note in result.notes:
        output.note(f"memplan: note: {note}")
    output.note(f"runs written to {paths['trial.csv']}" + (f", plot to {paths['trial.png']}" if plot else ""))
    if wrote_priors:
        output.note(f"priors written to {paths['priors.yaml']}: memplan plan SOURCE --budget SIZE --priors "
                    f"{paths['priors.yaml']}")


def _factors(text: str) -> tuple[float, ...]:
    try:
        values = tuple(float(Fraction(item.strip())) for item in text.split(",") if item.strip())
    except (ValueError, ZeroDivisionError):
        raise UsageError(f"--lr-factors must be comma-separated numbers, got {text!r}") from None
    if not values or any(not value > 0 for value in values):
        raise UsageError(f"--lr-factors must be positive numbers, got {text!r}")
    return values


def _run_with_progress(path: Path, entry: str | None, specs: list[str], settings: TrialSettings, plan: Plan | None,
                       priors_path: Path | None) -> TrialResult:
    """Run the trial with a progress line on standard error (when it is a terminal)."""
    console = output.stderr()
    priors = load_priors(priors_path)
    with Progress(SpinnerColumn(), TextColumn("trial: {task.completed} runs, {task.description}"), TimeElapsedColumn(),
                  console=console, transient=True, disable=not console.is_terminal) as progress:
        task = progress.add_task("starting", total=None)

        def advance(done: int, label: str) -> None:
            progress.update(task, completed=done, description=label, refresh=True)

        from memplan.cli.main import quiet_libraries

        return run_trial(path, entry, specs, settings, priors, plan, advance, worker_setup=quiet_libraries)


def _render(result: TrialResult) -> None:
    """The methods table (and the probes), best loss first."""
    console = output.stdout()
    schedule = result.settings.schedule
    console.print(f"Trial of {result.source}: {schedule.steps} steps x {result.settings.seeds} seed(s), "
                  f"{len(result.runs)} runs; quality {QUALITY_SCALES[result.scale()]}"
                  + ("" if result.complete else " (stopped at the time limit)"), markup=False)
    table = Table(title="Methods", title_justify="left")
    for column in ("method", "state", "best lr", "lr / Adam's", "loss", "quality"):
        table.add_column(column, justify="left" if column == "method" else "right")
    frame = result.table().sort_values("loss")
    for row in frame.itertuples(index=False):
        table.add_row(row.method, "-" if row.state_bytes is None or math.isnan(row.state_bytes)
                      else format_size(int(row.state_bytes)),
                      "-" if row.best_lr is None or math.isnan(row.best_lr) else f"{row.best_lr:.3g}",
                      "-" if row.lr_ratio is None or math.isnan(row.lr_ratio) else f"{row.lr_ratio:.3g}",
                      _plus_minus(row.loss, row.loss_std), _plus_minus(row.quality, row.quality_se))
    console.print(table)
    unit, error = result.scale_unit()
    if math.isfinite(unit):
        divides = "qualities divide by it" if result.scale() == SGD_SCALE else "too small a unit: not used"
        console.print(f"Scale unit: L_SGD - L_Adam = {_plus_minus(unit, error)} ({divides})", markup=False)
    probes = result.probe_table()
    if len(probes):
        roles = Table(title="Per-role probes (Adam elsewhere)", title_justify="left")
        for column in ("method", "role", "share of elements", "probe quality", "role quality"):
            roles.add_column(column, justify="left" if column in ("method", "role") else "right")
        for row in probes.itertuples(index=False):
            roles.add_row(row.method, row.role, f"{row.share:.1%}", f"{row.probe_quality:.3f}",
                          _plus_minus(row.role_quality, row.role_quality_se))
        console.print(roles)


def _plus_minus(value: float, spread: float | None) -> str:
    if value is None or math.isnan(value):
        return "-"
    if not math.isfinite(value):
        return "diverged"
    return f"{value:.4f}" + ("" if spread is None or math.isnan(spread) else f" ± {spread:.4f}")


def _document(result: TrialResult, with_priors: bool) -> dict:
    """The ``--json`` document: the table, the probes, the notes."""
    def clean(records: list[dict]) -> list[dict]:
        plain = [{key: value.item() if hasattr(value, "item") else value for key, value in record.items()}
                 for record in records]
        return [{key: (None if isinstance(value, float) and not math.isfinite(value) else value)
                 for key, value in record.items()} for record in plain]

    unit, error = result.scale_unit()
    return {"source": result.source, "complete": result.complete, "runs": len(result.runs),
            "scale": result.scale(), "scale_unit": unit if math.isfinite(unit) else None, "scale_unit_se": error,
            "methods": clean(result.table().to_dict("records")), "probes": clean(result.probe_table().to_dict("records")),
            "notes": result.notes}
