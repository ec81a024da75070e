"""Where output goes: tables to stdout, messages to stderr, JSON documents alone on stdout."""

from __future__ import annotations

import json
import os
import sys
from typing import Any

from rich.console import Console

_MIN_PIPE_WIDTH = 160  # rich assumes 80 columns when not on a terminal; tables need more


def _console(stream: Any) -> Console:
    """A console as wide as the terminal (or ``COLUMNS``); at least 160 columns into a pipe."""
    console = Console(file=stream, highlight=False, soft_wrap=False)
    if not console.is_terminal and not os.environ.get("COLUMNS"):
        console = Console(file=stream, highlight=False, width=max(console.width, _MIN_PIPE_WIDTH))
    return console


def stdout() -> Console:
    """A console on standard output (tables and results)."""
    return _console(sys.stdout)


def stderr() -> Console:
    """A console on standard error (progress, notes, warnings)."""
    return _console(sys.stderr)


def print_json(document: Any) -> None:
    """Print one JSON document, and nothing else, on standard output."""
    sys.stdout.write(json.dumps(document, indent=2) + "\n")


def note(message: str) -> None:
    """A one-line note on standard error."""
    stderr().print(message, markup=False)
