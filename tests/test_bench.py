"""memplan.bench on CPU with a small profile: exact state bytes, consistent figures, skips, files."""

import statistics

import pandas
import pytest
import torch

from memplan.bench import (BenchEntry, bench_params, check_dtype, materialize, method_entry, percentile,
                           reset_values, run_bench, write_csv, write_plot)
from memplan.errors import UsageError
from memplan.methods import param_state
from memplan.profile import ModelProfile, ParamSpec
from memplan.costmodel import load_bundled_device
from memplan.devices import CpuDevice

PROFILE = ModelProfile("tiny", "test", (
    ParamSpec("embed.weight", (100, 16), kind="embedding"),
    ParamSpec("conv.weight", (8, 4, 3, 3), kind="conv"),
    ParamSpec("fc.weight", (64, 32), kind="linear"),
    ParamSpec("fc.bias", (64,), kind="bias"),
    ParamSpec("frozen.weight", (16, 16), kind="linear", trainable=False),
))
EXACT_SPECS = ["adam", "adagrad", "sgd:momentum=0.9", "adafactor", "came", "sm3", "sm3:impl=pytorch_optimizer",
               "smmf", "et2", "et_inf"]
RESULT_FIELDS = {"method", "predicted_state_bytes", "measured_state_bytes", "peak_transient_bytes",
                 "predicted_step_ms", "step_ms_median", "step_ms_p10", "step_ms_p90", "skipped"}
CPU_GENERIC = load_bundled_device("cpu-generic")


def _entries(specs, dtype="float32"):
    params = bench_params(PROFILE, dtype)
    return [method_entry(spec, params, CPU_GENERIC) for spec in specs]


@pytest.fixture(scope="module")
def report():
    pytest.importorskip("pytorch_optimizer")
    return run_bench(PROFILE, _entries(EXACT_SPECS), "cpu", steps=3, device_profile=CPU_GENERIC)


def test_measured_state_bytes_equal_the_prediction_exactly(report):
    assert [result.method for result in report.results] == EXACT_SPECS
    for result in report.results:
        assert result.measured_state_bytes == result.predicted_state_bytes, result.method
    assert report.results[0].predicted_state_bytes == 8 * sum(spec.numel for spec in PROFILE.trainable_params)


def test_every_figure_is_present_and_consistent(report):
    param_bytes = sum(spec.nbytes for spec in PROFILE.trainable_params)
    document = report.to_json()
    assert document["device"] == "cpu" and document["torch"] == torch.__version__
    for record, result in zip(document["results"], report.results):
        assert RESULT_FIELDS <= set(record) and record["skipped"] is False
        assert 0 < record["step_ms_p10"] <= record["step_ms_median"] <= record["step_ms_p90"]
        assert record["predicted_step_ms"] > 0 and record["peak_transient_bytes"] >= 0
        assert record["required_bytes"] == (2 * param_bytes + record["predicted_state_bytes"]
                                            + record["predicted_peak_transient_bytes"])
        assert record["step_error"] == pytest.approx(record["predicted_step_ms"] / record["step_ms_median"] - 1)
        assert record["ratio_to_adamw"] == pytest.approx(result.step_ms_median / report.results[0].step_ms_median)
        assert all(isinstance(record[key], int) for key in ("predicted_state_bytes", "measured_state_bytes",
                                                            "peak_transient_bytes"))
    assert document["results"][0]["ratio_to_adamw"] == 1.0


def test_predicted_transient_peak_matches_the_profiler(report):
    for result in report.results:
        slack = max(64, result.peak_transient_bytes // 100)  # a few scalar tensors the census does not see
        assert abs(result.peak_transient_bytes - result.predicted_peak_transient_bytes) <= slack, result.method


def test_frozen_parameters_are_not_materialized():
    named = materialize(bench_params(PROFILE, "bfloat16"), CpuDevice())
    assert [(name, tuple(param.shape)) for name, param in named] == \
        [(spec.name, spec.shape) for spec in PROFILE.trainable_params]
    assert all(param.dtype == torch.bfloat16 and param.grad.dtype == torch.bfloat16 for _, param in named)


def test_every_method_starts_from_the_same_values():
    first = materialize(bench_params(PROFILE, "float32"), CpuDevice())
    second = materialize(bench_params(PROFILE, "float32"), CpuDevice())
    reset_values(first, seed=3)
    torch.optim.SGD([param for _, param in first], lr=1.0).step()
    reset_values(first, seed=3)
    reset_values(second, seed=3)
    for (_, one), (_, two) in zip(first, second):
        assert torch.equal(one, two) and torch.equal(one.grad, two.grad)
    embedding = first[0][1]
    assert 0.01 < float(embedding.detach().std()) < 0.03 and 5e-4 < float(embedding.grad.std()) < 2e-3


def test_a_method_that_would_not_fit_is_skipped_with_the_figures():
    entries = _entries(["adam", "et_inf"])
    param_bytes = sum(spec.nbytes for spec in PROFILE.trainable_params)
    memory = entries[1].predicted_state_bytes + entries[1].predicted_peak_bytes + 2 * param_bytes
    result = run_bench(PROFILE, entries, "cpu", steps=1, memory_bytes=memory, device_profile=CPU_GENERIC)
    adam, et_inf = result.results
    assert adam.skipped and adam.measured_state_bytes is None and adam.step_ms_median is None
    assert adam.required_bytes > memory and "but" in adam.skip_reason and "state 31.25 KiB" in adam.skip_reason
    assert not et_inf.skipped and et_inf.measured_state_bytes == et_inf.predicted_state_bytes
    assert result.ratio_to_adamw(et_inf) is None


def test_bf16_parameters_keep_exact_state():
    specs = ["adam", "smmf", "et2"]
    result = run_bench(PROFILE, _entries(specs, "bfloat16"), "cpu", dtype="bfloat16", steps=1)
    assert result.dtype == "bfloat16"
    assert [(r.measured_state_bytes == r.predicted_state_bytes) for r in result.results] == [True] * len(specs)


def test_any_optimizer_can_be_an_entry():
    params = bench_params(PROFILE, "float32")
    entry = BenchEntry("heavy-ball", lambda named: torch.optim.SGD(named, lr=0.1, momentum=0.5),
                       predicted_state_bytes=sum(spec.nbytes for spec in params), predicted_step_seconds=None,
                       predicted_peak_bytes=0)
    result = run_bench(PROFILE, [entry], "cpu", steps=2).results[0]
    assert result.method == "heavy-ball" and result.measured_state_bytes == result.predicted_state_bytes
    assert result.predicted_step_ms is None and result.step_error is None


def test_percentile_interpolates_like_statistics_quantiles():
    values = [5.0, 1.0, 4.0, 2.0, 3.0, 10.0]
    deciles = statistics.quantiles(values, n=10, method="inclusive")
    assert percentile(values, 0.1) == pytest.approx(deciles[0])
    assert percentile(values, 0.9) == pytest.approx(deciles[-1])
    assert percentile([7.0], 0.9) == 7.0


@pytest.mark.parametrize("dtype", ["float16", "int8", "nonsense"])
def test_only_float32_and_bfloat16_parameters(dtype):
    with pytest.raises(UsageError, match="--dtype must be float32 or bfloat16"):
        check_dtype(dtype)
    assert check_dtype("bf16") == "bfloat16"


def test_csv_and_plot_files(report, tmp_path):
    frame = pandas.read_csv(write_csv(report, tmp_path / "out" / "results.csv"))
    assert list(frame["method"]) == EXACT_SPECS
    assert RESULT_FIELDS <= set(frame.columns)
    assert (frame["measured_state_bytes"] == frame["predicted_state_bytes"]).all()
    pytest.importorskip("matplotlib")
    plot = write_plot(report, tmp_path / "bench.png")
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert [path.name for path in tmp_path.iterdir() if path.name.startswith(".")] == []


@pytest.mark.cuda
def test_cuda_state_is_exact_and_the_allocator_rounds_each_tensor_to_512_bytes():
    from memplan.costmodel import default_device_profile
    from memplan.devices import parse_device

    device = parse_device("cuda")
    params = bench_params(PROFILE, "float32")
    specs = ["adam", "adam:impl=fused", "adafactor", "smmf", "et2", "sm3", "et_inf"]
    entries = [method_entry(spec, params, default_device_profile(device)) for spec in specs]
    run_bench(PROFILE, entries, device, steps=1)  # creates what lives as long as the process (SMMF's sign table)
    held = torch.cuda.memory_allocated(device.index)
    report = run_bench(PROFILE, entries, device, steps=3)
    for spec, result in zip(specs, report.results):
        tensors = [tensor for param in params for tensor in param_state(spec, param.shape, param.dtype).tensors]
        rounded = sum(-(-tensor.nbytes // 512) * 512 for tensor in tensors)
        step_counters = 512 * len(params)  # torch's fused Adam keeps a 0-d step tensor on the GPU
        assert result.measured_state_bytes == result.predicted_state_bytes, result.method
        # the allocator's view is the same tensors, each rounded up to 512 bytes; no library
        # workspace (cuBLAS allocates 32 MiB on first use) is counted as state
        assert rounded <= result.allocator_state_bytes <= rounded + step_counters, result.method
        assert 0 < result.step_ms_p10 <= result.step_ms_median <= result.step_ms_p90
        assert result.peak_transient_bytes >= 0
    assert torch.cuda.memory_allocated(device.index) == held  # a run leaves nothing behind


def test_a_plan_is_one_more_entry_with_exact_bytes():
    from memplan.bench import plan_entry
    from memplan.plan import PlanError
    from memplan.planner import make_plan

    plan = make_plan(PROFILE, 6000)
    entry = plan_entry(plan, bench_params(PROFILE, "float32"), CPU_GENERIC)
    (result,) = run_bench(PROFILE, [entry], "cpu", steps=2, device_profile=CPU_GENERIC).results
    assert result.measured_state_bytes == result.predicted_state_bytes == plan.state_bytes
    assert result.predicted_step_ms is not None and result.peak_transient_bytes is not None
    with pytest.raises(PlanError, match="is bfloat16 in the model but float32 in the plan"):
        plan_entry(plan, bench_params(PROFILE, "bfloat16"), CPU_GENERIC)


@pytest.mark.parametrize("spec", ["smmf", "smmf:impl=compiled", "sm3:momentum=0,impl=compiled", "adam"])
def test_a_plan_is_predicted_as_its_methods_are(spec):
    """A plan of one method spec is predicted as that spec's own entry: its step counted where it
    runs eager, and as the one-pass kernel where the spec runs one (a census on meta tensors cannot
    run a kernel, and had counted a compiled plan as the eager step)."""
    from memplan.bench import method_entry, plan_entry
    from memplan.planner import assigned_plan

    params = bench_params(PROFILE, "float32")
    plan = assigned_plan(PROFILE, lambda name: spec)
    planned, alone = plan_entry(plan, params, CPU_GENERIC), method_entry(spec, params, CPU_GENERIC)
    assert planned.predicted_step_seconds == pytest.approx(alone.predicted_step_seconds, rel=1e-12)
    assert planned.predicted_peak_bytes == alone.predicted_peak_bytes
    assert planned.traffic_bytes == alone.traffic_bytes


@pytest.mark.parametrize("spec", ["smmf", "smmf:impl=compiled"])
def test_a_plan_on_ranks_is_predicted_as_its_methods_are(spec):
    """On ranks too, a plan of one method spec gets that spec's compute prediction for each rank's
    shards (before, a plan got none)."""
    from memplan.bench_ranks import _Job, _predicted_compute_seconds
    from memplan.planner import assigned_plan
    from memplan.sharding import Sharding

    job = _Job(profile={}, labels=[], plan_path=None, device="cpu", steps=1, warmup=1, device_profile="cpu-generic",
               port=0, out_path="")
    sharding, params = Sharding("fsdp2", 2), PROFILE.trainable_params
    plan = assigned_plan(PROFILE, lambda name: spec)
    for rank in range(2):
        planned = _predicted_compute_seconds("plan", plan, params, sharding, job, rank)
        alone = _predicted_compute_seconds(spec, None, params, sharding, job, rank)
        assert planned is not None and planned == pytest.approx(alone, rel=1e-12) and planned > 0


def test_prepare_bench_assembles_entries_and_the_device_profile(tmp_path, monkeypatch):
    from memplan.bench import BenchSetup, prepare_bench
    from memplan.methods import BENCH_METHODS
    from memplan.planner import make_plan

    monkeypatch.chdir(tmp_path)
    source = PROFILE.save(tmp_path / "tiny.yaml")
    setup = prepare_bench(source)
    assert isinstance(setup, BenchSetup) and setup.model == PROFILE and setup.device == CpuDevice()
    assert [entry.label for entry in setup.entries] == list(BENCH_METHODS) and setup.dtype == "float32"
    assert setup.device_profile == CPU_GENERIC and setup.device_profile_origin == "bundled cpu-generic"
    make_plan(PROFILE, 6000).save(tmp_path / "plan.yaml")
    chosen = prepare_bench(str(source), ["adam", "smmf:sign_bits=8"], "cpu", "fp32", "cpu-generic", "plan.yaml")
    assert [entry.label for entry in chosen.entries] == ["adam", "smmf:sign_bits=8", "plan (plan.yaml)"]
    assert chosen.dtype == "float32" and chosen.device_profile_origin == "cpu-generic"
    assert prepare_bench(source, ["adam"], dtype="bf16").dtype == "bfloat16"
    report = prepare_bench(source, ["sgd"]).run(steps=1)
    assert [result.method for result in report.results] == ["sgd"] and report.device_profile == CPU_GENERIC
    with pytest.raises(UsageError, match="--dtype must be"):
        prepare_bench(source, dtype="float16")


def test_noisy_step_times_are_warned_about():
    from memplan.bench import BenchReport, BenchResult

    def result(method: str, median: float, p90: float) -> BenchResult:
        return BenchResult(method, 0, 0, None, None, None, None, median, median * 0.9, p90, 0)

    report = BenchReport("cpu", "cpu", "2", "tiny", "float32", 5, 1, 1, 0, None, "",
                         (result("adam", 10.0, 12.0), result("sm3", 2.0, 52.0)))
    warnings = report.noise_warnings()
    assert len(warnings) == 1 and warnings[0].startswith("sm3: step times are noisy (p90 26.0x the median)")


def test_each_row_records_what_stepped_it(report):
    """The JSON and CSV records say which implementation ran: memplan's resolved impl, torch's kernel."""
    implementations = {record["method"]: record["implementation"] for record in report.records()}
    assert implementations["smmf"] == "eager"
    assert implementations["sm3:impl=pytorch_optimizer"] == "pytorch_optimizer"
    assert all(value for value in implementations.values())
    assert "implementation" in report.to_frame().columns


def test_achieved_bandwidth_is_the_census_traffic_over_the_measured_step(report):
    """Each row's GB/s is its census's memory traffic over its median step, and its share of the
    profile's memory bandwidth; a one-pass kernel's traffic is the byte model's compulsory bytes."""
    from memplan.census import method_census

    params = bench_params(PROFILE, "float32")
    shapes = [(param.shape, param.dtype) for param in params]
    for record in report.records():
        census = method_census(record["method"], shapes, CPU_GENERIC.cache_bytes)
        traffic = census.memory_traffic(CPU_GENERIC.write_allocate)
        assert record["traffic_bytes"] == traffic > 0
        assert record["achieved_bytes_per_second"] == pytest.approx(traffic / (record["step_ms_median"] / 1e3))
        assert record["memory_bandwidth_share"] == pytest.approx(
            record["achieved_bytes_per_second"] / CPU_GENERIC.memory_bandwidth)
    compiled = method_entry("smmf:impl=compiled", params, None)
    assert compiled.traffic_bytes == sum(param_state("smmf:impl=compiled", param.shape, param.dtype).bytes_moved
                                         for param in params)


def test_no_bandwidth_without_a_measured_step_or_a_device_profile():
    from memplan.bench import BenchReport, BenchResult

    measured = BenchResult("adam", 0, 0, None, None, None, None, 2.0, 1.8, 2.2, 0, traffic_bytes=4_000_000)
    unmeasured = BenchResult("sm3", 0, None, None, None, None, None, None, None, None, 0, skipped=True,
                             traffic_bytes=4_000_000)
    assert measured.achieved_bandwidth == pytest.approx(2e9) and unmeasured.achieved_bandwidth is None
    without_profile = BenchReport("cpu", "cpu", "2", "tiny", "float32", 5, 1, 1, 0, None, "", (measured,))
    assert without_profile.bandwidth_share(measured) is None
    with_profile = BenchReport("cpu", "cpu", "2", "tiny", "float32", 5, 1, 1, 0, CPU_GENERIC, "", (measured,))
    assert with_profile.bandwidth_share(measured) == pytest.approx(2e9 / CPU_GENERIC.memory_bandwidth)
