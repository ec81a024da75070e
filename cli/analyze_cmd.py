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
from memplan.fileio import check_writable
from memplan.loaders import load_profile
from memplan.methods import ANALYZE_METHODS, LAYOUT_COLUMNS, state_options
from memplan.sizes import format_count, format_size
from memplan.cli import output
from memplan.cli import options
from memplan.cli.options import (DEFAULT_PROFILE_PATH, EntryOpt, FreezeOpt, JsonOpt, ShardingOpt, SourceArg,
                                 StripPrefixOpt, WorldSizeOpt, method_specs, methods_option)

MethodsOpt = methods_option(ANALYZE_METHODS, "total")

PARAMS_SHOWN = 20
"""Parameters listed without ``--params``; a count says how many more there are."""


def analyze(
    source: SourceArg,
    methods: MethodsOpt = None,
    entry: EntryOpt = None,
    strip_prefix: StripPrefixOpt = None,
    freeze: FreezeOpt = None,
    world_size: WorldSizeOpt = None,
    sharding_kind: ShardingOpt = None,
    name: Optional[str] = typer.Option(None, "--name", help="Name to give the profile."),
    out: Path = typer.Option(DEFAULT_PROFILE_PATH, "--out", "-o", help="Where to write the profile YAML."),
    table_format: Optional[str] = typer.Option(None, "--format", help="Parameter listing: table (default) or csv."),
    all_params: bool = typer.Option(False, "--params", help=f"List every parameter (default: the first "
                                                            f"{PARAMS_SHOWN}, then a count)."),
    as_json: JsonOpt = False,
) -> None:
    """List every parameter of a model and the optimizer state each method needs; save the profile."""
    if table_format not in {None, "table", "csv"}:
        raise UsageError(f"--format must be table or csv, got {table_format!r}")
    if as_json and table_format is not None:
        raise UsageError("--format and --json do not go together: --json prints one JSON document")
    specs = method_specs(methods, ANALYZE_METHODS)
    sharding = options.sharding(world_size, sharding_kind)
    check_writable(out)
    profile = load_profile(source, entry=entry, strip_prefix=strip_prefix, freeze=freeze)
    if name:
        profile = replace(profile, name=name)
    if not profile.made_with:
        profile = replace(profile, made_with=made_with(["memplan", "analyze", *sys.argv[2:]]))
    result = run_analysis(profile, specs, sharding)
    saved = profile.save(out)
    if as_json:
        output.print_json(result.to_json(source))
        return
    if table_format == "csv":
        sys.stdout.write(_csv(result))
    else:
        console = output.stdout()
        console.print(_summary(result), markup=False)
        console.print(_method_table(result))
        console.print(_parameter_table(result, None if all_params else PARAMS_SHOWN))
    output.note(f"profile written to {saved}")


def _csv(result: Analysis) -> str:
    records = result.parameter_records()
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(records[0]) if records else ["name"], lineterminator="\n")
    writer.writeheader()
    writer.writerows(records)
    return buffer.getvalue()


def _summary(result: Analysis) -> str:
    """One line: the model, its tensors, parameters (trainable ones when some are frozen) and bytes."""
    profile = result.profile
    totals = profile.totals()
    line = (f"{profile.name}: {totals['parameters']} tensors, {format_count(totals['numel'])} parameters "
            f"({totals['numel']:,}), {format_size(totals['param_bytes'])}")
    if totals["trainable_numel"] != totals["numel"]:
        line += f" ({format_count(totals['trainable_numel'])} trainable)"
    if result.sharding is not None:
        line += (f"; each of {result.sharding.world_size} ranks ({result.sharding.kind}) stores "
                 f"{format_size(result.rank_param_bytes())} of parameters and as much gradient")
    return line


def _parameter_table(result: Analysis, limit: int | None) -> Table:
    """Every parameter with its layouts, or the first ``limit`` and a count of the rest."""
    profile = result.profile
    hidden = 0 if limit is None else max(len(profile.params) - limit, 0)
    caption = f"... and {hidden} more parameters: --params lists all, --format csv exports them" if hidden else None
    table = Table(title="Parameters", title_justify="left", caption=caption, caption_justify="left")
    for column, justify in (("name", "left"), ("shape", "left"), ("numel", "right"), ("dtype", "left"),
                            ("kind", "left"), *((method.upper(), "left") for method in LAYOUT_COLUMNS)):
        table.add_column(column, justify=justify)  # type: ignore[arg-type]
    records = result.parameter_records()
    for record, spec in zip(records if limit is None else records[:limit], profile.params):
        label = record["name"] + (f" (tied: {record['aliases']})" if record["aliases"] else "")
        kind = record["kind"] + ("" if spec.trainable else ", frozen")
        table.add_row(label, record["shape"], f"{record['numel']:,}", record["dtype"], kind,
                      *(record[method] for method in LAYOUT_COLUMNS), style=None if spec.trainable else "dim")
    return table


def _method_table(result: Analysis) -> Table:
    table = Table(title="Optimizer state over the trainable parameters (step counters excluded)",
                  title_justify="left")
    table.add_column("method")
    table.add_column("keeps")
    table.add_column("state", justify="right")
    table.add_column("bytes", justify="right")
    table.add_column("vs adam", justify="right")
    if result.sharding is not None:
        table.add_column(f"per rank ({result.sharding.kind} x{result.sharding.world_size}, max)", justify="right")
    for total in result.totals:
        ratio = "-" if total.ratio_to_adam is None else f"{100 * total.ratio_to_adam:.3g}%"
        per_rank = [f"{max(total.rank_state_bytes):,}"] if total.rank_state_bytes else []
        table.add_row(total.spec, state_options(total.spec) or "-", format_size(total.state_bytes),
                      f"{total.state_bytes:,}", ratio, *per_rank)
    return table
