"""``memplan plan [SOURCE] --budget SIZE``: choose every parameter's optimizer state; write plan.yaml."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from rich.table import Table

from memplan.cli import output, options
from memplan.cli.options import (DEFAULT_PLAN_PATH, DeviceOpt, DeviceProfileOpt, EntryOpt, FreezeOpt, JsonOpt,
                                 OptionalSourceArg, ShardingOpt, StripPrefixOpt, WorldSizeOpt, methods_option)
from memplan.costmodel import resolve_device_profile
from memplan.devices import parse_device
from memplan.errors import SourceError, UsageError
from memplan.fileio import check_writable
from memplan.loaders import load_profile, source_kind
from memplan.methods import PLAN_METHODS
from memplan.plan import Plan
from memplan.planner import OBJECTIVES, make_plan, traffic_seconds
from memplan.sizes import format_count, format_size, parse_size


MethodsOpt = methods_option(PLAN_METHODS, "consider")


def plan(
    source: OptionalSourceArg = None,
    budget: str = typer.Option(..., "--budget", "-b", help="Byte budget for all optimizer state, e.g. 64MiB "
                                                           "(with --world-size: per device)."),
    methods: MethodsOpt = None,
    objective: str = typer.Option("quality", "--objective", help=f"{' | '.join(OBJECTIVES)}: weight of step time."),
    time_weight: Optional[float] = typer.Option(None, "--time-weight", help="Explicit time weight (overrides --objective)."),
    priors: Optional[Path] = typer.Option(None, "--priors", help="YAML file overriding the bundled quality priors."),
    calibrate: bool = typer.Option(False, "--calibrate", help="Score layouts on gradients from the model file's "
                                                              "calibration_loss(model)."),
    samples: int = typer.Option(8, "--samples", help="Gradient samples for --calibrate."),
    device: DeviceOpt = "cpu",
    device_profile: DeviceProfileOpt = None,
    entry: EntryOpt = None,
    freeze: FreezeOpt = None,
    strip_prefix: StripPrefixOpt = None,
    world_size: WorldSizeOpt = None,
    sharding_kind: ShardingOpt = None,
    out: Path = typer.Option(DEFAULT_PLAN_PATH, "--out", "-o", help="Where to write the plan."),
    as_json: JsonOpt = False,
) -> None:
    """Choose, per parameter, the optimizer state that fits the budget at the best predicted quality."""
    budget_bytes = options.parse_option("--budget", parse_size, budget)
    sharding = options.sharding(world_size, sharding_kind)
    specs = options.method_specs(methods, PLAN_METHODS)
    if time_weight is None and objective not in OBJECTIVES:
        raise UsageError(f"--objective must be one of {', '.join(OBJECTIVES)}, got {objective!r}")
    chosen, _ = resolve_device_profile(parse_device(device), device_profile)
    check_writable(out)
    source = options.default_source(source, "plan")
    profile = load_profile(source, entry=entry, strip_prefix=strip_prefix, freeze=freeze)
    moments = None
    if calibrate:
        from memplan.moments import measure_moments

        moments = measure_moments(_model_file(source, profile.source), entry=entry, device=device, samples=samples)
    result = make_plan(profile, budget_bytes, specs,
                       priors_path=str(priors) if priors else None, objective=objective, time_weight=time_weight,
                       seconds=traffic_seconds(chosen.memory_bandwidth), device=chosen.name, moments=moments,
                       sharding=sharding)
    path = result.save(out)
    if as_json:
        output.print_json(result.summary(str(path)))
        return
    render(result, top=12)
    output.note(f"plan written to {path}")


def render(result: Plan, top: int | None) -> None:
    """Print a plan: totals, bytes per method, and the largest parameters with what they got."""
    console = output.stdout()
    held = max(result.rank_state_bytes)
    used = held / result.budget_bytes if result.budget_bytes else 0.0
    predicted = result.predicted
    per_rank = " per rank" if result.sharding else ""
    console.print(f"Plan for {result.model_name}: {format_size(held)} of "
                  f"{format_size(result.budget_bytes)}{per_rank} ({used:.1%}); predicted quality "
                  f"{predicted.quality:.4f} (1 = Adam everywhere), objective "
                  f"{predicted.objective:.5f}, at most {predicted.objective_bound:.5f} possible",
                  markup=False)
    if result.sharding is not None:
        ranks = result.rank_state_bytes
        console.print(f"{result.sharding.kind} over {result.sharding.world_size} ranks: they hold "
                      f"{', '.join(f'{value:,}' for value in ranks)} bytes of optimizer state "
                      f"({format_size(result.state_bytes)} unsharded; the budget is per device)", markup=False)
    methods = Table(title="State by method", title_justify="left")
    for column, justify in (("method", "left"), ("parameters", "right"), ("elements", "right"), ("state", "right"),
                            ("bytes", "right")):
        methods.add_column(column, justify=justify)  # type: ignore[arg-type]
    for row in result.by_method():
        methods.add_row(row["method"], str(row["parameters"]), format_count(row["numel"]),
                        format_size(row["state_bytes"]), f"{row['state_bytes']:,}")
    console.print(methods)
    calibrated = any(entry.distortion is not None for entry in result.entries)
    title = "Largest parameters" if top else "Parameters"
    table = Table(title=title + " and what they got", title_justify="left")
    for column in ("name", "shape", "method", "layout", "state", "quality") + (("distortion",) if calibrated else ()):
        table.add_column(column, justify="right" if column in {"state", "quality", "distortion"} else "left")
    for entry in result.largest(top):
        cells = [entry.name, "x".join(map(str, entry.shape)) or "scalar", entry.method,
                 "-" if entry.layout is None else "x".join(map(str, entry.layout)), format_size(entry.state_bytes),
                 f"{entry.quality:.3f}"]
        if calibrated:
            cells.append("-" if entry.distortion is None else f"{entry.distortion:.4f}")
        table.add_row(*cells)
    console.print(table)


def _model_file(source: str, profile_source: str) -> Path:
    """The model.py to calibrate: the source itself, or the file a saved profile was made from."""
    for candidate in (source, profile_source):
        if candidate and Path(candidate).is_file() and source_kind(candidate) == "python":
            return Path(candidate)
    raise SourceError(f"--calibrate needs the model's code: give a model.py that defines calibration_loss(model) "
                      f"(the source {source!r} is not one)")
