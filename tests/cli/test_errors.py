"""Bad input: one line on stderr, the right exit code, no traceback, no file written."""

import pytest

from memplan.loaders import load_profile
from memplan.planner import make_plan


@pytest.mark.parametrize("args, code, message", [
    (["analyze", "no-such-model"], 1, "no such file or bundled profile"),
    (["analyze", "missing.pt"], 1, "missing.pt: no such file or folder"),
    (["analyze", "gpt2", "--methods", "adamx"], 2, "unknown method 'adamx'"),
    (["analyze", "gpt2", "--methods", "smmf:sign_bits=3"], 2, "must be one of 1, 8"),
    (["analyze", "gpt2", "--format", "xml"], 2, "--format must be table or csv"),
    (["analyze", "gpt2", "--entry", "x"], 2, "--entry applies to a model.py"),
    (["analyze", "gpt2", "--bogus"], 2, "No such option"),
    (["analyze"], 2, "Missing argument"),
    (["frobnicate"], 2, "No such command"),
])
def test_errors_are_one_line_with_the_right_exit_code(run_memplan, tmp_path, args, code, message):
    result = run_memplan(*args)
    assert result.code == code
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("memplan: error: ") and message in lines[0], result.stderr
    assert "Traceback" not in result.stderr and result.stdout == ""
    assert not (tmp_path / ".memplan").exists()


def test_debug_shows_the_traceback(run_memplan):
    result = run_memplan("analyze", "no-such-model", "--debug")
    assert result.code == 1 and "Traceback" in result.stderr


def test_a_broken_model_file_names_its_line(run_memplan, tmp_path):
    (tmp_path / "model.py").write_text("import torch\n\ndef build_model():\n    return torch.nn.Linear(3)\n")
    result = run_memplan("analyze", "model.py")
    assert result.code == 1
    assert result.stderr.startswith("memplan: error: model.py:4: failed while building the model")
    assert len(result.stderr.strip().splitlines()) == 1


def test_version_and_help(run_memplan):
    assert run_memplan("--version").stdout.startswith("memplan ")
    helped = run_memplan("--help")
    assert helped.code == 0 and "analyze" in helped.stdout


def test_a_mistyped_value_in_a_hand_edited_plan_names_its_key(run_memplan, tmp_path):
    text = make_plan(load_profile("gpt2"), 64 * 2**20).to_yaml()
    # the first method whose hyperparameters hold an eps
    line = next(line for line in text.splitlines() if line.startswith("  ") and ": {" in line and "eps: 1.0e-08" in line)
    method = line.strip().split(":")[0]
    (tmp_path / "plan.yaml").write_text(text.replace(line, line.replace("eps: 1.0e-08", "eps: tiny")))
    result = run_memplan("show", "plan.yaml")
    assert result.code == 1 and result.stdout == ""
    assert result.stderr.splitlines() == [
        f"memplan: error: plan.yaml: hyperparameters.{method}.eps: expected a number, got 'tiny'"], result.stderr


@pytest.mark.parametrize("args", [
    ["plan", "gpt2", "--budget", "64MiB", "--out", "/proc/plan.yaml"],
    ["plan", "gpt2", "--budget", "64MiB", "--out", "afile/plan.yaml"],
    ["analyze", "gpt2", "--out", "afile/profile.yaml"],
    ["analyze", "gpt2", "--out", "."],
])
def test_an_output_that_cannot_be_written_is_one_line(run_memplan, tmp_path, args):
    (tmp_path / "afile").write_text("a file, not a folder\n")
    result = run_memplan(*args)
    assert result.code == 1 and result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("memplan: error: cannot write "), result.stderr
    assert sorted(path.name for path in tmp_path.iterdir()) == ["afile"]


def test_a_text_file_named_pt_is_not_a_checkpoint(run_memplan, tmp_path):
    (tmp_path / "x.pt").write_text("hello, not a checkpoint\n")
    result = run_memplan("analyze", "x.pt")
    assert result.code == 1 and result.stdout == ""
    assert result.stderr.strip() == ("memplan: error: x.pt: not a PyTorch checkpoint (torch.save writes a zip "
                                     "archive or a pickle; this file starts with 'hello, n')")
