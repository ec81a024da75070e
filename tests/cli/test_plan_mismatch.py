"""A plan that does not fit the model: the cause first, a few parameters, one short line."""

import torch


def _ddp_checkpoint(path, tiny_model_file):
    namespace: dict = {}
    exec(tiny_model_file.read_text(), namespace)
    state = namespace["build_model"]().state_dict()
    torch.save({f"module.{name}": value for name, value in state.items()}, path)


def test_a_plan_of_the_unwrapped_model_names_the_module_prefix(run_memplan, tmp_path, tiny_model_file):
    _ddp_checkpoint(tmp_path / "ddp.pt", tiny_model_file)
    planned = run_memplan("plan", "ddp.pt", "--strip-prefix", "module.", "--budget", "1MiB")
    assert planned.code == 0, planned.stderr
    result = run_memplan("bench", "ddp.pt", "--plan", "plan.yaml", "--methods", "sgd", "--steps", "1")
    assert result.code == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and len(lines[0]) < 700, result.stderr
    assert "every name in the model has a 'module.' prefix the plan lacks: pass model.module" in lines[0]


def test_frozen_when_planned_trainable_now(run_memplan, tmp_path, tiny_model_file):
    planned = run_memplan("plan", tiny_model_file, "--freeze", r"^(fc|conv)\.", "--budget", "1MiB")
    assert planned.code == 0, planned.stderr
    result = run_memplan("bench", tiny_model_file, "--plan", "plan.yaml", "--methods", "sgd", "--steps", "1")
    assert result.code == 1
    line = result.stderr.strip()
    assert line.startswith("memplan: error: plan for ") and "\n" not in line
    assert "does not fit this model: 4 parameter(s) trainable in the model were frozen (or absent) when planned" \
        in line, line
    assert line.count("has no plan entry") == 4 and line.count("(") < 8
