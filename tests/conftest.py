"""Shared fixtures: running the ``memplan`` command (in this process, or the installed script),
and small model files."""

from __future__ import annotations

import contextlib
import gc
import json
import logging
import os
import shutil
import subprocess
import sys
import traceback
import warnings
from dataclasses import dataclass
from pathlib import Path

import pytest

# Triton reads TRITON_INTERPRET when a kernel is first built: set here, before any test module can
# import memplan's Triton kernels, the interpreter tests (tests/kernels/test_triton*.py) pass
# whichever tests ran first (tests/optim before tests/kernels failed them)
if not shutil.which("nvidia-smi"):
    os.environ.setdefault("TRITON_INTERPRET", "1")

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
    """The installed console script, for the few tests that need a separate process."""
    script = shutil.which("memplan", path=str(Path(sys.executable).parent)) or shutil.which("memplan")
    if script is None:
        pytest.fail("the memplan command is not installed: pip install -e '.[test]'")
    return [script]


_INTERPRETER_WARNING_FILTERS = [
    ("default", None, DeprecationWarning, "__main__", 0),
    ("ignore", None, DeprecationWarning, None, 0),
    ("ignore", None, PendingDeprecationWarning, None, 0),
    ("ignore", None, ImportWarning, None, 0),
    ("ignore", None, ResourceWarning, None, 0),
]
"""The warning filters a fresh interpreter starts with (Python's documented defaults), rather than
pytest's, so a warning the command would show its user is shown on its stderr here too."""

_PYTHON_SHOW_WARNING_MESSAGE = warnings._showwarnmsg_impl  # type: ignore[attr-defined]
"""Python's own warning display; pytest's per-test recording replaces it while a test runs."""


def _environment(overrides: dict[str, str] | None) -> dict[str, str]:
    environment = {**os.environ, "COLUMNS": "200", **(overrides or {})}
    environment.pop("MEMPLAN_DEBUG", None)
    return environment


@contextlib.contextmanager
def _process_state_restored(cwd: Path, environment: dict[str, str]):
    """Run in ``cwd`` with ``environment``; afterwards put back what a command may change for the
    rest of its process: the folder, environment variables, torch's thread count, default dtype and
    random generators, Python's random generator, loggers, and the modules a user's model file
    imported from its own folder (a later test's model.py beside a same-named helper must import its
    own). Warning filters and display are restored by ``warnings.catch_warnings``."""
    import random

    import torch

    folder, saved_environment = os.getcwd(), dict(os.environ)
    threads, dtype = torch.get_num_threads(), torch.get_default_dtype()
    torch_random, python_random = torch.random.get_rng_state(), random.getstate()
    loggers = {name: logger.level for name, logger in logging.Logger.manager.loggerDict.items()
               if isinstance(logger, logging.Logger)}
    root_handlers, root_level = list(logging.root.handlers), logging.root.level
    modules = set(sys.modules)
    os.chdir(cwd)
    os.environ.clear()
    os.environ.update(environment)
    try:
        yield
    finally:
        os.chdir(folder)
        os.environ.clear()
        os.environ.update(saved_environment)
        torch.set_num_threads(threads)
        torch.set_default_dtype(dtype)
        torch.random.set_rng_state(torch_random)
        random.setstate(python_random)
        for name, level in loggers.items():
            logging.getLogger(name).setLevel(level)
        logging.root.handlers[:], logging.root.level = root_handlers, root_level
        for name in set(sys.modules) - modules:
            if _users_module(name, sys.modules[name], cwd):
                del sys.modules[name]


def _users_module(name: str, module: object, cwd: Path) -> bool:
    """Whether ``module`` is a user's model file or one it imported from the user's folder (never
    memplan's own or an installed library's, which must stay the same objects)."""
    if name.startswith("memplan_user_"):
        return True
    file = getattr(module, "__file__", None)
    if not file:
        return False
    path = Path(file).resolve()
    return (path.is_relative_to(cwd.resolve()) and not path.is_relative_to(REPO)
            and not path.is_relative_to(Path(sys.prefix).resolve()))


def run_in_process(args: list[str], cwd: Path, capfd: pytest.CaptureFixture[str],
                   env: dict[str, str] | None = None) -> CliResult:
    """``memplan ARGS`` through the console script's own entry point, ``memplan.cli.main.main``, in
    this process: what the command writes to file descriptors 1 and 2, Python's or not, and the
    traceback and exit code 1 that an exception escaping ``main`` (``--debug``) would give."""
    from memplan.cli.main import main

    capfd.readouterr()  # what the test printed before is not the command's
    with _process_state_restored(cwd, _environment(env)), warnings.catch_warnings():
        warnings.filters[:] = list(_INTERPRETER_WARNING_FILTERS)
        warnings._showwarnmsg_impl = _PYTHON_SHOW_WARNING_MESSAGE  # type: ignore[attr-defined]
        warnings._filters_mutated()  # type: ignore[attr-defined]
        try:
            code = main([str(arg) for arg in args])
        except SystemExit as exit:
            code = exit.code if isinstance(exit.code, int) else 1
        except Exception:
            traceback.print_exc()
            code = 1
    captured = capfd.readouterr()
    return CliResult(code, captured.out, captured.err)


def run_in_subprocess(args: list[str], cwd: Path, env: dict[str, str] | None = None) -> CliResult:
    """``memplan ARGS`` through the installed console script, in a process of its own."""
    done = subprocess.run([*memplan_command(), *map(str, args)], cwd=cwd, env=_environment(env),
                          capture_output=True, text=True, timeout=300)
    return CliResult(done.returncode, done.stdout, done.stderr)


@pytest.fixture
def run_memplan(tmp_path: Path, capfd: pytest.CaptureFixture[str]):
    """Run ``memplan ARGS...`` (in a fresh working directory by default); returns a CliResult.

    The command runs in this process, through the console script's entry point, which spares each
    run a Python and torch start-up of seconds. ``subprocess=True`` runs the installed console
    script instead: for the few tests that are about the process itself (the script is installed,
    what the interpreter prints for an error, a user's folder seen by a fresh import system)."""

    def run(*args: str, cwd: Path | None = None, env: dict[str, str] | None = None,
            subprocess: bool = False) -> CliResult:
        folder = Path(cwd or tmp_path)
        if subprocess:
            return run_in_subprocess(list(args), folder, env)
        return run_in_process(list(args), folder, capfd, env)

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


@pytest.fixture(autouse=True)
def _earlier_objects_frozen() -> None:
    """Every object alive when a test starts (torch's, the libraries', earlier tests' fixtures) is
    moved out of the garbage collector's sight, after collecting what is garbage already.

    memplan collects garbage before each measurement (``Device.release``): with every object of
    the test process in view, each collection takes most of a second, and ``memplan bench`` spends
    nearly all its time there. Objects the test itself creates are still collected as usual."""
    gc.collect()
    gc.freeze()


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Tests marked ``cuda`` are skipped where torch sees no CUDA GPU."""
    import torch

    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "cuda" in item.keywords:
            item.add_marker(skip)
