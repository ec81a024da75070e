"""``memplan bench [SOURCE]``: measure each method's state, peak and step time beside its prediction."""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Optional

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from memplan.costmodel import DEFAULT_DEVICE_PROFILE_PATH, DeviceProfile
from memplan.devices import parse_device
from memplan.errors import MemplanError, OutputError, UsageError
from memplan.fileio import check_writable
from memplan.methods import BENCH_METHODS, parse_spec
from memplan.sizes import format_size, parse_size
from memplan.cli import output, options
from memplan.cli.options import (DEFAULT_PLAN_PATH, DeviceOpt, DeviceProfileOpt, JsonOpt, OptionalSourceArg,
                                 methods_option)

if TYPE_CHECKING:  # memplan.bench imports torch: the command imports it only when it runs
    from memplan.bench import BenchReport, BenchResult, BenchSetup

MethodsOpt = methods_option(BENCH_METHODS, "measure")


def bench(
    source: OptionalSourceArg = None,
    methods: MethodsOpt = None,
    device: DeviceOpt = "cpu",
    dtype: str = typer.Option("float32", "--dtype", help="Parameter dtype: float32 or bfloat16."),
    steps: int = typer.Option(5, "--steps", help="Timed steps per method."),
    warmup: int = typer.Option(1, "--warmup", help="Untimed steps first (the first allocates the state)."),
    memory: Optional[str] = typer.Option(None, "--memory",
                                         help="Memory to fit into instead of the device's free memory "
                                              "(e.g. 64MiB); methods that would not fit are skipped."),
    calibrate: bool = typer.Option(False, "--calibrate",
                                   help="Measure this device's bandwidths, kernel overhead and one-pass kernel rates first and "
                                        f"save the device profile (to --device-profile, or {DEFAULT_DEVICE_PROFILE_PATH})."),
    device_profile: DeviceProfileOpt = None,
    plan: Optional[Path] = typer.Option(None, "--plan", help="Also measure the optimizer this plan builds "
                                                             f"(e.g. {DEFAULT_PLAN_PATH})."),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Write the results as CSV."),
    plot: Optional[Path] = typer.Option(None, "--plot", help="Draw state memory against step time (PNG)."),
    world_size: Optional[int] = typer.Option(None, "--world-size",
                                             help="Spawn this many ranks and measure every method under FSDP2 "
                                                  "(gloo on CPU, NCCL on CUDA): per-rank state, peak and step time."),
    as_json: JsonOpt = False,
) -> None:
    """Run real optimizer steps of each method on the device and compare with memplan's predictions."""
    if steps < 1 or warmup < 1:
        raise UsageError(f"--steps and --warmup must be at least 1 (got {steps} and {warmup})")
    if world_size is not None:
        _bench_ranks(source, methods, device, world_size, plan, steps, warmup, device_profile, as_json,
                     dtype, memory, calibrate, out, plot)
        return
    memory_bytes = options.parse_option("--memory", parse_size, memory) if memory is not None else None
    specs = [str(parse_spec(spec)) for spec in options.method_specs(methods, ())] if methods else None
    target = parse_device(device)
    calibrate_only = calibrate and source is None and specs is None
    model_source = None if calibrate_only else options.default_source(source, "bench")
    for path in (out, plot, Path(device_profile) if calibrate and device_profile else None):
        if path is not None:
            check_writable(path)
    # kineto logs two "USDT" lines per profiled step below level 6
    os.environ.setdefault("KINETO_LOG_LEVEL", "6")
    from memplan import bench as measurement

    measurement.check_dtype(dtype)
    if plot is not None:
        measurement.check_plot_support()
    profile_choice = device_profile
    if calibrate:
        from memplan.timing import calibrate as measure_device

        calibrated = measure_device(target, progress=lambda what: output.note(f"calibrating: {what}"))
        saved = calibrated.save(Path(device_profile) if device_profile else DEFAULT_DEVICE_PROFILE_PATH)
        output.note(f"device profile written to {saved}")
        if calibrate_only:
            _show_device_profile(calibrated, saved, as_json)
            return
        profile_choice = str(saved)
    setup = measurement.prepare_bench(model_source, specs, target, dtype, profile_choice, plan)
    report = _run_with_progress(setup, steps, warmup, memory_bytes)
    failures = _write_outputs(report, out, plot)
    if as_json:
        output.print_json({**report.to_json(), "device_profile_origin": setup.device_profile_origin})
    else:
        console = output.stdout()
        console.print(_results_table(report, setup.device_profile_origin, console.width))
        for result in report.results:
            if result.skipped:
                output.note(f"{result.method}: skipped: {result.skip_reason}")
        for entry in setup.entries:
            if entry.prediction_note:
                output.note(f"{entry.label}: {entry.prediction_note}")
    for warning in report.noise_warnings():
        output.note(f"warning: {warning}")
    if failures:
        raise OutputError("; ".join(failures))


def _bench_ranks(source: Optional[str], methods: Optional[list[str]], device: str, world_size: int,
                 plan: Optional[Path], steps: int, warmup: int, device_profile: Optional[str], as_json: bool,
                 dtype: str, memory: Optional[str], calibrate: bool, out: Optional[Path], plot: Optional[Path]) -> None:
    """``--world-size N``: spawn the ranks, then print predicted and measured figures per rank."""
    unsupported = [name for name, given in (("--dtype", dtype != "float32"), ("--memory", memory), ("--calibrate", calibrate),
                                            ("--out", out), ("--plot", plot)) if given]
    if unsupported:
        raise UsageError(f"{', '.join(unsupported)} do(es) not go with --world-size yet")
    specs = [str(parse_spec(spec)) for spec in options.method_specs(methods, ())] if methods else None
    parse_device(device)
    model_source = options.default_source(source, "bench")
    from memplan.bench_ranks import run_ranks_bench

    output.note(f"spawning {world_size} ranks ...")
    report = run_ranks_bench(model_source, world_size, specs, device, plan, steps, warmup, device_profile)
    if as_json:
        output.print_json(report.to_json())
        return
    table = Table(title=f"{report.profile_name} under FSDP2 on {report.world_size} ranks ({report.backend}); "
                        f"a collective: {report.collective.latency * 1e6:.0f} us + bus bytes at "
                        f"{report.collective.bandwidth / 1e9:.2f} GB/s (measured)", title_justify="left")
    for column in ("method", "state predicted (max rank)", "measured (max rank)", "every rank exact", "peak",
                   "step ms (max rank)", "predicted ms (max rank)", "collective ms (predicted)",
                   "collectives x bytes predicted", "measured"):
        table.add_column(column, justify="left" if column == "method" else "right")
    for result in report.results:
        if result.skip_reason:
            table.add_row(result.method, *["-"] * 9)
            output.note(f"{result.method}: skipped: {result.skip_reason}")
            continue
        table.add_row(result.method, f"{max(result.predicted_state_bytes):,}", f"{max(result.measured_state_bytes):,}",
                      "yes" if result.exact else "NO", format_size(max(result.peak_transient_bytes)),
                      f"{max(result.step_ms_median):.3f}",
                      "-" if result.predicted_step_ms is None else f"{max(result.predicted_step_ms):.3f}",
                      f"{result.predicted_collective_ms:.3f}",
                      f"{result.predicted_collectives} x {result.predicted_reduced_bytes:,}",
                      f"{result.collectives} x {result.reduced_bytes:,}")
    output.stdout().print(table)


def _write_outputs(report: BenchReport, out: Path | None, plot: Path | None) -> list[str]:
    """Write the CSV and the plot that were asked for, each on its own: one that fails does not
    stop the other, nor the table. Returns the failures' messages."""
    from memplan import bench as measurement

    failures: list[str] = []
    for path, write, what in ((out, measurement.write_csv, "results"), (plot, measurement.write_plot, "plot")):
        if path is None:
            continue
        try:
            output.note(f"{what} written to {write(report, path)}")
        except (MemplanError, OSError) as error:
            failures.append(str(error) if isinstance(error, MemplanError) else f"cannot write {path}: {error}")
    return failures


def _run_with_progress(setup: BenchSetup, steps: int, warmup: int, memory_bytes: int | None) -> BenchReport:
    """Run the benchmark with a progress bar on standard error (when it is a terminal), redrawn
    between steps only: a refresh thread would compete with the timed steps for the cores."""
    console = output.stderr()
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, console=console, transient=True, auto_refresh=False,
                  disable=not console.is_terminal) as progress:
        task = progress.add_task("bench", total=None)

        def advance(label: str, done: int, total: int) -> None:
            progress.update(task, description=f"bench {label}", completed=done, total=total, refresh=True)

        return setup.run(steps=steps, warmup=warmup, memory_bytes=memory_bytes, progress=advance)


NARROW_WIDTH = 130
"""Below this many columns the results table keeps only the essential columns."""


def _results_table(report: BenchReport, origin: str, width: int) -> Table:
    """Predicted beside measured, one row per method; on a narrow terminal only the essential
    columns, so that no header or figure is cut."""
    narrow = width < NARROW_WIDTH
    title = (f"{report.profile_name} on {report.device}, {report.dtype}: median of {report.steps} timed steps "
             f"after {report.warmup} warm-up")
    caption = (f"{report.device_name}; torch {report.torch_version}, {report.threads} threads; predictions from "
               f"{origin}; peak transient: {report.peak_method}")
    if narrow:
        caption += "; a wider terminal (or --json, --out) shows predicted state, peak transient and p10-p90"
    table = Table(title=title, title_justify="left", caption=caption, caption_justify="left")
    columns = (("method", "state", "state error", "pred. ms", "measured ms", "time error", "vs AdamW") if narrow else
               ("method", "impl", "pred. state", "measured state", "state error", "peak transient", "pred. ms",
                "measured ms (p10-p90)", "time error", "vs AdamW", "GB/s (of memory)"))
    for column in columns:
        header = column.replace(" ", "\n", 1) if narrow and column != "method" else column
        if column == "method":
            table.add_column(header, overflow="fold", min_width=12)
        else:
            table.add_column(header, justify="right", no_wrap=True)
    for result in report.results:
        ratio = report.ratio_to_adamw(result)
        measured_ms = "-" if result.step_ms_median is None else f"{result.step_ms_median:.1f}"
        if not narrow and result.step_ms_median is not None:
            measured_ms += f" ({result.step_ms_p10:.1f}-{result.step_ms_p90:.1f})"
        cells = {
            "method": result.method,
            "impl": result.implementation or "-",
            "pred. state": format_size(result.predicted_state_bytes),
            "measured state": "skipped" if result.skipped else format_size(result.measured_state_bytes),
            "state": "skipped" if result.skipped else format_size(result.measured_state_bytes),
            "state error": _state_error(result),
            "peak transient": "-" if result.peak_transient_bytes is None else format_size(result.peak_transient_bytes),
            "pred. ms": "-" if result.predicted_step_ms is None else f"{result.predicted_step_ms:.1f}",
            "measured ms": measured_ms,
            "measured ms (p10-p90)": measured_ms,
            "time error": "-" if result.step_error is None else f"{100 * result.step_error:+.0f}%",
            "vs AdamW": "-" if ratio is None else f"{ratio:.2f}x",
            "GB/s (of memory)": _bandwidth(report, result),
        }
        table.add_row(*(cells[column] for column in columns))
    return table


def _bandwidth(report: BenchReport, result: BenchResult) -> str:
    """The achieved bandwidth in GB/s, with its share of the device profile's memory bandwidth."""
    achieved = result.achieved_bandwidth
    if achieved is None:
        return "-"
    share = report.bandwidth_share(result)
    return f"{achieved / 1e9:.1f}" + ("" if share is None else f" ({share:.0%})")


def _state_error(result: BenchResult) -> str:
    """``exact``, or measured minus predicted in bytes."""
    if result.measured_state_bytes is None:
        return "-"
    difference = result.measured_state_bytes - result.predicted_state_bytes
    return "exact" if difference == 0 else f"{difference:+,} B"


def _show_device_profile(profile: DeviceProfile, path: Path, as_json: bool) -> None:
    """Print a calibrated device profile."""
    if as_json:
        output.print_json({"device_profile": profile.to_dict(), "path": str(path)})
        return
    table = Table(title=profile.name, title_justify="left", caption=f"saved to {path}", caption_justify="left")
    table.add_column("figure")
    table.add_column("value", justify="right")
    table.add_row("memory bandwidth", f"{profile.memory_bandwidth / 1e9:.1f} GB/s")
    if profile.reduction_bandwidth:
        table.add_row("reductions from memory", f"{profile.reduction_bandwidth / 1e9:.1f} GB/s")
    if profile.cache_bandwidth:
        table.add_row(f"cache bandwidth (working sets up to {format_size(profile.cache_bytes)})",
                      f"{profile.cache_bandwidth / 1e9:.1f} GB/s")
    if profile.strided_norm_bandwidth:
        table.add_row("norms over a non-innermost axis", f"{profile.strided_norm_bandwidth / 1e9:.2f} GB/s")
    table.add_row("kernel overhead", f"{profile.kernel_overhead * 1e6:.2f} µs")
    if profile.threads:
        table.add_row("threads", str(profile.threads))
    for key, seconds in profile.fused_element_seconds:
        table.add_row(f"one-pass kernel {key}", f"{seconds * 1e9:.3f} ns/element")
    output.stdout().print(table)
