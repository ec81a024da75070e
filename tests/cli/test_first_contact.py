"""What a new user sees first: analyze leads with the summary, tables fit an 80-column terminal."""

from memplan.cli.analyze_cmd import PARAMS_SHOWN


def test_analyze_leads_with_the_summary_and_each_methods_key_options(run_memplan):
    result = run_memplan("analyze", "resnet50")
    assert result.code == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == "resnet50: 161 tensors, 25.6M parameters (25,557,032), 97.49 MiB"
    assert lines[1].startswith("Optimizer state over the trainable parameters (step counters excluded)")
    rows = {line.split("│")[1].strip(): line for line in lines if line.startswith("│")}
    assert "momentum=0.9" in rows["sm3"] and "50.2%" in rows["sm3"]
    assert "beta1=none" in rows["adafactor"]
    assert result.stdout.index("Optimizer state") < result.stdout.index("Parameters")
    assert "... and 141 more parameters: --params lists all" in " ".join(result.stdout.split())
    assert sum(1 for line in lines if line.startswith("│ layer")) == PARAMS_SHOWN - 3
    every = run_memplan("analyze", "resnet50", "--params")
    assert "more parameters" not in every.stdout and "fc.bias" in every.stdout


def test_bench_fits_80_columns_without_cutting_a_header(run_memplan, tmp_path):
    result = run_memplan("bench", "resnet18-cifar", "--methods", "sgd,smmf:sign_bits=8", "--steps", "1",
                         env={"COLUMNS": "80"})
    assert result.code == 0, result.stderr
    assert all(len(line) <= 80 for line in result.stdout.splitlines())
    assert "…" not in result.stdout and "smmf:sign_bits=8" in result.stdout and "AdamW" in result.stdout
    analyzed = run_memplan("analyze", "gpt2", env={"COLUMNS": "80"})
    assert analyzed.code == 0 and all(len(line) <= 80 for line in analyzed.stdout.splitlines())
