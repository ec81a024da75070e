"""Write memplan's bundled priors (profiles/priors.yaml) from the quality benchmarks' measured priors.

Reads ``benchmarks/results/<workload>_priors.yaml`` (written by ``benchmarks/plan_quality.py``)
for every workload except those in ``HELD_OUT`` and combines them, per prior key:

- quality: the mean over workloads weighted by precision, 1 / se_i^2, where se_i is the workload's
  standard error over seeds. A workload whose quality scale is mostly noise (SGD within noise of
  Adam, as on ``digits_cnn``: its qualities divide by a small, uncertain L_SGD - L_Adam and carry
  standard errors of 0.3 to 4) then counts for little beside one where the scale holds (0.01 to
  0.07 on ``char_lm``). An equal-weight mean, or a random-effects one (whose between-workload
  variance, estimated from two workloads that disagree, levels the weights), let the noise of
  ``digits_cnn`` set the priors and rank the held-out transformer at 0.38;
- std: the standard error of that mean: the seed noise alone (fixed effect) unless Cochran's Q shows
  the workloads disagreeing beyond it (above its 95th percentile), and then with the
  DerSimonian-Laird between-workload variance added (random effects), so that a method whose
  measured advantage does not carry across workloads counts as noise in the planner. Without the
  test, two workloads of which one is noisy give a between-workload variance of the order of the
  noisy one's own (DerSimonian and Laird's estimate divides the excess of Q by about twice the
  smaller weight), and the planner then ranks a well-measured method as noise (SMMF without first
  moment on matrices at 1.28 ± 5.4, which lost GPT-2's matrices to ET at 0.56);
- lr_ratio: the geometric mean over workloads;
- roles: each role's measurements combined the same way;
- the extreme-tensoring curve: per ET preset, the mean depth and the quality combined the same way.

The calibrated-quality constants are kept from the current file. Usage::

    python benchmarks/fit_priors.py            # rewrites profiles/priors.yaml
"""

from __future__ import annotations

import math
import statistics
from pathlib import Path

import yaml

from memplan.priors import SGD_SCALE

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
BUNDLED = HERE.parent / "profiles" / "priors.yaml"
HELD_OUT = frozenset({"docstring_lm", "source_words"})
"""Workloads the bundled priors are never fitted on: ``plan_quality.py --summary`` checks the priors'
ranking of the methods against what is measured on them."""

HEADER = """\
# memplan's bundled quality priors, measured with `memplan trial` on the project's quality
# benchmarks ({workloads}: benchmarks/workloads/) and combined by
# benchmarks/fit_priors.py; each entry cites the runs. Regenerate: the commands in benchmarks/RESULTS.md, "Plan quality".
#
# Scale: 1.0 = Adam, 0.0 = SGD without momentum, each at its best learning rate, from the held-out
# loss after each run (600 steps). quality is the workloads' mean weighted by their precision (a
# workload whose scale is mostly seed noise counts for little); std is its standard error (seed
# spread, and the workloads' disagreement where it exceeds that); lr_ratio is the best rate over
# Adam's (geometric mean); roles are the per-role qualities of the probes (docs/trial.md). The
# papers' long-run results are in docs/evidence.md, as context.
#
# Override any entry with `memplan plan --priors my_priors.yaml` (same keys; only the fields you
# give change, and a quality of your own drops the bundled std and roles); `memplan trial model.py`
# writes such a file for your own model.
"""


SE_FLOOR = 1e-3
"""The least standard error a measurement counts with (a quality of exactly 1 or 0, Adam and SGD on
their own scale, has none)."""


def pooled(values: list[float], errors: list[float]) -> tuple[float, float]:
    """The precision-weighted mean of ``values`` measured with standard errors ``errors``, and its
    standard error: fixed-effect, or random-effects (DerSimonian-Laird) where Cochran's Q exceeds
    its 95th percentile. Identical values without error pool to themselves."""
    if all(error == 0 for error in errors) and len(set(values)) == 1:
        return values[0], 0.0
    variances = [max(error, SE_FLOOR) ** 2 for error in errors]
    weights = [1 / variance for variance in variances]
    mean = sum(w * v for w, v in zip(weights, values)) / sum(weights)
    spread = sum(w * (v - mean) ** 2 for w, v in zip(weights, values))  # Cochran's Q
    freedom = len(values) - 1
    between = 0.0
    if freedom > 0 and spread > chi_square_95(freedom):
        scale = sum(weights) - sum(w * w for w in weights) / sum(weights)
        between = (spread - freedom) / scale
    return mean, math.sqrt(1 / sum(1 / (variance + between) for variance in variances))


def chi_square_95(freedom: int) -> float:
    """The 95th percentile of the chi-square distribution with ``freedom`` degrees of freedom
    (Wilson-Hilferty; 3.75 for one degree, where the exact value is 3.84)."""
    z = statistics.NormalDist().inv_cdf(0.95)
    scale = 2 / (9 * freedom)
    return freedom * (1 - scale + z * math.sqrt(scale)) ** 3


def combine(documents: dict[str, dict]) -> dict:
    """The bundled priors document from each workload's measured one."""
    current = yaml.safe_load(BUNDLED.read_text())
    keys = list(dict.fromkeys(key for document in documents.values() for key in document["methods"]))
    methods = {}
    for key in keys:
        measured = {name: document["methods"][key] for name, document in documents.items() if key in document["methods"]}
        quality, error = pooled([entry["quality"] for entry in measured.values()],
                                [entry.get("std", 0.0) for entry in measured.values()])
        entry: dict = {"quality": round(quality, 4), "std": round(error, 4)}
        ratios = [entry["lr_ratio"] for entry in measured.values() if "lr_ratio" in entry]
        if ratios:
            entry["lr_ratio"] = float(f"{math.exp(statistics.fmean(math.log(r) for r in ratios)):.3g}")
        roles: dict[str, list[tuple[float, float]]] = {}
        for item in measured.values():
            for role, value in (item.get("roles") or {}).items():
                roles.setdefault(role, []).append((value["quality"], value.get("std", 0.0)) if isinstance(value, dict)
                                                  else (value, 0.0))
        if roles:
            entry["roles"] = {}
            for role, values in roles.items():
                quality, error = pooled([q for q, _ in values], [e for _, e in values])
                entry["roles"][role] = {"quality": round(quality, 4), "std": round(error, 4)}
        entry["evidence"] = "; ".join(f"{name}: {item['quality']:+.3f}" + (f" ± {item['std']:.3f}" if "std" in item else "")
                                      + f" ({item['evidence'].split(': ', 1)[0]})" for name, item in measured.items())
        methods[key] = entry
    for key, entry in current["methods"].items():
        methods.setdefault(key, entry)
    curve: dict[str, list[tuple[float, float, float]]] = {}
    for document in documents.values():
        for point in document.get("extreme_tensoring", []):
            curve.setdefault(point["evidence"].split(":")[0], []).append(
                (point["depth"], point["quality"], point.get("std", 0.0)))
    points = []
    for preset, values in curve.items():
        quality, error = pooled([q for _, q, _ in values], [e for _, _, e in values])
        points.append({"depth": round(statistics.fmean(d for d, _, _ in values), 3), "quality": round(quality, 4),
                       "std": round(error, 4), "evidence": f"{preset}, pooled over {len(values)} workload(s)"})
    points.sort(key=lambda point: point["depth"])
    if len({point["depth"] for point in points}) < 2:
        points = current["extreme_tensoring"]
    evidence = "; ".join(f"{name}: {document['evidence']}" for name, document in documents.items())
    return {"memplan_priors": 2, "evidence": evidence, "methods": methods, "extreme_tensoring": points,
            "calibrated": current["calibrated"]}


def main() -> None:
    # a workload's own runs only: not the held-out ones, nor runs with other settings kept under
    # another stem (plan_quality.py --stem)
    documents = {path.name.removesuffix("_priors.yaml"): yaml.safe_load(path.read_text())
                 for path in sorted(RESULTS.glob("*_priors.yaml"))
                 if path.name.removesuffix("_priors.yaml") not in HELD_OUT
                 and (HERE / "workloads" / path.name.replace("_priors.yaml", ".py")).exists()}
    other_scale = [name for name, document in documents.items() if document.get("scale", SGD_SCALE) != SGD_SCALE]
    if other_scale:
        raise SystemExit(f"not on the SGD scale, which the bundled priors are on: {', '.join(other_scale)}")
    if len(documents) < 2:
        raise SystemExit(f"need the measured priors of at least two workloads in {RESULTS}")
    text = HEADER.format(workloads=", ".join(documents)) + yaml.safe_dump(combine(documents), sort_keys=False, width=110, allow_unicode=True)
    BUNDLED.write_text(text)
    print(f"wrote {BUNDLED} from {', '.join(documents)}")


if __name__ == "__main__":
    main()
