"""torchao's low-bit AdamW as a planned method: analyze, plan, from_plan and bench, end to end.

The byte model is checked tensor by tensor against torchao's allocation in test_byte_model.py;
here the real, compiled torchao step runs (about half a minute of compilation on 2 cores).
"""

from __future__ import annotations

import pytest
import torch

from memplan.bench import bench_params, method_entry, run_bench
from memplan.measure import state_storage_bytes
from memplan.methods import state_bytes
from memplan.optim import from_plan
from memplan.planner import make_plan
from memplan.profile import ModelProfile, ParamSpec
from tests.conftest import PAPER_PRIORS

pytest.importorskip("torchao")

WEIGHT = (64, 64)  # 4096 elements: the smallest parameter torchao quantizes


def test_analyze_lists_the_low_bit_methods(run_memplan, tmp_path):
    profile = ModelProfile("square", "test", (ParamSpec("weight", WEIGHT), ParamSpec("bias", (64,))))
    path = profile.save(tmp_path / "square.yaml")
    analyzed = run_memplan("analyze", path, "--methods", "adam,adamw8bit,adamw4bit", "--json").json()
    assert analyzed["methods"]["adamw8bit"]["state_bytes"] == 2 * (4096 + 16 * 4 + 256 * 4) + 2 * 64 * 4
    assert analyzed["methods"]["adamw4bit"]["state_bytes"] == 2 * (2048 + 32 * 4 + 16 * 4) + 2 * 64 * 4


def test_a_low_bit_plan_trains_with_exact_state_and_benches_exactly():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(64, 64), torch.nn.Tanh(), torch.nn.Linear(64, 1, bias=False))
    profile = ModelProfile("mlp", "test", tuple(ParamSpec(name, tuple(param.shape))
                                                for name, param in model.named_parameters()))
    budget = sum(state_bytes("adamw8bit", spec.shape) for spec in profile.params)
    plan = make_plan(profile, budget, methods=["adamw8bit", "sgd"], priors_path=PAPER_PRIORS)
    assert {entry.method for entry in plan.entries} == {"adamw8bit"}

    optimizer = from_plan(model, plan, lr=1e-2)
    inputs = torch.randn(64, 64)
    targets = inputs[:, :1].sin()
    losses = []
    for _ in range(15):
        optimizer.zero_grad()
        loss = torch.nn.functional.mse_loss(model(inputs), targets)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0]
    assert state_storage_bytes(optimizer) == plan.state_bytes

    params = bench_params(ModelProfile("weight", "test", (ParamSpec("weight", WEIGHT),)), "float32")
    (result,) = run_bench(ModelProfile("weight", "test", tuple(params)), [method_entry("adamw8bit", params, None)],
                          "cpu", steps=1).results
    assert result.measured_state_bytes == result.predicted_state_bytes == state_bytes("adamw8bit", WEIGHT)
