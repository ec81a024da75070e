"""A new method family is one module in memplan/methods/ and one in memplan/optim/, nothing else.

The test copies the package, adds a toy family (sign-of-momentum SGD, "signum") as exactly those
two files, and drives the copy's command line and from_plan with it: the family appears in
analyze, plan, bench and from_plan, and its measured state equals the byte model's.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO

TOY_METHOD = '''
"""Signum: SGD on the sign of a momentum buffer (one fp32 buffer of N)."""

from memplan.methods.base import STATE_DTYPE, Method, beta_option, full_like, weight_decay_option


class Signum(Method):
    name = "toy_signum"
    summary = "sign of a heavy-ball momentum buffer"
    implementation = "memplan"
    optimizer = "memplan.optim.toy_signum:Signum"
    default_quality = 0.5
    options = (beta_option("momentum", 0.9, "momentum decay", variant=True), weight_decay_option())

    def state_tensors(self, shape, param_dtype, options, layout):
        return (full_like("momentum_buffer", shape, STATE_DTYPE),)

    def momentum_kind(self, options, layout):
        return "full"


SIGNUM = Signum()
'''

TOY_OPTIMIZER = '''
"""Signum's optimizer: m <- momentum m + (1 - momentum) G;  W <- W - lr sign(m)."""

import torch

from memplan.methods.toy_signum import SIGNUM
from memplan.optim.base import DEFAULT_CHUNK_BYTES, MemplanOptimizer


class Signum(MemplanOptimizer):
    method = SIGNUM

    def __init__(self, params, lr=1e-3, momentum=0.9, weight_decay=0.0, chunk_bytes=DEFAULT_CHUNK_BYTES,
                 maximize=False):
        super().__init__(params, dict(lr=lr, momentum=momentum, weight_decay=weight_decay,
                                      weight_decay_mode="adamw", chunk_bytes=chunk_bytes, maximize=maximize))

    def _update(self, group, param, grad, state):
        buffer = state["momentum_buffer"]
        buffer.mul_(group["momentum"]).add_(grad.float(), alpha=1.0 - group["momentum"])
        param.add_(buffer.sign().to(param.dtype), alpha=-group["lr"])
'''

MODEL = '''
from torch import nn


def build_model():
    return nn.Sequential(nn.Linear(12, 20), nn.ReLU(), nn.Linear(20, 3))
'''

DRIVER = '''
import contextlib, io, json, sys
sys.path.insert(0, ".")
import torch
import memplan
from memplan.cli.main import main
from memplan.measure import state_storage_bytes
from memplan.optim import from_plan
from memplan.plan import Plan

import gc
gc.freeze()  # bench collects garbage before each measurement: the imports' objects need no second look

outputs = {}
for name, args in json.loads(sys.argv[1]).items():
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = main(args)
    outputs[name] = {"code": code, "document": json.loads(out.getvalue()) if code == 0 else None}

from model import build_model

model = build_model()
optimizer = from_plan(model, "plan.yaml")
model(torch.randn(4, 12)).sum().backward()
optimizer.step()
outputs["from_plan"] = {"package": memplan.__file__, "main": sys.modules[main.__module__].__file__,
                        "methods": sorted({group["method"] for group in optimizer.param_groups}),
                        "measured": state_storage_bytes(optimizer), "planned": Plan.load("plan.yaml").state_bytes}
print(json.dumps(outputs))
'''
"""Runs, in one process of the copy (a Python start-up costs seconds), its command line's entry
point for each named argument list in order, then trains a step with from_plan."""


PARAMETERS = 12 * 20 + 20 + 20 * 3 + 3


@pytest.fixture(scope="module")
def package_with_a_new_family(tmp_path_factory) -> Path:
    """A copy of the package laid out as installed, plus the toy family's two modules."""
    root = tmp_path_factory.mktemp("site")
    ignore = shutil.ignore_patterns("__pycache__")
    shutil.copytree(REPO / "memplan", root / "memplan", ignore=ignore)
    shutil.copytree(REPO / "cli", root / "memplan" / "cli", ignore=ignore)
    shutil.copytree(REPO / "profiles", root / "memplan" / "profiles", ignore=ignore)
    (root / "memplan" / "methods" / "toy_signum.py").write_text(TOY_METHOD)
    (root / "memplan" / "optim" / "toy_signum.py").write_text(TOY_OPTIMIZER)
    return root


def run(root: Path, workdir: Path, *args: str) -> subprocess.CompletedProcess:
    environment = {**os.environ, "PYTHONPATH": str(root), "COLUMNS": "200"}
    return subprocess.run([sys.executable, *args], cwd=workdir, env=environment, capture_output=True, text=True,
                          timeout=300)


COMMANDS = {
    "analyzed": ["analyze", "model.py", "--methods", "adam,toy_signum", "--json"],
    "planned": ["plan", "--budget", str(4 * PARAMETERS), "--methods", "toy_signum,sgd", "--json"],
    "benched": ["bench", "--methods", "toy_signum", "--plan", "plan.yaml", "--steps", "1", "--json"],
}


def test_a_new_family_appears_in_analyze_plan_bench_and_from_plan(package_with_a_new_family, tmp_path):
    root = package_with_a_new_family
    (tmp_path / "model.py").write_text(MODEL)
    done = run(root, tmp_path, "-c", DRIVER, json.dumps(COMMANDS))
    assert done.returncode == 0, done.stderr
    outputs = json.loads(done.stdout)
    for name in COMMANDS:
        assert outputs[name]["code"] == 0, (name, done.stderr)
    analyzed, planned, benched = (outputs[name]["document"] for name in COMMANDS)

    assert analyzed["methods"]["toy_signum"]["state_bytes"] == 4 * PARAMETERS
    assert analyzed["methods"]["adam"]["state_bytes"] == 8 * PARAMETERS

    assert {entry["method"] for entry in planned["parameters"]} == {"toy_signum"}
    assert planned["state_bytes"] == 4 * PARAMETERS

    for result in benched["results"]:
        assert result["measured_state_bytes"] == result["predicted_state_bytes"] == 4 * PARAMETERS

    stepped = outputs["from_plan"]
    assert stepped["package"].startswith(str(root)) and stepped["main"].startswith(str(root))
    assert stepped["methods"] == ["toy_signum"]
    assert stepped["measured"] == stepped["planned"] == 4 * PARAMETERS


def test_the_copy_without_the_new_family_does_not_know_it(tmp_path):
    """The test above proves something: the repository's own package has no such family."""
    from memplan.errors import SpecError
    from memplan.methods import parse_spec

    with pytest.raises(SpecError, match="unknown method 'toy_signum'"):
        parse_spec("toy_signum")
