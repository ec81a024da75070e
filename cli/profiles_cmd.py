"""``memplan profiles``: the bundled model profiles, with their sizes."""

from __future__ import annotations

from rich.table import Table

from memplan.loaders import bundled_profile_names
from memplan.loaders.bundled import load_bundled
from memplan.sizes import format_count, format_size
from memplan.cli import output
from memplan.cli.options import JsonOpt


def profiles(as_json: JsonOpt = False) -> None:
    """List the bundled model profiles (usable as SOURCE by name, e.g. `memplan analyze gpt2`)."""
    rows = []
    for name in bundled_profile_names():
        profile = load_bundled(name)
        rows.append({"name": name, **profile.totals(), "fingerprint": profile.fingerprint,
                     "made_with": profile.made_with})
    if as_json:
        output.print_json({"profiles": rows})
        return
    table = Table(title="Bundled model profiles", title_justify="left")
    for column, justify in (("name", "left"), ("tensors", "right"), ("parameters", "right"),
                            ("exact", "right"), ("fp32 size", "right")):
        table.add_column(column, justify=justify)  # type: ignore[arg-type]
    for row in rows:
        table.add_row(row["name"], str(row["parameters"]), format_count(row["numel"]), f"{row['numel']:,}",
                      format_size(row["param_bytes"]))
    output.stdout().print(table)
