"""Step times of the working tree beside another revision's, in alternating processes.

    python benchmarks/side_by_side.py --against REV [--set gpt2|resnet50] [--methods spec,spec,...]
                                      [--runs 4] [--rounds 5] [--steps 3] [--threads 2] [--fresh-cache]

A kernel change is timed against the commit before it in separate processes (two versions of a
module cannot share one), alternating: the revision's run 1, the tree's run 1, then the tree's run 2
before the revision's, and so on (a machine slowing down over the runs favours neither); the
revision is checked out in a temporary git worktree. Each process steps every method (the first
is the baseline) on one set of tensors (``optim_speed.py``'s), in ``--rounds`` interleaved rounds
of ``--steps`` steps, with ``torch.sum`` over every gradient in each round (the ``read`` column:
this machine's memory runs at two speeds minutes apart, and a ratio means something only beside the
read rate it was taken at). The table gives each process's medians; the summary, per method, the
median over runs of each version's ratio to the baseline and of the tree's time over the
revision's in the same pair of runs. ``--fresh-cache`` gives every process an empty numba cache of
its own, so that each times the kernels as the first process on a machine runs them, compiled
during its warm-up step; a second table then gives those first steps' times.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
DEFAULT_METHODS = "adamw:impl=fused,smmf:impl=compiled,sm3:momentum=0,impl=compiled,et2:impl=compiled"


def worker(args: argparse.Namespace) -> None:
    """Time the methods with the memplan on ``sys.path`` and print one JSON line of medians (ms)."""
    import torch

    from optim_speed import build, make_params, parameter_shapes, split_spec_list

    torch.set_num_threads(args.threads)
    methods = split_spec_list(args.methods)
    params = make_params(parameter_shapes(args.set), "cpu")
    optimizers = {spec: build(spec, params) for spec in methods}
    first = {FIRST + spec: _median_ms(optimizer.step, 1) for spec, optimizer in optimizers.items()}   # warm-up:
    # the state, and the kernels loaded or compiled
    times: dict[str, list[float]] = {spec: [] for spec in [*methods, "read"]}
    for _ in range(args.rounds):
        for spec, optimizer in optimizers.items():
            times[spec].append(_median_ms(optimizer.step, args.steps))
        times["read"].append(_median_ms(lambda: [param.grad.sum() for param in params], args.steps))
    print(json.dumps({**{name: statistics.median(values) for name, values in times.items()}, **first}))


FIRST = "first step: "
"""The prefix of a method's warm-up step time (ms) in a worker's results."""


def _median_ms(run, steps: int) -> float:
    elapsed = []
    for _ in range(steps):
        start = time.perf_counter()
        run()
        elapsed.append(time.perf_counter() - start)
    return statistics.median(elapsed) * 1e3


def _run(root: Path, args: argparse.Namespace) -> dict[str, float]:
    """One worker process on the sources under ``root``."""
    command = [sys.executable, __file__, "--worker", "--set", args.set, "--methods", args.methods, "--rounds",
               str(args.rounds), "--steps", str(args.steps), "--threads", str(args.threads)]
    env = {**os.environ, "PYTHONPATH": str(root), "OMP_NUM_THREADS": str(args.threads)}
    with tempfile.TemporaryDirectory(prefix="side-by-side-cache-") as cache:
        if args.fresh_cache:
            env["NUMBA_CACHE_DIR"] = cache
        result = subprocess.run(command, cwd=root, env=env, capture_output=True, text=True)
    if result.returncode:
        raise SystemExit(f"side_by_side: the run under {root} failed:\n{result.stderr[-2000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def _pair(checkout: Path, args: argparse.Namespace, tree_first: bool) -> tuple[dict[str, float], dict[str, float]]:
    """One run of each version, (revision, tree); every other pair runs the tree first, so that a
    machine slowing down (or speeding up) over the runs does not favour one version."""
    if tree_first:
        tree = _run(REPO, args)
        return _run(checkout, args), tree
    revision = _run(checkout, args)
    return revision, _run(REPO, args)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--against", help="the git revision to time beside the working tree")
    parser.add_argument("--set", default="gpt2",
                        help="gpt2 (the 67.7 M set), shapes such as 64x64,128, or a bundled profile (resnet50)")
    parser.add_argument("--methods", default=DEFAULT_METHODS, help="comma-separated specs; the first is the baseline")
    parser.add_argument("--runs", type=int, default=4, help="processes per version")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--fresh-cache", action="store_true",
                        help="an empty numba cache for every process: time the kernels as a first process compiles them")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args)
        return
    if not args.against:
        parser.error("--against REV is required")
    with tempfile.TemporaryDirectory(prefix="side-by-side-") as scratch:
        checkout = Path(scratch) / "revision"
        subprocess.run(["git", "-C", str(REPO), "worktree", "add", "--detach", "-q", str(checkout), args.against],
                       check=True)
        try:
            pairs = [_pair(checkout, args, tree_first=number % 2 == 1) for number in range(args.runs)]
        finally:
            subprocess.run(["git", "-C", str(REPO), "worktree", "remove", "--force", str(checkout)], check=True)
    report(pairs, args)


def report(pairs: list[tuple[dict[str, float], dict[str, float]]], args: argparse.Namespace) -> None:
    """The per-run table and the per-method summary (see the module docstring)."""
    methods = [name for name in pairs[0][0] if name != "read" and not name.startswith(FIRST)]
    baseline = methods[0]
    cache = "; every process with an empty numba cache" if args.fresh_cache else ""
    print(f"{args.set}, {args.threads} threads; each cell a process's median of {args.rounds} rounds of "
          f"{args.steps} steps (ms); {args.against} against the working tree, alternating{cache}\n")
    print("| run | version | read | " + " | ".join(methods) + " |")
    print("|---|---|---|" + "---|" * len(methods))
    for number, pair in enumerate(pairs, 1):
        for version, times in zip((args.against, "tree"), pair):
            cells = [f"{times[baseline]:.4g}"] + [f"{times[name]:.4g} ({times[name] / times[baseline]:.2f}x)"
                                                  for name in methods[1:]]
            print(f"| {number} | {version} | {times['read']:.4g} | " + " | ".join(cells) + " |")
    print(f"\n| method | {args.against}: vs {baseline} | tree: vs {baseline} | tree / {args.against} (same pair) |")
    print("|---|---|---|---|")
    for name in methods[1:]:
        before = statistics.median(old[name] / old[baseline] for old, _ in pairs)
        after = statistics.median(new[name] / new[baseline] for _, new in pairs)
        change = statistics.median(new[name] / old[name] for old, new in pairs)
        print(f"| {name} | {before:.2f}x | {after:.2f}x | {change:.2f} |")
    if args.fresh_cache and all(FIRST + name in times for pair in pairs for times in pair for name in methods):
        _report_first_steps(pairs, methods, args)


def _report_first_steps(pairs: list[tuple[dict[str, float], dict[str, float]]], methods: list[str],
                        args: argparse.Namespace) -> None:
    """Each process's first step of each method (its warm-up, which compiled the kernels it calls
    with every cache empty), in seconds, and the median over pairs of the tree's over the revision's."""
    print("\nFirst steps (s), each method's kernels compiled in its warm-up step\n")
    print("| run | version | " + " | ".join(methods) + " |")
    print("|---|---|" + "---|" * len(methods))
    for number, pair in enumerate(pairs, 1):
        for version, times in zip((args.against, "tree"), pair):
            print(f"| {number} | {version} | " + " | ".join(f"{times[FIRST + name] / 1e3:.1f}" for name in methods)
                  + " |")
    print(f"| tree / {args.against} (median of pairs) | | "
          + " | ".join(f"{statistics.median(new[FIRST + name] / old[FIRST + name] for old, new in pairs):.2f}"
                       for name in methods) + " |")


if __name__ == "__main__":
    main()
