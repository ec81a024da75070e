"""``memplan show plan.yaml``: print a plan readably (or as JSON)."""

from __future__ import annotations

from pathlib import Path

import typer

from memplan.cli import output
from memplan.cli.options import DEFAULT_PLAN_PATH, JsonOpt
from memplan.cli.plan_cmd import render
from memplan.plan import Plan


def show(
    path: Path = typer.Argument(DEFAULT_PLAN_PATH, help="The plan to show."),
    as_json: JsonOpt = False,
) -> None:
    """Print a plan: totals, state per method, and every parameter's method, layout and bytes."""
    loaded = Plan.load(path)
    if as_json:
        output.print_json(loaded.to_dict())
        return
    render(loaded, top=None)
