"""Plans that train well, measured: priors from a trial, plans at 1% and 5% of Adam's state, and
those plans trained beside every uniform method that fits the same budget.

For each workload in ``benchmarks/workloads/`` this script

1. runs ``memplan trial`` (every default method swept, per-role probes, several seeds) and writes
   its runs, its table and the priors file it fits (``benchmarks/results/<workload>.*``);
2. plans the model at 1% and 5% of Adam's state bytes with those priors, and trains each plan
   (an Adam-equivalent learning rate, swept) on the same seeds as the uniform runs;
3. reports, per budget, the plan's loss beside the best uniform method whose state fits the budget,
   and Adam's, with the spread over seeds.

``--summary`` then reads every workload's results and reports the cross-workload checks: the
Spearman rank correlation between one workload's priors and another's measured qualities, and,
on each workload held out from the bundled priors (``fit_priors.HELD_OUT``), between the bundled
priors (``profiles/priors.yaml``) and the qualities and losses measured there.

Usage (each workload in its own process, one thread each, so that both cores work)::

    python benchmarks/plan_quality.py char_lm --steps 600 --seeds 3 &
    python benchmarks/plan_quality.py source_lm --steps 600 --seeds 3 &
    wait
    python benchmarks/plan_quality.py source_gru --steps 600 --seeds 3 &
    python benchmarks/plan_quality.py digits_cnn --steps 600 --seeds 3 &
    wait
    python benchmarks/fit_priors.py                                           # the bundled priors
    python benchmarks/plan_quality.py docstring_lm --steps 600 --seeds 3 &   # held out from them
    python benchmarks/plan_quality.py source_words --steps 600 --seeds 3 &   # (fit_priors.HELD_OUT)
    wait
    python benchmarks/plan_quality.py --summary
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import statistics
import sys
import time
from pathlib import Path

import pandas as pd
import torch
import yaml

from fit_priors import HELD_OUT
from memplan.loaders.python_file import load_python_file
from memplan.planner import assigned_plan, make_plan
from memplan.priors import SGD_SCALE, Priors, load_priors
from memplan.profile import ModelProfile
from memplan.training import Schedule
from memplan.trial import (REFERENCE_FAMILY, SGD_REFERENCE, TRIAL_METHODS, Trial, TrialSettings, priors_document,
                           trial_evidence, uniform_state_bytes)

HERE = Path(__file__).resolve().parent
WORKLOADS = HERE / "workloads"
RESULTS = HERE / "results"
BUDGET_SHARES = (0.01, 0.05)


def run_workload(name: str, steps: int, seeds: int, probes: int, plans_only: bool = False,
                 stem: str | None = None, sweep_seeds: int = 1) -> None:
    """Trial, priors, plans and their training for one workload; writes benchmarks/results/<stem>_*
    (``stem`` defaults to the workload's name: another keeps a run with other settings beside the
    one the bundled priors were fitted on). With ``plans_only``, the trial's runs are read back from
    the last run's CSV and only the plans are made and trained again (after a change to the planner
    or to how priors are read)."""
    stem = stem or name
    torch.set_num_threads(1)
    RESULTS.mkdir(exist_ok=True)
    path = WORKLOADS / f"{name}.py"
    settings = TrialSettings(schedule=Schedule(steps=steps, warmup=max(1, steps // 20)), seeds=seeds,
                             sweep_seeds=sweep_seeds, probes=probes)
    started = time.perf_counter()
    trial = Trial(path, None, TRIAL_METHODS[2:], settings,
                  progress=lambda done, label: print(f"[{name} {time.perf_counter() - started:7.0f}s] {done:4d} {label}",
                                                     flush=True))
    if plans_only:
        result = reload_trial(trial, stem, steps, seeds)
        trial_seconds = json.loads((RESULTS / f"{stem}_summary.json").read_text())["trial_seconds"]
    else:
        result = trial.run()
        trial_seconds = time.perf_counter() - started
    plans_started = time.perf_counter()
    evidence = trial_evidence(f"benchmarks/workloads/{name}.py", settings) + " (benchmarks/plan_quality.py)"
    # <stem>_priors.yaml: on the SGD scale, what fit_priors.py pools (none where Adam is not ahead
    # of SGD: its qualities would run backwards); <stem>_own_priors.yaml: where that scale has no
    # unit, what memplan trial writes instead, on Adam's loss
    fit_path, own_path = RESULTS / f"{stem}_priors.yaml", RESULTS / f"{stem}_own_priors.yaml"
    for path in (fit_path, own_path):
        path.unlink(missing_ok=True)
    if not result.scale_inverted():
        fit_path.write_text(yaml.safe_dump(priors_document(result, evidence, SGD_SCALE), sort_keys=False))
    if result.scale() != SGD_SCALE:
        own_path.write_text(yaml.safe_dump(priors_document(result, evidence), sort_keys=False))
    # the plans are made with the priors memplan trial would have written for this workload, and with
    # the bundled ones where it would have written none
    planned_with = (fit_path if result.scale() == SGD_SCALE else own_path) if result.ranks_methods() else None
    priors = load_priors(planned_with)
    profile = result.profile
    adam_bytes = uniform_state_bytes(profile, REFERENCE_FAMILY)
    plans = {}
    for share in BUDGET_SHARES:
        plan = make_plan(profile, int(adam_bytes * share), priors_path=None if planned_with is None else str(planned_with))
        label = f"plan {share:.0%}"
        trial.add_plan(plan, label)
        plans[label] = {"budget_bytes": plan.budget_bytes, "state_bytes": plan.state_bytes,
                        "methods": plan.by_method(), "predicted_quality": plan.predicted.quality}
    result.runs_frame().to_csv(RESULTS / f"{stem}_runs.csv", index=False)
    table = result.table()
    table.to_csv(RESULTS / f"{stem}_table.csv", index=False)
    result.probe_table().to_csv(RESULTS / f"{stem}_probes.csv", index=False)
    (RESULTS / f"{stem}_summary.json").write_text(json.dumps({
        "workload": name, "steps": steps, "seeds": seeds, "trial_seconds": round(trial_seconds, 1),
        "total_seconds": round(trial_seconds + time.perf_counter() - plans_started, 1), "adam_state_bytes": adam_bytes,
        "plans": plans, "comparison": compare(result, plans), "notes": result.notes,
        "parameters": sum(param.numel for param in profile.trainable_params),
        "priors_adam_lr": priors.adam_lr, "quality_scale": result.scale(),
        "planned_with": ("own" if priors.scale == SGD_SCALE else f"own ({priors.scale})") if planned_with else "bundled",
    }, indent=2, default=str))


def reload_trial(trial: Trial, name: str, steps: int, seeds: int):
    """``trial``'s result with the uniform and probe runs of the last run saved as ``name`` (which
    must have used the same steps and seeds), without its plans."""
    summary = json.loads((RESULTS / f"{name}_summary.json").read_text())
    if (summary["steps"], summary["seeds"]) != (steps, seeds):
        raise SystemExit(f"{name}'s saved runs used --steps {summary['steps']} --seeds {summary['seeds']}")
    runs = pd.read_csv(RESULTS / f"{name}_runs.csv")
    runs = runs[runs["kind"] != "plan"].astype(object).where(runs.notna(), None)
    table = pd.read_csv(RESULTS / f"{name}_table.csv")
    result = trial.result
    result.runs = [{**row, "seed": int(row["seed"]), "diverged": bool(row["diverged"])}
                   for row in runs.to_dict("records")]
    result.best_lr = {row.method: row.best_lr for row in table.itertuples() if row.kind == "uniform"}
    result.best_lr.update({label: result.best_lr[REFERENCE_FAMILY]
                           for label in runs.loc[runs["kind"] == "probe", "arm"].unique()})
    result.notes = list(summary["notes"])
    return result


def compare(result, plans: dict) -> list[dict]:
    """Per plan: its loss, the best uniform method that fits its budget, Adam's loss, with spreads,
    and the plan's loss minus the best uniform method's, seed by seed (mean and standard error)."""
    table = result.table().set_index("method")
    rows = []
    for label, plan in plans.items():
        fitting = table[(table["kind"] == "uniform") & (table["state_bytes"] <= plan["budget_bytes"])]
        fitting = fitting[fitting["loss"].apply(math.isfinite)]
        best = fitting["loss"].idxmin() if len(fitting) else None
        plan_runs = result.best_runs(label)
        best_runs = result.best_runs(best) if best else {}
        plan_losses = list(plan_runs.values())
        best_losses = list(best_runs.values())
        adam_losses = list(result.best_runs(REFERENCE_FAMILY).values())
        # seed by seed (the same initialisation and batches): the difference's spread leaves out
        # what the seeds share, which the two means' spreads both carry
        paired = [plan_runs[seed] - best_runs[seed] for seed in plan_runs if seed in best_runs]
        paired_spread = _std(paired)
        rows.append({
            "plan": label, "budget_bytes": plan["budget_bytes"], "plan_loss": _mean(plan_losses),
            "plan_loss_std": _std(plan_losses), "best_uniform": best, "best_uniform_loss": _mean(best_losses),
            "best_uniform_loss_std": _std(best_losses), "adam_loss": _mean(adam_losses),
            "adam_loss_std": _std(adam_losses),
            "plan_vs_best_uniform": _mean(plan_losses) / _mean(best_losses) - 1 if best_losses else None,
            "plan_vs_adam": _mean(plan_losses) / _mean(adam_losses) - 1,
            "paired_difference": _mean(paired) if paired else None,
            "paired_se": paired_spread / math.sqrt(len(paired)) if paired_spread is not None else None,
        })
    return rows


def _mean(values: list[float]) -> float:
    return statistics.fmean(values) if values else math.nan


def _std(values: list[float]) -> float | None:
    return statistics.stdev(values) if len(values) > 1 and all(map(math.isfinite, values)) else None


def summary() -> None:
    """Cross-workload Spearman correlations and the plan comparisons, as Markdown."""
    tables = {path.name.removesuffix("_table.csv"): pd.read_csv(path) for path in sorted(RESULTS.glob("*_table.csv"))}
    for name, table in tables.items():
        info = json.loads((RESULTS / f"{name}_summary.json").read_text())
        print(f"\n### {name}: {info['parameters']:,} parameters, {info['steps']} steps, {info['seeds']} seeds, "
              f"trial {info['trial_seconds']:.0f} s, all {info['total_seconds']:.0f} s, plans made with the "
              f"{info.get('planned_with', 'own')} priors\n")
        shown = table[["method", "state_bytes", "best_lr", "lr_ratio", "loss", "loss_std", "quality", "quality_se"]]
        print(markdown(shown))
        print()
        print(markdown(pd.DataFrame(info["comparison"])))
    names = [name for name in tables if (WORKLOADS / f"{name}.py").exists()]   # not runs kept under another stem
    # priors come from the fitted workloads only; each is checked on every other workload, by the
    # measured quality and by the measured loss (the one that keeps its meaning where SGD beats Adam)
    for fitted in (name for name in names if name not in HELD_OUT):
        for measured in names:
            if fitted == measured:
                continue
            test = _qualities(tables[measured]).join(_losses(tables[measured]))
            merged = _qualities(tables[fitted]).add_suffix("_fit").join(test, how="inner").dropna()
            print(f"\nSpearman (priors of {fitted} vs measured on {measured}, {len(merged)} methods): "
                  f"quality {spearman(merged['quality_fit'], merged['quality']):.3f}, "
                  f"loss {spearman(merged['quality_fit'], -merged['loss']):.3f}")
    for name in names:
        if name in HELD_OUT:
            held_out_check(name, tables[name])


def held_out_check(name: str, table: pd.DataFrame) -> None:
    """The bundled priors against what is measured on ``name``, a workload they were not fitted on.

    Two views of the priors, per uniform method: ``prior``, each parameter's prior quality for the
    method without the per-role entries (for most methods the entry's ``quality``; the ET presets
    read the depth curve at this model's shapes), as the cross-workload figures compare; and
    ``planner``, what the planner scores the uniform assignment at on this model: the
    element-weighted mean of each parameter's prior quality for its role. Each is ranked against the
    measured quality and against the measured loss (lower is better): the two rankings agree while
    Adam beats SGD, and only the loss ranking keeps its meaning where SGD wins (the quality scale's
    unit, L_SGD - L_Adam, is then negative).
    """
    profile = load_python_file(WORKLOADS / f"{name}.py")
    bundled = load_priors()
    role_free = dataclasses.replace(bundled, methods={key: dataclasses.replace(entry, roles={})
                                                      for key, entry in bundled.methods.items()})
    uniform = table[table["kind"] == "uniform"].set_index("method")
    measured = _qualities(table).join(uniform[["quality_se", "loss"]]).dropna(subset=["quality", "loss"])
    rows = pd.DataFrame({"method": measured.index,
                         "prior": [uniform_prior(profile, spec, role_free) for spec in measured.index],
                         "planner": [uniform_prior(profile, spec, bundled) for spec in measured.index],
                         "measured": measured["quality"].to_numpy(), "measured_se": measured["quality_se"].to_numpy(),
                         "loss": measured["loss"].to_numpy()})
    print(f"\n### Bundled priors vs measured on {name} (held out from profiles/priors.yaml)\n")
    print(markdown(rows))
    adam, sgd = uniform.loc[REFERENCE_FAMILY, "loss"], uniform.loc[SGD_REFERENCE, "loss"]
    if adam >= sgd:
        print(f"\nSGD ({sgd:.4g}) trains to a lower loss than Adam ({adam:.4g}) here: the quality scale is "
              f"inverted, and only the loss ranking is meaningful.")
    for view in ("prior", "planner"):
        print(f"\nSpearman (bundled priors, {view} view, vs measured on {name}, {len(rows)} methods): "
              f"quality {spearman(rows[view], rows['measured']):.3f}, loss {spearman(rows[view], -rows['loss']):.3f}")
    low, middle, high = noise_ceiling(rows["measured"], rows["measured_se"].fillna(0.0))
    print(f"\nNoise ceiling on {name}: a prior equal to this workload's own measured qualities would rank a "
          f"fresh measurement with the same seed noise at Spearman {middle:.3f} (10-90%: {low:.3f} to {high:.3f})")


def noise_ceiling(qualities: pd.Series, errors: pd.Series, draws: int = 2000) -> tuple[float, float, float]:
    """The 10th, 50th and 90th percentiles of the Spearman correlation between ``qualities`` and a
    replicate of them with independent normal noise of standard deviation ``errors`` (each
    method's standard error over seeds): how well even a perfect prior could rank a measurement
    whose methods lie within noise of each other."""
    generator = torch.Generator().manual_seed(0)
    means = torch.tensor(qualities.to_numpy(), dtype=torch.float64)
    spreads = torch.tensor(errors.to_numpy(), dtype=torch.float64)
    ranks = pd.Series(means.numpy()).rank()
    values = sorted(float(ranks.corr(pd.Series((means + spreads * torch.randn(len(means), generator=generator,
                                                                               dtype=torch.float64)).numpy()).rank()))
                    for _ in range(draws))
    return values[draws // 10], values[draws // 2], values[draws * 9 // 10]


def uniform_prior(profile: ModelProfile, spec: str, priors: Priors) -> float:
    """The element-weighted prior quality of ``spec`` on every trainable parameter of ``profile``."""
    return assigned_plan(profile, lambda _: spec, priors=priors).predicted.quality


def spearman(first: pd.Series, second: pd.Series) -> float:
    """Spearman's rank correlation (ties share their mean rank)."""
    return float(first.rank().corr(second.rank()))


def markdown(frame: pd.DataFrame) -> str:
    """A Markdown table of ``frame`` (numbers to 4 significant digits)."""
    def cell(value: object) -> str:
        if isinstance(value, float):
            return "" if math.isnan(value) else f"{value:.4g}"
        return str(value)

    lines = ["| " + " | ".join(frame.columns) + " |", "|" + "---|" * len(frame.columns)]
    lines += ["| " + " | ".join(cell(value) for value in row) + " |" for row in frame.itertuples(index=False)]
    return "\n".join(lines)


def _qualities(table: pd.DataFrame) -> pd.DataFrame:
    uniform = table[table["kind"] == "uniform"].set_index("method")
    return uniform[["quality"]].replace([math.inf, -math.inf], math.nan)


def _losses(table: pd.DataFrame) -> pd.DataFrame:
    uniform = table[table["kind"] == "uniform"].set_index("method")
    return uniform[["loss"]].replace([math.inf, -math.inf], math.nan)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("workload", nargs="?", help="a file name in benchmarks/workloads/ without .py")
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--probes", type=int, default=2)
    parser.add_argument("--sweep-seeds", type=int, default=1, help="seeds each swept learning rate trains on")
    parser.add_argument("--summary", action="store_true", help="report every workload's results")
    parser.add_argument("--plans-only", action="store_true",
                        help="reuse the workload's saved trial runs; make and train its plans again")
    parser.add_argument("--stem", help="save the results as benchmarks/results/STEM_* instead of under the "
                        "workload's name (a run with other settings, kept beside the fitted one)")
    args = parser.parse_args()
    if args.summary:
        summary()
    elif args.workload:
        run_workload(args.workload, args.steps, args.seeds, args.probes, args.plans_only, args.stem, args.sweep_seeds)
    else:
        parser.error("name a workload or give --summary")


if __name__ == "__main__":
    sys.exit(main())
