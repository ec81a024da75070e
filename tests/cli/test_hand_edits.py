"""Edits and flags memplan would otherwise ignore are refused, each in one line naming the key."""

import pytest

from memplan.loaders import load_profile
from memplan.planner import make_plan


def _edited_plan(tmp_path, key, value):
    """The plan of resnet18-cifar at 1 MiB with the first parameter's ``key`` set to ``value`` (the
    first parameter whose ``key`` is not already ``value``)."""
    text = make_plan(load_profile("resnet18-cifar"), 2**20).to_yaml()
    lines = text.splitlines()
    index = next(i for i, line in enumerate(lines) if line.strip().startswith(f"{key}:")
                 and line.strip() != f"{key}: {value}" and "parameters:" in "\n".join(lines[:i]))
    indent = lines[index][:len(lines[index]) - len(lines[index].lstrip())]
    lines[index] = f"{indent}{key}: {value}"
    (tmp_path / "plan.yaml").write_text("\n".join(lines) + "\n")


@pytest.mark.parametrize("key, value", [("momentum", "full"), ("state_dtype", "bfloat16")])
def test_an_edit_memplan_would_ignore_is_refused(run_memplan, tmp_path, key, value):
    _edited_plan(tmp_path, key, value)
    result = run_memplan("show", "plan.yaml")
    assert result.code == 1 and result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and f"{key} '{value}' is not what" in lines[0], result.stderr
    assert "edit the method spec instead" in lines[0]


def test_a_mistyped_value_is_named(run_memplan, tmp_path):
    _edited_plan(tmp_path, "state_bytes", "lots")
    result = run_memplan("show", "plan.yaml")
    assert result.code == 1 and "state_bytes" in result.stderr and "internal error" not in result.stderr


def test_json_with_a_format_is_a_usage_error(run_memplan, tmp_path):
    result = run_memplan("analyze", "gpt2", "--json", "--format", "csv")
    assert result.code == 2 and result.stdout == ""
    assert "--format and --json do not go together" in result.stderr
    assert run_memplan("analyze", "gpt2", "--format", "csv").code == 0
