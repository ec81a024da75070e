"""Communication and step-time overhead of memplan's exact sharded step (FSDP2, 2 ranks, gloo, CPU).

    python benchmarks/distributed_comm.py [SOURCE] [--rounds 3] [--steps 5]

For each method, and a plan alternating SMMF and SM3 over the parameters (sums and maxima in one
step: one all-gather): the collectives of one step and the bytes each rank packs into them, next
to the parameter bytes a gather would move; the collective term the time model predicts (latency
and bus bandwidth measured on the ranks, see memplan.costmodel.CollectiveModel); and the step
time on 2 spawned ranks (max over ranks of each rank's median, the collective included) against
the single-process step over the whole parameters, measured in interleaved rounds (single, ranks,
single, ranks, ...). Each rank does half the elementwise work, so a ratio below 1 means the
sharding pays for its collective. Threads: 1 per process (the machine has 2 cores).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
from pathlib import Path

import torch

from memplan.bench import prepare_bench
from memplan.bench_ranks import run_ranks_bench
from memplan.loaders import load_profile
from memplan.methods import get_method, param_state, parse_spec
from memplan.plan import Plan, PlanEntry, PlanPrediction
from memplan.profile import ModelProfile

METHODS = ("smmf", "smmf:beta1=none", "et2", "et_inf", "sm3", "adam")
PLAN_SPECS = ("smmf", "sm3")


def alternating_plan(profile: ModelProfile, specs: tuple[str, ...]) -> Plan:
    """A plan giving the profile's parameters ``specs`` in turn, each with its default layout."""
    entries = []
    for index, param in enumerate(profile.trainable_params):
        state = param_state(specs[index % len(specs)], param.shape, param.dtype)
        entries.append(PlanEntry(name=param.name, shape=param.shape, dtype=param.dtype, method=state.spec,
                                 layout=state.layout, momentum=state.momentum, state_dtype="",
                                 state_bytes=state.state_bytes, quality=1.0))
    total = sum(entry.state_bytes for entry in entries)
    names = sorted({parse_spec(spec).name for spec in specs})
    return Plan(model_name=profile.name, model_source=profile.source, fingerprint=profile.fingerprint,
                budget_bytes=total, entries=tuple(entries),
                predicted=PlanPrediction(state_bytes=total, quality=1.0, objective=1.0, objective_bound=1.0),
                hyperparameters={name: get_method(name).hyperparameter_defaults() for name in names})


def spread(values: list[float]) -> str:
    return f"{statistics.median(values):.2f} [{min(values):.2f}, {max(values):.2f}]"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("source", nargs="?", default="resnet18-cifar")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=5)
    args = parser.parse_args()
    torch.set_num_threads(1)
    profile = load_profile(args.source)
    param_bytes = sum(param.nbytes for param in profile.trainable_params)
    plan_label = "plan: " + " / ".join(PLAN_SPECS)
    labels = (*METHODS, plan_label)
    single: dict[str, list[float]] = {label: [] for label in labels}
    ranks: dict[str, list[float]] = {label: [] for label in labels}
    collective_ms: dict[str, list[float]] = {label: [] for label in labels}
    communication: dict[str, tuple[int, int, int, int]] = {}
    links = []
    with tempfile.TemporaryDirectory() as directory:
        plan_path = alternating_plan(profile, PLAN_SPECS).save(Path(directory) / "plan.yaml")
        for round_index in range(args.rounds):
            report = prepare_bench(args.source, METHODS, plan=plan_path).run(steps=args.steps, warmup=1)
            for result in report.results:
                single[plan_label if result.method.startswith("plan") else result.method].append(result.step_ms_median)
            distributed = run_ranks_bench(args.source, 2, METHODS, plan=plan_path, steps=args.steps)
            links.append(distributed.collective)
            for result in distributed.results:
                label = plan_label if result.method.startswith("plan") else result.method
                ranks[label].append(max(result.step_ms_median))
                collective_ms[label].append(result.predicted_collective_ms)
                communication[label] = (result.collectives, result.reduced_bytes, result.predicted_collectives,
                                        result.predicted_reduced_bytes)
            print(f"round {round_index + 1}/{args.rounds} done", flush=True)
    print(f"\n{profile.name}: {len(profile.trainable_params)} tensors, {param_bytes:,} parameter bytes; "
          f"torch {torch.__version__}, {args.rounds} rounds x {args.steps} steps, 1 thread per process")
    print("gloo collective measured on the ranks, per round: "
          + "; ".join(f"{link.latency * 1e6:.0f} us + bus bytes at {link.bandwidth / 1e9:.2f} GB/s" for link in links)
          + "\n")
    print("| method | collectives per step (predicted) | bytes per rank per step (predicted) | vs parameter bytes | "
          "predicted collective ms | single-process step ms (median [min, max]) | 2-rank step ms (median [min, max]) "
          "| ratio |")
    print("|---|---|---|---|---|---|---|---|")
    for label in labels:
        if not ranks[label]:
            continue
        collectives, reduced, predicted_collectives, predicted_bytes = communication[label]
        one, two = single[label], ranks[label]
        print(f"| {label} | {collectives} ({predicted_collectives}) | {reduced:,} ({predicted_bytes:,}) | "
              f"{reduced / param_bytes:.2e} | {spread(collective_ms[label])} | {spread(one)} | {spread(two)} | "
              f"{statistics.median(two) / statistics.median(one):.2f} |")


if __name__ == "__main__":
    main()
