"""The installed ``memplan`` command in a process of its own, and the in-process runs that the other
CLI tests use leaving this process as they found it.

Most CLI tests run ``memplan`` through its entry point in the test process (the ``run_memplan``
fixture): a Python and torch start-up per command would cost seconds each. What only a separate
process shows is checked here with ``subprocess=True``: the console script is installed and runs,
the interpreter itself prints one line and no traceback for bad input (and the traceback with
``--debug``), and a user's folder cannot shadow the modules the command imports.
"""

import os
import warnings

import torch

from tests.conftest import REPO

TINY = REPO / "tests" / "fixtures" / "tiny_trainable.py"

MODEL_WITH_HELPER = """
from torch import nn

from layers import Block


def build_model():
    return nn.Sequential(Block(), Block())
"""

HELPER = """
from torch import nn


class Block(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear({width}, {width})
"""


def test_bad_input_is_one_line_from_the_real_interpreter(run_memplan, tmp_path):
    result = run_memplan("analyze", "no-such-model", subprocess=True)
    assert result.code == 1 and result.stdout == ""
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("memplan: error: no-such-model: "), result.stderr


def test_debug_shows_the_interpreters_traceback(run_memplan):
    result = run_memplan("analyze", "no-such-model", "--debug", subprocess=True)
    assert result.code == 1 and "Traceback (most recent call last)" in result.stderr


def test_the_installed_script_runs_where_a_users_folder_could_shadow_its_modules(run_memplan, tmp_path):
    # a fresh process of the installed console script, so that nothing memplan imports is loaded
    # yet: files named after memplan and the libraries it imports sit beside model.py, whose own
    # helper module must still be found
    (tmp_path / "model.py").write_text(MODEL_WITH_HELPER)
    (tmp_path / "layers.py").write_text(HELPER.format(width=4))
    for shadow in ("memplan", "rich", "typer", "yaml", "shlex", "csv"):
        (tmp_path / f"{shadow}.py").write_text(f"raise ImportError('the folder shadowed {shadow}')\n")
    result = run_memplan("analyze", "model.py", "--json", subprocess=True)
    assert result.code == 0, result.stderr
    assert result.json()["totals"]["numel"] == 2 * (4 * 4 + 4)


# --- In-process runs leave the process as they found it ----------------------------------------


def test_same_named_helpers_of_two_model_folders_are_each_their_own(run_memplan, tmp_path):
    for width in (4, 6):
        folder = tmp_path / f"width{width}"
        folder.mkdir()
        (folder / "model.py").write_text(MODEL_WITH_HELPER)
        (folder / "layers.py").write_text(HELPER.format(width=width))
        result = run_memplan("analyze", "model.py", "--json", cwd=folder)
        assert result.code == 0, result.stderr
        assert result.json()["totals"]["numel"] == 2 * (width * width + width)


def test_a_command_leaves_threads_environment_and_warnings_as_they_were(run_memplan, tmp_path):
    threads, environment, display = torch.get_num_threads(), dict(os.environ), warnings.showwarning
    folder = os.getcwd()
    wanted = 1 if threads != 1 else 2
    result = run_memplan("trial", TINY, "--methods", "sgd", "--steps", "1", "--probes", "0", "--seeds", "1",
                         "--no-plot", "--threads", str(wanted), env={"MEMPLAN_TEST_ONLY": "1"})
    assert result.code == 0, result.stderr
    assert torch.get_num_threads() == threads and dict(os.environ) == environment
    assert warnings.showwarning is display and os.getcwd() == folder


def test_a_command_sees_the_environment_it_is_given(run_memplan):
    narrow = run_memplan("analyze", "gpt2", env={"COLUMNS": "80"})
    wide = run_memplan("analyze", "gpt2")
    assert narrow.code == wide.code == 0
    assert max(map(len, narrow.stdout.splitlines())) <= 80 < max(map(len, wide.stdout.splitlines()))


def test_main_called_twice_adds_its_root_log_handler_once(capsys):
    """A program (or a notebook) may call memplan's main() several times in one process."""
    import logging

    from memplan.cli.main import main

    root = logging.getLogger()
    before = list(root.handlers)
    try:
        root.handlers = [handler for handler in before if not isinstance(handler, logging.NullHandler)]
        for _ in range(2):
            assert main(["profiles"]) == 0
        assert sum(isinstance(handler, logging.NullHandler) for handler in root.handlers) == 1
    finally:
        root.handlers = before
