import json

import pytest
import yaml

from memplan.priors import load_priors
from tests.conftest import REPO

TINY = REPO / "tests" / "fixtures" / "tiny_trainable.py"


def test_trial_writes_its_table_runs_plot_and_priors_that_plan_reads(run_memplan, tmp_path):
    result = run_memplan("trial", TINY, "--methods", "smmf,et2", "--steps", "8", "--seeds", "2", "--probes", "1",
                         "--threads", "1")
    assert result.code == 0, result.stderr
    assert "Methods" in result.stdout and "smmf" in result.stdout and "Per-role probes" in result.stdout
    assert "Scale unit: L_SGD - L_Adam = " in result.stdout and " ± " in result.stdout  # two seeds
    for name in ("trial.csv", "trial.png", "priors.yaml"):
        assert (tmp_path / ".memplan" / name).stat().st_size > 0
    assert yaml.safe_load((tmp_path / ".memplan" / "priors.yaml").read_text())["memplan_priors"] == 3
    load_priors(tmp_path / ".memplan" / "priors.yaml")
    planned = run_memplan("plan", TINY, "--budget", "2KiB", "--priors", ".memplan/priors.yaml")
    assert planned.code == 0, planned.stderr


def test_trial_json_is_one_document(run_memplan):
    result = run_memplan("trial", TINY, "--methods", "smmf", "--steps", "3", "--probes", "0", "--no-plot", "--json")
    assert result.code == 0, result.stderr
    import json

    document = json.loads(result.stdout)
    assert [row["method"] for row in document["methods"]] == ["adam", "sgd", "smmf"]
    assert document["complete"] is True and document["probes"] == []
    losses = {row["method"]: row["loss"] for row in document["methods"]}
    assert document["scale_unit"] == pytest.approx(losses["sgd"] - losses["adam"])
    assert document["scale_unit_se"] is None  # one seed


def test_no_refine_trains_the_grid_only(run_memplan, tmp_path):
    import pandas as pd

    counts = {}
    for flag in ("--refine", "--no-refine"):
        result = run_memplan("trial", TINY, "--methods", "smmf", "--steps", "3", "--probes", "0", "--no-plot",
                             "--widen", "0", flag, "--out-dir", flag)
        assert result.code == 0, result.stderr
        counts[flag] = len(pd.read_csv(tmp_path / flag / "trial.csv"))
    assert counts["--no-refine"] == 9  # three rates of adam, sgd and smmf
    assert counts["--refine"] >= counts["--no-refine"]


def test_where_sgd_beats_adam_the_priors_are_on_adams_loss(run_memplan, tmp_path):
    bowl = REPO / "tests" / "fixtures" / "sgd_wins.py"
    result = run_memplan("trial", bowl, "--methods", "adagrad", "--steps", "30", "--clip", "0", "--probes", "0",
                         "--no-plot", "--json")
    assert result.code == 0, result.stderr
    document = json.loads(result.stdout)
    assert document["scale"] == "adam_loss" and document["scale_unit"] < 0
    assert any("no unit" in note for note in document["notes"])
    assert any("Adam's loss instead" in note for note in document["notes"])
    losses = {row["method"]: row["loss"] for row in document["methods"]}
    qualities = {row["method"]: row["quality"] for row in document["methods"]}
    for method, loss in losses.items():  # 1 - (L - L_Adam) / L_Adam
        assert qualities[method] == pytest.approx(1 - (loss - losses["adam"]) / losses["adam"])
    written = yaml.safe_load((tmp_path / ".memplan" / "priors.yaml").read_text())
    assert written["scale"] == "adam_loss" and written["methods"]["sgd"]["quality"] > 1  # SGD won
    # the plan it steers prefers what trained best here, and says what it could not score
    planned = run_memplan("plan", bowl, "--budget", "1KiB", "--priors", ".memplan/priors.yaml", "--json")
    assert planned.code == 0, planned.stderr
    assert json.loads(planned.stdout)["parameters"][0]["method"] == "sgd"
    assert "left out of the plan" in planned.stderr and "smmf" in planned.stderr
    # the human-readable table names the scale
    shown = run_memplan("trial", bowl, "--methods", "adagrad", "--steps", "30", "--clip", "0", "--probes", "0",
                        "--no-plot", "--out-dir", "again")
    assert "quality 1 = Adam, 1 - x = a loss x times above Adam's" in shown.stdout
    assert "too small a unit: not used" in shown.stdout


def test_jobs_train_methods_in_worker_processes(run_memplan, tmp_path):
    import pandas as pd

    result = run_memplan("trial", TINY, "--methods", "smmf,et2", "--steps", "4", "--probes", "1", "--no-plot",
                         "--jobs", "2")
    assert result.code == 0, result.stderr
    runs = pd.read_csv(tmp_path / ".memplan" / "trial.csv")
    assert {"adam", "sgd", "smmf", "et2"} <= set(runs["arm"]) and (runs["kind"] == "probe").sum() == 4


def test_trial_verifies_a_plan(run_memplan, tmp_path):
    assert run_memplan("plan", TINY, "--budget", "1KiB", "--out", "plan.yaml").code == 0
    result = run_memplan("trial", TINY, "--plan", "plan.yaml", "--methods", "smmf,et2,adagrad", "--steps", "3",
                         "--no-plot")
    assert result.code == 0, result.stderr
    rows = [line.split("│")[1].strip() for line in result.stdout.splitlines() if line.count("│") > 3]
    assert "plan" in rows and "adagrad" not in rows
    assert not (tmp_path / ".memplan" / "priors.yaml").exists()


def test_bad_trial_inputs_are_one_line_each(run_memplan, tmp_path):
    plain = tmp_path / "plain.py"
    plain.write_text("import torch\nmodel = torch.nn.Linear(2, 2)\n")
    cases = [
        (("trial", plain, "--steps", "2"), 1, "memplan trial needs training_batch() and loss()"),
        (("trial", "gpt2"), 2, "trial needs a model.py"),
        (("trial", TINY, "--lr-factors", "a,b"), 2, "--lr-factors must be comma-separated numbers"),
        (("trial", TINY, "--lr-factors", "1/0"), 2, "--lr-factors must be comma-separated numbers"),
        (("trial", TINY, "--widen", "-1"), 1, "--widen must be >= 0"),
        (("trial", TINY, "--jobs", "0"), 1, "--jobs must be at least 1"),
        (("trial", TINY, "--steps", "0"), 1, "--steps must be at least 1"),
        (("trial", TINY, "--methods", "adam,lion"), 2, "unknown method"),
        (("trial", TINY, "--out-dir", "/proc/x"), 1, "/proc/x"),
    ]
    for args, code, message in cases:
        result = run_memplan(*args)
        assert result.code == code, (args, result.stderr)
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and message in lines[0] and "Traceback" not in result.stderr, (args, result.stderr)


def test_the_default_grid_is_the_library_default_and_takes_fractions():
    from memplan.cli.trial_cmd import _factors
    from memplan.training import Schedule
    from memplan.trial import TrialSettings

    assert _factors("1/3,1,3") == TrialSettings(Schedule(steps=1)).lr_factors
    assert _factors("0.5, 2") == (0.5, 2.0)
