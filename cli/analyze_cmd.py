"""``memplan analyze SOURCE``: list the parameters and every method's total state bytes."""

from __future__ import annotations

import csv
import io
import sys
from dataclasses import replace
from pathlib import Path
from typing import Optional

import typer
from rich.table import Table

from memplan.analyze import Analysis, analyze as run_analysis, made_with
from memplan.errors import UsageError
from memplan.loaders import load_profile
from memplan.methods import ANALYZE_METHODS, LAYOUT_COLUMNS, split_spec_list
from memplan.sizes import format_count, format_size
from memplan.cli import output

DEFAULT_PROFILE_PATH = Path(".memplan") / "profile.yaml"


def analyze(
    source: str = typer.Argument(..., help="model.py, checkpoint, .safetensors, index.json, profile YAML, "
                                            "Hugging Face folder, or a bundled profile name."),
    methods: Optional[list[str]] = typer.Option(None, "--methods", "-m",
                                                help="Method specs to total, comma-separated "
                                                     f"(default: {','.join(ANALYZE_METHODS)})."),
    entry: Optional[str] = typer.Option(None, "--entry", help="model.py: the module, class or function to build."),
    strip_prefix: Optional[str] = typer.Option(None, "--strip-prefix",
                                               help="Checkpoints: remove this name prefix (e.g. 'module.')."),
    freeze: Optional[str] = typer.Option(None, "--freeze", help="Regex: matching parameters are frozen (no state)."),
    name: Optional[str] = typer.Option(None, "--name", help="Name to give the profile."),
    out: Path = typer.Option(DEFAULT_PROFILE_PATH, "--out", "-o", help="Where to write the profile YAML."),
    table_format: str = typer.Option("table", "--format", help="Parameter listing: table or csv."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON document on stdout."),
) -> None:
    """List every parameter of a model and the optimizer state each method needs; save the profile."""
    if table_format not in {"table", "csv"}:
        raise UsageError(f"--format must be table or csv, got {table_format!r}")
    specs = split_spec_list(methods) if methods else list(ANALYZE_METHODS)
    profile = load_profile(source, entry=entry, strip_prefix=strip_prefix, freeze=freeze)
    if name:
        profile = replace(profile, name=name)
    if not profile.made_with:
        profile = replace(profile, made_with=made_with(["memplan", "analyze", *sys.argv[2:]]))
    result = run_analysis(profile, specs)
    saved = profile.save(out)
    if as_json:
        output.print_json(result.to_json(source))
        return
    if table_format == "csv":
        sys.stdout.write(_csv(result))
    else:
        console = output.stdout()
        console.print(_parameter_table(result))
        console.print(_method_table(result))
    output.note(f"profile written to {saved}")


def _csv(result: Analysis) -> str:
    records = result.parameter_records()
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(records[0]) if records else ["name"], lineterminator="\n")
    writer.writeheader()
    writer.writerows(records)
    return buffer.getvalue()


def _parameter_table(result: Analysis) -> Table:
    profile = result.profile
    totals = profile.totals()
    title = (f"{profile.name}: {totals['parameters']} tensors, {format_count(totals['numel'])} parameters, "
             f"{format_size(totals['param_bytes'])}")
    if totals["trainable_numel"] != totals["numel"]:
        title += f" ({format_count(totals['trainable_numel'])} trainable)"
    table = Table(title=title, title_justify="left")
    for column, justify in (("name", "left"), ("shape", "left"), ("numel", "right"), ("dtype", "left"),
                            ("kind", "left"), *((method.upper(), "left") for method in LAYOUT_COLUMNS)):
        table.add_column(column, justify=justify)  # type: ignore[arg-type]
    for record, spec in zip(result.parameter_records(), profile.params):
        label = record["name"] + (f" (tied: {record['aliases']})" if record["aliases"] else "")
        kind = record["kind"] + ("" if spec.trainable else ", frozen")
        table.add_row(label, record["shape"], f"{record['numel']:,}", record["dtype"], kind,
                      *(record[method] for method in LAYOUT_COLUMNS), style=None if spec.trainable else "dim")
    return table


def _method_table(result: Analysis) -> Table:
    table = Table(title="Optimizer state over the trainable parameters", title_justify="left")
    table.add_column("method")
    table.add_column("state", justify="right")
    table.add_column("bytes", justify="right")
    table.add_column("vs adam", justify="right")
    for total in result.totals:
        ratio = "-" if total.ratio_to_adam is None else f"{100 * total.ratio_to_adam:.3g}%"
        table.add_row(total.spec, format_size(total.state_bytes), f"{total.state_bytes:,}", ratio)
    return table
