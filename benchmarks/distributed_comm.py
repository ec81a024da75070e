"""Communication and step-time overhead of memplan's exact sharded step (FSDP2, 2 ranks, gloo, CPU).

    python benchmarks/distributed_comm.py [SOURCE] [--rounds 3] [--steps 5]

For each method: the bytes one step all-reduces (each rank's packed partial vectors) and how many
collectives carry them, next to the parameter bytes a gather would move; and the step time on 2
spawned ranks (max over ranks of each rank's median, the collective included) against the
single-process step over the whole parameters, measured in interleaved rounds (single, ranks,
single, ranks, ...). Each rank does half the elementwise work, so a ratio below 1 means the
sharding pays for its collective. Threads: 1 per process (the machine has 2 cores).
"""

from __future__ import annotations

import argparse
import statistics

import torch

from memplan.bench import prepare_bench
from memplan.bench_ranks import run_ranks_bench
from memplan.loaders import load_profile

METHODS = ("smmf", "smmf:beta1=none", "et2", "et_inf", "sm3", "adam")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("source", nargs="?", default="resnet18-cifar")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=5)
    args = parser.parse_args()
    torch.set_num_threads(1)
    profile = load_profile(args.source)
    param_bytes = sum(param.nbytes for param in profile.trainable_params)
    single: dict[str, list[float]] = {method: [] for method in METHODS}
    ranks: dict[str, list[float]] = {method: [] for method in METHODS}
    communication: dict[str, tuple[int, int]] = {}
    for round_index in range(args.rounds):
        report = prepare_bench(args.source, METHODS).run(steps=args.steps, warmup=1)
        for result in report.results:
            single[result.method].append(result.step_ms_median)
        distributed = run_ranks_bench(args.source, 2, METHODS, steps=args.steps)
        for result in distributed.results:
            ranks[result.method].append(max(result.step_ms_median))
            communication[result.method] = (result.collectives, result.reduced_bytes)
        print(f"round {round_index + 1}/{args.rounds} done", flush=True)
    print(f"\n{profile.name}: {len(profile.trainable_params)} tensors, {param_bytes:,} parameter bytes; "
          f"torch {torch.__version__}, {args.rounds} rounds x {args.steps} steps, 1 thread per process\n")
    print("| method | collectives per step | bytes all-reduced per step | vs parameter bytes | "
          "single-process step ms (median [min, max]) | 2-rank step ms (median [min, max]) | ratio |")
    print("|---|---|---|---|---|---|---|")
    for method in METHODS:
        collectives, reduced = communication[method]
        one, two = single[method], ranks[method]
        print(f"| {method} | {collectives} | {reduced:,} | {reduced / param_bytes:.2e} | "
              f"{statistics.median(one):.2f} [{min(one):.2f}, {max(one):.2f}] | "
              f"{statistics.median(two):.2f} [{min(two):.2f}, {max(two):.2f}] | "
              f"{statistics.median(two) / statistics.median(one):.2f} |")


if __name__ == "__main__":
    main()
