"""``memplan bench``: JSON, table, CSV and plot outputs, skips, calibration, and one-line errors."""

import csv
import io
import re

import pytest

from memplan.methods import BENCH_METHODS
from memplan.profile import ModelProfile, ParamSpec
from memplan.census import method_census
from memplan.costmodel import DeviceProfile, predict_seconds

TINY = ModelProfile("tiny", "test", (
    ParamSpec("embed.weight", (100, 16), kind="embedding"),
    ParamSpec("conv.weight", (8, 4, 3, 3), kind="conv"),
    ParamSpec("fc.weight", (64, 32), kind="linear"),
    ParamSpec("fc.bias", (64,), kind="bias"),
))
JSON_FIELDS = {"method", "predicted_state_bytes", "measured_state_bytes", "peak_transient_bytes",
               "predicted_step_ms", "step_ms_median", "step_ms_p10", "step_ms_p90", "skipped"}


@pytest.fixture
def tiny_profile(tmp_path):
    return TINY.save(tmp_path / "tiny.yaml")


def test_json_is_one_document_with_every_field(run_memplan, tmp_path, tiny_profile):
    result = run_memplan("bench", tiny_profile, "--steps", "2", "--json", "--out", "results.csv",
                         "--plot", "bench.png")
    assert result.code == 0, result.stderr
    document = result.json()
    assert {"device", "torch", "results"} <= set(document) and document["device"] == "cpu"
    assert [record["method"] for record in document["results"]] == list(BENCH_METHODS)
    for record in document["results"]:
        assert JSON_FIELDS <= set(record) and record["skipped"] is False
        assert record["measured_state_bytes"] == record["predicted_state_bytes"]
        assert record["step_ms_p10"] <= record["step_ms_median"] <= record["step_ms_p90"]
    rows = list(csv.DictReader(io.StringIO((tmp_path / "results.csv").read_text())))
    assert [row["method"] for row in rows] == list(BENCH_METHODS)
    assert [int(row["measured_state_bytes"]) for row in rows] == \
        [record["measured_state_bytes"] for record in document["results"]]
    assert "results written to results.csv" in result.stderr
    if (tmp_path / "bench.png").exists():
        assert (tmp_path / "bench.png").read_bytes()[:4] == b"\x89PNG"
    else:
        assert "matplotlib" in result.stderr


def test_table_and_skip_notes(run_memplan, tiny_profile):
    result = run_memplan("bench", tiny_profile, "--steps", "1", "--methods", "adam,smmf:sign_bits=8,et_inf",
                         "--memory", "40KiB")
    assert result.code == 0, result.stderr
    rows = {line.split("│")[1].strip(): line for line in result.stdout.splitlines() if line.startswith("│")}
    assert set(rows) == {"adam", "smmf:sign_bits=8", "et_inf"}
    assert "skipped" in rows["adam"] and "exact" in rows["et_inf"]
    assert re.search(r"adam: skipped: needs .* \(params .* \+ grads .* \+ state 31.25 KiB \+ transient .*\) "
                     r"but 40 KiB is free", " ".join(result.stderr.split()))


def test_calibrate_saves_a_profile_that_later_runs_use(run_memplan, tmp_path, tiny_profile):
    calibrated = run_memplan("bench", "--calibrate", "--json")
    assert calibrated.code == 0, calibrated.stderr
    saved = tmp_path / ".memplan" / "device.yaml"
    assert calibrated.json()["path"] == ".memplan/device.yaml" and saved.is_file()
    device = DeviceProfile.load(saved)
    assert device.kind == "cpu" and device.memory_bandwidth > 1e8 and device.strided_norm_bandwidth
    result = run_memplan("bench", tiny_profile, "--steps", "1", "--methods", "smmf", "--json")
    assert result.code == 0, result.stderr
    document = result.json()
    assert document["device_profile_origin"] == ".memplan/device.yaml"
    assert document["device_profile"] == device.to_dict()
    census = method_census("smmf", [(spec.shape, "float32") for spec in TINY.params], device.cache_bytes)
    expected_ms = predict_seconds(census, device).seconds * 1e3
    assert document["results"][0]["predicted_step_ms"] == pytest.approx(expected_ms, rel=1e-12)


def test_source_defaults_to_the_last_analyzed_profile(run_memplan, tiny_profile):
    assert run_memplan("analyze", tiny_profile).code == 0
    result = run_memplan("bench", "--methods", "sgd", "--steps", "1", "--json")
    assert result.code == 0, result.stderr
    assert result.json()["profile"] == "tiny" and result.json()["results"][0]["measured_state_bytes"] == 0


@pytest.mark.parametrize("args, code, message", [
    (["--methods", "adamx"], 2, "unknown method 'adamx'"),
    (["--dtype", "float16"], 2, "--dtype must be float32 or bfloat16"),
    (["--device", "tpu"], 2, "unknown device 'tpu'"),
    (["--memory", "64M"], 2, "ambiguous unit"),
    (["--steps", "0"], 2, "--steps and --warmup must be at least 1"),
    (["--device-profile", "nowhere"], 1, "no device profile file or bundled device 'nowhere'"),
])
def test_bad_options_are_one_line_errors(run_memplan, tiny_profile, args, code, message):
    result = run_memplan("bench", tiny_profile, *args)
    assert result.code == code
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("memplan: error: ") and message in lines[0], result.stderr
    assert "Traceback" not in result.stderr and result.stdout == ""


def test_no_source_and_no_saved_profile_is_a_usage_error(run_memplan):
    result = run_memplan("bench")
    assert result.code == 2 and "run `memplan analyze SOURCE` first" in result.stderr


def test_cuda_without_cuda_is_a_one_line_error(run_memplan, tiny_profile):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    result = run_memplan("bench", tiny_profile, "--device", "cuda:0")
    assert result.code == 1 and "CUDA is not available" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_help_lists_the_default_methods(run_memplan):
    result = run_memplan("bench", "--help")
    assert result.code == 0
    assert ",".join(BENCH_METHODS) in " ".join(result.stdout.split()).replace(", ", ",")


@pytest.mark.cuda
def test_cuda_bench_runs_and_state_is_exact(run_memplan, tiny_profile):
    import torch

    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU")
    result = run_memplan("bench", tiny_profile, "--device", "cuda", "--steps", "3", "--json")
    assert result.code == 0, result.stderr
    for record in result.json()["results"]:
        assert record["measured_state_bytes"] == record["predicted_state_bytes"]
        assert record["allocator_state_bytes"] % 512 == 0


def test_a_plan_is_benchmarked_only_when_given(run_memplan, tmp_path, tiny_profile):
    assert run_memplan("plan", tiny_profile, "--budget", "4KiB").code == 0
    result = run_memplan("bench", tiny_profile, "--methods", "adam", "--steps", "2", "--plan", "plan.yaml", "--json")
    assert result.code == 0, result.stderr
    records = {record["method"]: record for record in result.json()["results"]}
    assert set(records) == {"adam", "plan (plan.yaml)"}
    planned = records["plan (plan.yaml)"]
    assert planned["measured_state_bytes"] == planned["predicted_state_bytes"] <= 4096
    # a plan.yaml left in the working directory (the README's set-up writes one) is not picked up
    other = run_memplan("bench", "resnet18-cifar", "--methods", "sgd", "--steps", "1", "--json")
    assert other.code == 0, other.stderr
    assert [record["method"] for record in other.json()["results"]] == ["sgd"]
    mismatched = run_memplan("bench", "resnet18-cifar", "--methods", "sgd", "--steps", "1", "--plan", "plan.yaml")
    assert mismatched.code == 1 and "does not fit this model" in mismatched.stderr


def test_a_plan_benched_without_an_adam_row_has_no_ratios(run_memplan, tiny_profile):
    assert run_memplan("plan", tiny_profile, "--budget", "4KiB").code == 0
    result = run_memplan("bench", tiny_profile, "--methods", "sgd,smmf", "--steps", "1", "--plan", "plan.yaml",
                         "--json")
    assert result.code == 0, result.stderr
    records = result.json()["results"]
    assert [record["method"] for record in records] == ["sgd", "smmf", "plan (plan.yaml)"]
    assert all(record["ratio_to_adamw"] is None for record in records)
    table = run_memplan("bench", tiny_profile, "--methods", "sgd", "--steps", "1", "--plan", "plan.yaml")
    assert table.code == 0 and "plan (plan.yaml)" in table.stdout, table.stderr


@pytest.mark.parametrize("args", [
    ["--out", "/proc/results.csv"],
    ["--out", "afile/results.csv"],
    ["--plot", "afile/bench.png"],
    ["--out", "."],
])
def test_an_output_that_cannot_be_written_fails_before_measuring(run_memplan, tmp_path, tiny_profile, args):
    (tmp_path / "afile").write_text("a file, not a folder\n")
    result = run_memplan("bench", tiny_profile, "--steps", "1", *args)
    assert result.code == 1 and result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("memplan: error: cannot write "), result.stderr
    assert "internal error" not in result.stderr


def test_outputs_go_into_new_folders_with_the_usual_mode(run_memplan, tmp_path, tiny_profile):
    import os

    previous = os.umask(0o022)
    try:
        result = run_memplan("bench", tiny_profile, "--methods", "sgd,adam", "--steps", "2",
                             "--out", "new/results.csv", "--plot", "new/bench.png")
    finally:
        os.umask(previous)
    assert result.code == 0, result.stderr
    assert "sgd" in result.stdout
    for name in ("results.csv", "bench.png"):
        assert (tmp_path / "new" / name).stat().st_mode & 0o777 == 0o644
    assert sorted(path.name for path in (tmp_path / "new").iterdir()) == ["bench.png", "results.csv"]


def test_world_size_spawns_ranks_and_compares_every_rank(run_memplan, tiny_profile):
    """fc.bias (64,) and fc.weight (64, 32) split evenly, conv.weight (8, ...) too, embed (100, 16)
    in halves: each rank's measured state equals its prediction; came is refused, not run."""
    result = run_memplan("bench", tiny_profile, "--world-size", "2", "-m", "smmf,sm3:momentum=0.9,came",
                         "--steps", "1", "--json")
    assert result.code == 0, result.stderr
    document = result.json()
    assert document["world_size"] == 2 and document["backend"] == "gloo"
    by_method = {record["method"]: record for record in document["results"]}
    collective = document["collective"]
    for method in ("smmf", "sm3:momentum=0.9"):
        record = by_method[method]
        assert record["exact"] is True and len(record["measured_state_bytes"]) == 2
        assert record["collectives"] == record["predicted_collectives"] == 1
        assert record["reduced_bytes"] == record["predicted_reduced_bytes"] > 0
        # the time model's collective term: latency + an all-reduce's bus bytes (1x the buffer on 2 ranks)
        term_ms = 1e3 * (collective["latency_s"] + record["reduced_bytes"] / collective["bus_bandwidth_bytes_per_s"])
        assert record["predicted_collective_ms"] == pytest.approx(term_ms, rel=1e-9) and term_ms > 0
        if record["predicted_step_ms"] is not None:   # with a device profile: compute + the term, per rank
            assert len(record["predicted_step_ms"]) == 2 and min(record["predicted_step_ms"]) > term_ms
    assert "cannot step sharded" in by_method["came"]["skip_reason"]
    refused = run_memplan("bench", tiny_profile, "--world-size", "2", "--dtype", "bfloat16")
    assert refused.code == 2 and "--dtype" in refused.stderr
