"""Shared fixtures: running the installed ``memplan`` command, and small model files."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

PAPER_PRIORS = str(REPO / "tests" / "fixtures" / "paper_priors.yaml")
"""The papers' priors: tests of the planner's mechanics plan with them, so that refitting the
measured bundled priors does not move them."""


@dataclass
class CliResult:
    """What one run of the ``memplan`` command produced."""

    code: int
    stdout: str
    stderr: str

    def json(self) -> object:
        return json.loads(self.stdout)


def memplan_command() -> list[str]:
    """The installed console script (tests drive the CLI the way users do)."""
    script = shutil.which("memplan", path=str(Path(sys.executable).parent)) or shutil.which("memplan")
    if script is None:
        pytest.fail("the memplan command is not installed: pip install -e '.[test]'")
    return [script]


@pytest.fixture
def run_memplan(tmp_path: Path):
    """Run ``memplan ARGS...`` in a fresh working directory; returns a CliResult."""

    def run(*args: str, cwd: Path | None = None, env: dict[str, str] | None = None) -> CliResult:
        environment = {**os.environ, "COLUMNS": "200", **(env or {})}
        environment.pop("MEMPLAN_DEBUG", None)
        done = subprocess.run([*memplan_command(), *map(str, args)], cwd=cwd or tmp_path, env=environment,
                              capture_output=True, text=True, timeout=300)
        return CliResult(done.returncode, done.stdout, done.stderr)

    return run


TINY_MODEL = '''
import torch
from torch import nn


class TinyNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.embed = nn.Embedding(100, 16)
        self.conv = nn.Conv2d(3, 8, 3)
        self.norm = nn.LayerNorm(16)
        self.fc = nn.Linear(16, 100)
        self.head = nn.Linear(16, 100, bias=False)
        self.head.weight = self.embed.weight        # tied
        self.scale = nn.Parameter(torch.ones(()))   # scalar


def build_model():
    return TinyNet()
'''


@pytest.fixture
def tiny_model_file(tmp_path: Path) -> Path:
    """A model.py with an embedding, a conv, a norm, a linear, a tied head and a scalar."""
    path = tmp_path / "tiny_model.py"
    path.write_text(TINY_MODEL)
    return path


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Tests marked ``cuda`` are skipped where torch sees no CUDA GPU."""
    import torch

    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "cuda" in item.keywords:
            item.add_marker(skip)
