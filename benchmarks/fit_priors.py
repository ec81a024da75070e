"""Write memplan's bundled priors (profiles/priors.yaml) from the quality benchmarks' measured priors.

Reads ``benchmarks/results/<workload>_priors.yaml`` (written by ``benchmarks/plan_quality.py``)
for every workload except those in ``HELD_OUT`` and combines them, per prior key:

- quality: the mean over workloads;
- std: the standard error of that mean, counting both each workload's seed spread and the
  workloads' disagreement, sqrt((se_1^2 + ... + se_k^2) / k^2 + var_between / k), so that a method
  whose measured advantage does not carry across workloads counts as noise;
- lr_ratio: the geometric mean over workloads;
- roles: the mean (and standard error, as for the quality) of the roles each workload measured;
- the extreme-tensoring curve: per ET preset, the mean depth and the mean quality.

The calibrated-quality constants are kept from the current file. Usage::

    python benchmarks/fit_priors.py            # rewrites profiles/priors.yaml
"""

from __future__ import annotations

import math
import statistics
from pathlib import Path

import yaml

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
BUNDLED = HERE.parent / "profiles" / "priors.yaml"
HELD_OUT = frozenset({"source_gru", "source_words"})
"""Workloads the bundled priors are never fitted on: ``plan_quality.py --summary`` checks the priors'
ranking of the methods against what is measured on them."""

HEADER = """\
# memplan's bundled quality priors, measured with `memplan trial` on the project's quality
# benchmarks (benchmarks/workloads/: {workloads}) and combined by benchmarks/fit_priors.py;
# each entry cites the runs. Regenerate: the commands in benchmarks/RESULTS.md, "Plan quality".
#
# Scale: 1.0 = Adam, 0.0 = SGD without momentum, each at its best learning rate, from the held-out
# loss after a short run. std is the standard error of the mean over workloads (seed spread and the
# workloads' disagreement); lr_ratio is the best learning rate over Adam's (geometric mean);
# roles are the per-role qualities of the probes (docs/trial.md). The papers' long-run results
# are in docs/evidence.md, as context.
#
# Override any entry with `memplan plan --priors my_priors.yaml` (same keys; only the fields you
# give change); `memplan trial model.py` writes such a file for your own model.
"""


def _mean_se(values: list[float], errors: list[float]) -> float:
    count = len(values)
    within = sum(error ** 2 for error in errors) / count ** 2
    between = statistics.variance(values) / count if count > 1 else 0.0
    return math.sqrt(within + between)


def combine(documents: dict[str, dict]) -> dict:
    """The bundled priors document from each workload's measured one."""
    current = yaml.safe_load(BUNDLED.read_text())
    keys = list(dict.fromkeys(key for document in documents.values() for key in document["methods"]))
    methods = {}
    for key in keys:
        measured = {name: document["methods"][key] for name, document in documents.items() if key in document["methods"]}
        qualities = [entry["quality"] for entry in measured.values()]
        entry: dict = {"quality": round(statistics.fmean(qualities), 4),
                       "std": round(_mean_se(qualities, [entry.get("std", 0.0) for entry in measured.values()]), 4)}
        ratios = [entry["lr_ratio"] for entry in measured.values() if "lr_ratio" in entry]
        if ratios:
            entry["lr_ratio"] = float(f"{math.exp(statistics.fmean(math.log(r) for r in ratios)):.3g}")
        roles: dict[str, list[tuple[float, float]]] = {}
        for item in measured.values():
            for role, value in (item.get("roles") or {}).items():
                roles.setdefault(role, []).append((value["quality"], value.get("std", 0.0)) if isinstance(value, dict)
                                                  else (value, 0.0))
        if roles:
            entry["roles"] = {role: {"quality": round(statistics.fmean(q for q, _ in values), 4),
                                     "std": round(_mean_se([q for q, _ in values], [e for _, e in values]), 4)}
                              for role, values in roles.items()}
        entry["evidence"] = "; ".join(f"{name}: {item['quality']:+.3f}" + (f" ± {item['std']:.3f}" if "std" in item else "")
                                      + f" ({item['evidence'].split(': ', 1)[0]})" for name, item in measured.items())
        methods[key] = entry
    for key, entry in current["methods"].items():
        methods.setdefault(key, entry)
    curve: dict[str, list[tuple[float, float]]] = {}
    for document in documents.values():
        for point in document.get("extreme_tensoring", []):
            curve.setdefault(point["evidence"].split(":")[0], []).append((point["depth"], point["quality"]))
    points = sorted(({"depth": round(statistics.fmean(d for d, _ in values), 3),
                      "quality": round(statistics.fmean(q for _, q in values), 4),
                      "evidence": f"{preset}, mean over {len(values)} workload(s)"}
                     for preset, values in curve.items()), key=lambda point: point["depth"])
    if len({point["depth"] for point in points}) < 2:
        points = current["extreme_tensoring"]
    evidence = "; ".join(f"{name}: {document['evidence']}" for name, document in documents.items())
    return {"memplan_priors": 2, "evidence": evidence, "methods": methods, "extreme_tensoring": points,
            "calibrated": current["calibrated"]}


def main() -> None:
    documents = {path.name.removesuffix("_priors.yaml"): yaml.safe_load(path.read_text())
                 for path in sorted(RESULTS.glob("*_priors.yaml"))
                 if path.name.removesuffix("_priors.yaml") not in HELD_OUT}
    if len(documents) < 2:
        raise SystemExit(f"need the measured priors of at least two workloads in {RESULTS}")
    text = HEADER.format(workloads=", ".join(documents)) + yaml.safe_dump(combine(documents), sort_keys=False, width=110, allow_unicode=True)
    BUNDLED.write_text(text)
    print(f"wrote {BUNDLED} from {', '.join(documents)}")


if __name__ == "__main__":
    main()
