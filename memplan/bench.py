"""Measurement: run each method's optimizer on a device over a profile's parameters, and put every
measured figure next to memplan's prediction.

A benchmark needs only shapes: the trainable parameters of a :class:`~memplan.profile.ModelProfile`
are materialized on the device with random values (N(0, 0.02^2), a transformer's initial scale)
and random gradients (N(0, 1e-3^2)); the step never needs the model's forward. Each
:class:`BenchEntry` (a method spec, or anything else that builds an optimizer, such as a plan)
is measured in turn from the same starting values:

- state bytes: the distinct storages in the optimizer's state after the first step
  (:func:`memplan.measure.state_storage_bytes`); on CUDA also ``memory_allocated`` after the
  first step minus before, which shows the allocator's 512-byte rounding;
- peak transient bytes of one extra, untimed step, beyond the memory held before it
  (:meth:`memplan.devices.Device.peak_during`: on CUDA the allocator's peak, on CPU the
  maximum of the running sum of torch.profiler's memory events);
- step time: ``warmup`` steps (the first allocates the state), then the median, 10th and 90th
  percentile of ``steps`` timed steps (:meth:`memplan.devices.Device.time_steps`: wall clock
  on CPU, CUDA events on a GPU, with one synchronisation after the timed steps);
- achieved bandwidth: the bytes the census says a step moves to and from memory (for a one-pass
  kernel, its compulsory bytes) over the median step, and that rate's share of the device
  profile's memory bandwidth.

Before a method runs, params + grads + its predicted state + its predicted transient peak are
checked against the device's free memory (or a given ``memory_bytes``): a method that would not
fit is reported as skipped with those figures, never run out of memory. The run keeps freed
memory with the process (:meth:`memplan.devices.Device.keep_freed`), so CPU steps are not timed
with page faults that depend on the allocator's history.

This module never imports typer or rich: the command line passes a progress callback.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Sequence

import torch

from memplan.dtypes import canonical_dtype
from memplan.errors import MemplanError, UsageError
from memplan.fileio import atomic_write, atomic_write_text
from memplan.loaders import load_profile
from memplan.measure import state_storage_bytes
from memplan.methods import BENCH_METHODS, REFERENCE_FAMILY, as_spec, build, get_method, param_state, parse_spec
from memplan.optim.implementation import implementation_of
from memplan.plan import Plan
from memplan.profile import ModelProfile, ParamSpec
from memplan.sizes import format_size
from memplan.devices import Device, parse_device
from memplan.census import StepCensus, method_census
from memplan.costmodel import DeviceProfile, predict_seconds, resolve_device_profile


BENCH_DTYPES = ("float32", "bfloat16")
PARAM_SCALE = 0.02
GRAD_SCALE = 1e-3
NOISY_SPREAD = 2.0
"""A step-time p90 above this multiple of the median marks a measurement as noisy."""

ProgressCallback = Callable[[str, int, int], None]
"""Called as ``progress(label, steps_done, steps_total)`` over the whole run."""

NamedParameters = list[tuple[str, torch.nn.Parameter]]
"""The materialized parameters with their profile names, as ``model.named_parameters()`` gives them."""
OptimizerBuilder = Callable[[NamedParameters], torch.optim.Optimizer]


@dataclass(frozen=True)
class BenchEntry:
    """One thing to benchmark: a label, how to build its optimizer over the materialized named
    parameters (the profile's trainable ones, in its order), and what memplan predicts for it.
    A method spec is one entry (:func:`method_entry`); a plan, or any optimizer, is another."""

    label: str
    build: OptimizerBuilder
    predicted_state_bytes: int
    predicted_step_seconds: float | None
    predicted_peak_bytes: int | None
    """Predicted transient bytes of one step (the census's peak of temporaries)."""
    prediction_note: str = ""
    """Why a prediction is missing, when it is."""
    traffic_bytes: int | None = None
    """Bytes a step moves to and from memory by the census (:meth:`memplan.census.StepCensus.memory_traffic`;
    a one-pass kernel's compulsory bytes): what the achieved bandwidth is counted from."""


@dataclass(frozen=True)
class BenchResult:
    """Predicted and measured figures of one entry on one device (sizes in exact bytes)."""

    method: str
    predicted_state_bytes: int
    measured_state_bytes: int | None
    allocator_state_bytes: int | None
    predicted_peak_transient_bytes: int | None
    peak_transient_bytes: int | None
    predicted_step_ms: float | None
    step_ms_median: float | None
    step_ms_p10: float | None
    step_ms_p90: float | None
    required_bytes: int
    """Params + grads + predicted state + predicted transient peak: what the fit check compares."""
    skipped: bool = False
    skip_reason: str | None = None
    implementation: str | None = None
    """What stepped it (:func:`memplan.optim.implementation.implementation_of`): eager, compiled,
    triton, or torch's fused, foreach or forloop; None when it did not run."""
    traffic_bytes: int | None = None
    """The entry's :attr:`BenchEntry.traffic_bytes`."""

    @property
    def achieved_bandwidth(self) -> float | None:
        """The census's memory traffic over the measured median step (bytes per second), when both exist."""
        if self.traffic_bytes is None or not self.step_ms_median:
            return None
        return self.traffic_bytes / (self.step_ms_median / 1e3)

    @property
    def step_error(self) -> float | None:
        """predicted / measured step time - 1, when both exist."""
        if self.predicted_step_ms is None or not self.step_ms_median:
            return None
        return self.predicted_step_ms / self.step_ms_median - 1.0

    def to_dict(self) -> dict[str, Any]:
        """The JSON record of this result."""
        return {
            "method": self.method,
            "predicted_state_bytes": self.predicted_state_bytes,
            "measured_state_bytes": self.measured_state_bytes,
            "allocator_state_bytes": self.allocator_state_bytes,
            "predicted_peak_transient_bytes": self.predicted_peak_transient_bytes,
            "peak_transient_bytes": self.peak_transient_bytes,
            "predicted_step_ms": self.predicted_step_ms,
            "step_ms_median": self.step_ms_median,
            "step_ms_p10": self.step_ms_p10,
            "step_ms_p90": self.step_ms_p90,
            "step_error": self.step_error,
            "required_bytes": self.required_bytes,
            "skipped": self.skipped,
            "skip_reason": self.skip_reason,
            "implementation": self.implementation,
            "traffic_bytes": self.traffic_bytes,
            "achieved_bytes_per_second": self.achieved_bandwidth,
        }


@dataclass(frozen=True)
class BenchReport:
    """Every entry's result on one device, with what the run was."""

    device: str
    device_name: str
    torch_version: str
    profile_name: str
    dtype: str
    steps: int
    warmup: int
    threads: int
    available_bytes: int
    device_profile: DeviceProfile | None
    peak_method: str
    results: tuple[BenchResult, ...] = field(default_factory=tuple)

    def baseline(self) -> BenchResult | None:
        """The first measured adam or adamw row, which ratios are taken against."""
        for result in self.results:
            if not result.skipped and result.step_ms_median and _is_reference(result.method):
                return result
        return None

    def ratio_to_adamw(self, result: BenchResult) -> float | None:
        """``result``'s median step time over the AdamW row's, or None without one."""
        baseline = self.baseline()
        if baseline is None or result.step_ms_median is None:
            return None
        return result.step_ms_median / baseline.step_ms_median

    def bandwidth_share(self, result: BenchResult) -> float | None:
        """``result``'s achieved bandwidth over the device profile's memory bandwidth (calibrated
        or bundled), or None without either."""
        if result.achieved_bandwidth is None or self.device_profile is None:
            return None
        return result.achieved_bandwidth / self.device_profile.memory_bandwidth

    def noise_warnings(self) -> list[str]:
        """One line per measured entry whose step times spread too widely to judge a prediction:
        a 90th percentile more than :data:`NOISY_SPREAD` times the median."""
        return [f"{result.method}: step times are noisy (p90 {result.step_ms_p90 / result.step_ms_median:.1f}x "
                f"the median): its time error is not reliable; rerun with more --steps on an idle machine"
                for result in self.results
                if result.step_ms_median and result.step_ms_p90 and
                result.step_ms_p90 > NOISY_SPREAD * result.step_ms_median]

    def records(self) -> list[dict[str, Any]]:
        """One flat record per result, with the ratio to AdamW (JSON results and CSV rows)."""
        return [{**result.to_dict(), "ratio_to_adamw": self.ratio_to_adamw(result),
                 "memory_bandwidth_share": self.bandwidth_share(result)} for result in self.results]

    def to_json(self) -> dict[str, Any]:
        """The ``memplan bench --json`` document."""
        return {
            "device": self.device,
            "device_name": self.device_name,
            "torch": self.torch_version,
            "profile": self.profile_name,
            "dtype": self.dtype,
            "steps": self.steps,
            "warmup": self.warmup,
            "threads": self.threads,
            "available_bytes": self.available_bytes,
            "peak_method": self.peak_method,
            "device_profile": None if self.device_profile is None else self.device_profile.to_dict(),
            "results": self.records(),
        }

    def to_frame(self) -> Any:
        """The results as a pandas DataFrame (one row per entry)."""
        import pandas

        records = self.records()
        return pandas.DataFrame.from_records(records, columns=list(records[0]) if records else None)


# ----------------------------------------------------------------------------------------
# Entries and predictions


def _is_reference(label: str) -> bool:
    """Whether a result's label is a spec of the reference family (Adam); a plan's label is no spec."""
    try:
        return get_method(as_spec(label).name).family_name == REFERENCE_FAMILY
    except MemplanError:
        return False


def bench_params(profile: ModelProfile, dtype: str) -> list[ParamSpec]:
    """The trainable parameters of ``profile`` (only they get state), all in ``dtype``."""
    return [replace(spec, dtype=dtype) for spec in profile.trainable_params]


def check_dtype(dtype: str) -> str:
    """The canonical name of a benchmark parameter dtype; UsageError unless float32 or bfloat16."""
    try:
        name = canonical_dtype(dtype)
    except MemplanError:
        name = ""
    if name not in BENCH_DTYPES:
        raise UsageError(f"--dtype must be {' or '.join(BENCH_DTYPES)}, got {dtype!r}")
    return name


def method_entry(spec: str, params: Sequence[ParamSpec], device_profile: DeviceProfile | None) -> BenchEntry:
    """The entry for a method spec: memplan's or the baseline library's optimizer, its exact
    state bytes from the byte model, and its step time and transient peak from the census."""
    parsed = str(as_spec(spec))
    state_bytes = sum(param_state(parsed, param.shape, param.dtype).state_bytes for param in params)
    shapes = [(param.shape, param.dtype) for param in params]
    cache_bytes = device_profile.cache_bytes if device_profile is not None else 0
    device_kind = device_profile.kind if device_profile is not None else "cpu"
    try:
        census = method_census(parsed, shapes, cache_bytes, device_kind)
    except Exception as error:  # a third-party optimizer that cannot step on the meta device
        note = f"no census: {type(error).__name__}: {error}"
        return BenchEntry(parsed, _builder(parsed), state_bytes, None, None, note)
    seconds = None if device_profile is None else predict_seconds(census, device_profile).seconds
    note = "" if device_profile is not None else "no device profile: run memplan bench --calibrate"
    return BenchEntry(parsed, _builder(parsed), state_bytes, seconds,
                      census.peak_temporary_bytes, note, _traffic(census, device_profile))


def plan_entry(plan: Plan, params: Sequence[ParamSpec], device_profile: DeviceProfile | None,
               label: str = "plan") -> BenchEntry:
    """The entry for a plan: :func:`memplan.optim.from_plan` over the parameters, the plan's own
    predicted state bytes, and a census of the planned optimizer's step, one method spec's
    parameters at a time: a spec whose step is a one-pass kernel on the device (``impl=compiled``,
    ``triton``, or ``auto`` where one runs) is counted as that kernel (meta tensors cannot run it),
    the others by counting their real step."""
    from memplan.census import census_step, fused_census
    from memplan.optim import from_plan
    from memplan.optim.planned import planned_group

    plan.check_model(ModelProfile(plan.model_name, "bench", tuple(params)))

    def build(named: NamedParameters) -> torch.optim.Optimizer:
        return from_plan(list(named), plan)

    cache_bytes = device_profile.cache_bytes if device_profile is not None else 0
    device_kind = device_profile.kind if device_profile is not None else "cpu"
    by_name = {param.name: param for param in params}
    census = StepCensus()
    for spec_text, entries in plan.method_groups().items():
        spec = parse_spec(spec_text)
        method = get_method(spec.name)
        shapes = [(by_name[entry.name].shape, by_name[entry.name].dtype) for entry in entries]
        if method.step_structure(method.resolve(spec), device_kind) == "fused":
            census += fused_census(spec_text, shapes, device_kind)
        else:
            census += census_step(lambda named, spec_text=spec_text: planned_group(plan, spec_text, named), shapes,
                                  cache_bytes, names=[entry.name for entry in entries])
    seconds = None if device_profile is None else predict_seconds(census, device_profile).seconds
    note = "" if device_profile is not None else "no device profile: run memplan bench --calibrate"
    return BenchEntry(label, build, plan.state_bytes, seconds, census.peak_temporary_bytes, note,
                      _traffic(census, device_profile))


def _traffic(census: StepCensus, device_profile: DeviceProfile | None) -> int:
    """The census's memory traffic, with line fills where the profile's device allocates on write."""
    return census.memory_traffic(device_profile is not None and device_profile.write_allocate)


@dataclass(frozen=True)
class BenchSetup:
    """A benchmark ready to run: the model's profile, the device and dtype, the entries to
    measure, and the device profile their predictions come from, with where it came from."""

    model: ModelProfile
    device: Device
    dtype: str
    entries: tuple[BenchEntry, ...]
    device_profile: DeviceProfile | None
    device_profile_origin: str
    """A file, ``bundled NAME``, or ``none`` (see :func:`memplan.costmodel.resolve_device_profile`)."""

    def run(self, steps: int = 5, warmup: int = 1, memory_bytes: int | None = None,
            progress: ProgressCallback | None = None) -> BenchReport:
        """Measure every entry (:func:`run_bench`)."""
        return run_bench(self.model, self.entries, device=self.device, dtype=self.dtype, steps=steps, warmup=warmup,
                         memory_bytes=memory_bytes, device_profile=self.device_profile, progress=progress)


def prepare_bench(source: str | Path, specs: Sequence[str] | None = None, device: str | Device = "cpu",
                  dtype: str = "float32", device_profile: str | Path | None = None,
                  plan: str | Path | None = None) -> BenchSetup:
    """The benchmark of ``source`` (any model source) on ``device``: one entry per method spec
    (default :data:`memplan.methods.BENCH_METHODS`), then one for ``plan``, a plan file, when
    given; predictions from ``device_profile`` (a file or a bundled name) or the profile
    :func:`memplan.costmodel.resolve_device_profile` finds for the device."""
    target = device if isinstance(device, Device) else parse_device(device)
    dtype = check_dtype(dtype)
    chosen, origin = resolve_device_profile(target, device_profile)
    model = load_profile(source)
    params = bench_params(model, dtype)
    entries = [method_entry(spec, params, chosen) for spec in specs or BENCH_METHODS]
    if plan is not None:
        plan_path = Path(plan)
        entries.append(plan_entry(Plan.load(plan_path), params, chosen, label=f"plan ({plan_path})"))
    return BenchSetup(model, target, dtype, tuple(entries), chosen, origin)


def _builder(spec: str) -> OptimizerBuilder:
    return lambda named: build(spec, [param for _, param in named], lr=1e-3)


# ----------------------------------------------------------------------------------------
# Running


def run_bench(profile: ModelProfile, entries: Sequence[BenchEntry], device: str | Device = "cpu",
              dtype: str = "float32", steps: int = 5, warmup: int = 1, memory_bytes: int | None = None,
              device_profile: DeviceProfile | None = None, progress: ProgressCallback | None = None,
              seed: int = 0, keep_freed: bool = True) -> BenchReport:
    """Measure every entry on ``device`` over the trainable parameters of ``profile``.

    ``memory_bytes`` replaces the device's free memory in the fit check (a smaller, pretend
    device); ``keep_freed`` keeps freed memory with the process during the run
    (:meth:`memplan.devices.Device.keep_freed`).
    """
    if steps < 1 or warmup < 1:
        raise UsageError(f"--steps and --warmup must be at least 1 (got {steps} and {warmup})")
    target = device if isinstance(device, Device) else parse_device(device)
    dtype = check_dtype(dtype)
    params = bench_params(profile, dtype)
    param_bytes = sum(param.nbytes for param in params)
    steps_per_entry = warmup + steps + 1
    ticker = _Ticker(progress, steps_per_entry * len(entries))
    results = []
    with target.keep_freed(keep_freed):
        target.prepare()
        target.release()
        available = memory_bytes if memory_bytes is not None else target.free_memory()
        named: NamedParameters | None = None
        for entry in entries:
            required = 2 * param_bytes + entry.predicted_state_bytes + (entry.predicted_peak_bytes or 0)
            if required > available:
                results.append(_skipped(entry, param_bytes, required, available))
                ticker.skip(entry.label, steps_per_entry)
                continue
            if named is None:
                named = materialize(params, target)
            reset_values(named, seed)
            results.append(measure_entry(entry, named, target, steps, warmup, required, ticker))
        del named
        target.release()
    return BenchReport(
        device=target.torch_device, device_name=target.model_name(), torch_version=torch.__version__,
        profile_name=profile.name, dtype=dtype, steps=steps, warmup=warmup, threads=torch.get_num_threads(),
        available_bytes=available, device_profile=device_profile,
        peak_method=target.peak_method, results=tuple(results),
    )


class _Ticker:
    """Counts steps done over the whole run and reports them to the progress callback."""

    def __init__(self, progress: ProgressCallback | None, total: int) -> None:
        self.progress = progress
        self.total = total
        self.done = 0

    def __call__(self, label: str) -> None:
        """One step of ``label`` done."""
        self.done += 1
        if self.progress is not None:
            self.progress(label, self.done, self.total)

    def skip(self, label: str, count: int) -> None:
        """``count`` steps of ``label`` that will not run."""
        self.done += count
        if self.progress is not None:
            self.progress(label, self.done, self.total)


def _skipped(entry: BenchEntry, param_bytes: int, required: int, available: int) -> BenchResult:
    """The result of an entry that would not fit, with the figures of the check."""
    transient = entry.predicted_peak_bytes or 0
    reason = (f"needs {format_size(required)} (params {format_size(param_bytes)} + grads {format_size(param_bytes)} "
              f"+ state {format_size(entry.predicted_state_bytes)} + transient {format_size(transient)}) "
              f"but {format_size(available)} is free")
    return BenchResult(
        method=entry.label, predicted_state_bytes=entry.predicted_state_bytes, measured_state_bytes=None,
        allocator_state_bytes=None, predicted_peak_transient_bytes=entry.predicted_peak_bytes,
        peak_transient_bytes=None, predicted_step_ms=_ms(entry.predicted_step_seconds), step_ms_median=None,
        step_ms_p10=None, step_ms_p90=None, required_bytes=required, skipped=True, skip_reason=reason,
    )


def materialize(params: Sequence[ParamSpec], device: Device) -> NamedParameters:
    """One named parameter per spec on ``device``, each with a gradient (values unset)."""
    named = []
    for spec in params:
        param = torch.nn.Parameter(torch.empty(spec.shape, dtype=getattr(torch, spec.dtype),
                                               device=device.torch_device))
        param.grad = torch.empty_like(param)
        named.append((spec.name, param))
    return named


@torch.no_grad()
def reset_values(named: NamedParameters, seed: int) -> None:
    """Fill every parameter and gradient with the same random values for the same ``seed``."""
    generator = torch.Generator(device=named[0][1].device if named else "cpu").manual_seed(seed)
    for _, param in named:
        param.normal_(0.0, PARAM_SCALE, generator=generator)
        param.grad.normal_(0.0, GRAD_SCALE, generator=generator)


def measure_entry(entry: BenchEntry, named: NamedParameters, device: Device, steps: int, warmup: int,
                  required: int, tick: Callable[[str], None]) -> BenchResult:
    """Build the entry's optimizer, then measure its state, its step time and a step's peak."""
    device.release()
    before = device.allocated()
    optimizer = entry.build(named)
    optimizer.step()
    device.synchronize()
    tick(entry.label)
    measured_state = state_storage_bytes(optimizer)
    implementation = implementation_of(optimizer)
    allocator_state = None if before is None else device.allocated() - before
    for _ in range(warmup - 1):
        optimizer.step()
        tick(entry.label)
    times_ms = device.time_steps(optimizer.step, steps, lambda: tick(entry.label))
    _, peak = device.peak_during(optimizer.step)
    tick(entry.label)
    del optimizer
    device.release()
    return BenchResult(
        method=entry.label, predicted_state_bytes=entry.predicted_state_bytes, measured_state_bytes=measured_state,
        allocator_state_bytes=allocator_state, predicted_peak_transient_bytes=entry.predicted_peak_bytes,
        peak_transient_bytes=peak, predicted_step_ms=_ms(entry.predicted_step_seconds),
        step_ms_median=statistics.median(times_ms), step_ms_p10=percentile(times_ms, 0.10),
        step_ms_p90=percentile(times_ms, 0.90), required_bytes=required, implementation=implementation,
        traffic_bytes=entry.traffic_bytes,
    )


def percentile(values: Sequence[float], fraction: float) -> float:
    """The ``fraction`` quantile of ``values`` with linear interpolation between order statistics."""
    ordered = sorted(values)
    position = fraction * (len(ordered) - 1)
    low = math.floor(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else seconds * 1e3


# ----------------------------------------------------------------------------------------
# Files


def write_csv(report: BenchReport, path: str | Path) -> Path:
    """Write the results as CSV (pandas), atomically."""
    return atomic_write_text(path, report.to_frame().to_csv(index=False))


def write_plot(report: BenchReport, path: str | Path) -> Path:
    """State memory against step time, one labelled point per measured entry with its p10-p90
    spread as a horizontal bar, both axes logarithmic, the state axis in KiB/MiB/GiB; written
    atomically with the usual file mode."""
    pyplot = load_pyplot()
    from matplotlib.ticker import FuncFormatter

    points = [result for result in report.results if not result.skipped and result.step_ms_median]
    figure, axes = pyplot.subplots(figsize=(7, 5))
    for result in points:
        # a state of 0 bytes (sgd) sits on the axis floor of a logarithmic plot
        state = max(result.measured_state_bytes or 0, 1)
        median = result.step_ms_median
        spread = [[median - (result.step_ms_p10 or median)], [(result.step_ms_p90 or median) - median]]
        axes.errorbar(median, state, xerr=spread, fmt="o", capsize=3)
        axes.annotate(result.method, (median, state), textcoords="offset points", xytext=(4, 4), fontsize=8)
    axes.set_xscale("log")
    axes.set_yscale("log")
    axes.yaxis.set_major_formatter(FuncFormatter(lambda value, _: format_size(int(round(value)))))
    axes.set_xlabel(f"step time (ms): median of {report.steps} steps, bar from p10 to p90")
    axes.set_ylabel("optimizer state (measured)")
    axes.set_title(f"Optimizer state vs step time: {report.profile_name}\n"
                   f"{report.device_name} ({report.device}), {report.dtype} parameters", fontsize=10)
    axes.grid(True, which="both", alpha=0.3)
    target = Path(path)
    image_format = target.suffix.lstrip(".").lower() or "png"
    try:
        return atomic_write(target, lambda name: figure.savefig(name, format=image_format, dpi=120,
                                                                 bbox_inches="tight"))
    finally:
        pyplot.close(figure)


def check_plot_support() -> None:
    """MemplanError unless matplotlib (the ``plot`` extra) can be imported; called before a run."""
    load_pyplot()


def load_pyplot() -> Any:
    try:
        import matplotlib

        matplotlib.use("Agg")
        from matplotlib import pyplot
    except ImportError:
        raise MemplanError("--plot needs matplotlib: pip install 'memplan[plot]'") from None
    return pyplot


__all__ = ["BENCH_DTYPES", "BenchEntry", "BenchReport", "BenchResult", "BenchSetup", "bench_params",
           "check_dtype", "check_plot_support", "materialize", "measure_entry", "method_entry", "percentile", "plan_entry", "prepare_bench",
           "reset_values", "run_bench", "write_csv", "write_plot"]
