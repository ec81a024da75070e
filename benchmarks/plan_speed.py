"""Issue targets for `memplan plan`: planning time, and how gpt2 at 64 MiB spends its budget.

    python benchmarks/plan_speed.py

Times the library call (profile in memory -> Plan): the first run, with nothing cached, and the
median of 5 (later runs reuse cached shape arithmetic); and the whole command
(`memplan plan ... --json`, Python start-up included) once.
"""

from __future__ import annotations

import random
import shutil
import statistics
import subprocess
import tempfile
import time

from memplan.loaders import load_profile
from memplan.profile import ModelProfile, ParamSpec
from memplan.planner import make_plan


def varied_profile(count: int = 2000, seed: int = 0) -> ModelProfile:
    """``count`` tensors of varied shapes: matrices, convolutions, vectors, odd and prime sizes."""
    rng = random.Random(seed)
    params = []
    for index in range(count):
        kind = rng.choice(["linear", "conv", "bias", "embedding"])
        if kind == "linear":
            shape = (rng.randint(16, 4096), rng.randint(16, 4096))
        elif kind == "conv":
            shape = (rng.randint(8, 512), rng.randint(3, 512), rng.choice([1, 3, 5, 7]), rng.choice([1, 3, 5, 7]))
        elif kind == "embedding":
            shape = (rng.randint(1000, 60000), rng.choice([128, 256, 512, 768, 1024]))
        else:
            shape = (rng.randint(1, 8192),)
        params.append(ParamSpec(f"layer{index}.{kind}", shape, kind=kind))
    return ModelProfile("varied-2000", "synthetic", tuple(params))


def first_and_median_seconds(function, runs: int = 5) -> tuple[float, float]:
    """The first (cold: nothing cached yet) run's time and the median of ``runs`` runs."""
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        function()
        times.append(time.perf_counter() - start)
    return times[0], statistics.median(times)


def command_seconds(*args: str) -> float:
    with tempfile.TemporaryDirectory() as workdir:
        start = time.perf_counter()
        subprocess.run([shutil.which("memplan") or "memplan", *args, "--json"], cwd=workdir, check=True,
                       stdout=subprocess.DEVNULL)
        return time.perf_counter() - start


def main() -> None:
    llama = load_profile("llama-7b")
    varied = varied_profile()
    print("| case | library, first run (s) | library, median of 5 (s) | whole command (s) | target |")
    print("|---|---|---|---|---|")
    all_methods = ["smmf", "et", "sm3", "et_inf", "adam", "adagrad", "adafactor", "sgd", "came"]
    first, median = first_and_median_seconds(lambda: make_plan(llama, 2**30, methods=all_methods))
    command = command_seconds("plan", "llama-7b", "--budget", "1GiB", "--methods", ",".join(all_methods))
    print(f"| llama-7b (291 tensors), all methods, 1 GiB | {first:.3f} | {median:.3f} | {command:.2f} | < 1 s |")
    first, median = first_and_median_seconds(lambda: make_plan(varied, 2**30, methods=all_methods))
    print(f"| 2,000 tensors of varied shapes, all methods, 1 GiB | {first:.3f} | {median:.3f} | - | < 2 s |")
    plan = make_plan(load_profile("gpt2"), 64 * 2**20)
    print(f"\ngpt2 at 64 MiB: {plan.state_bytes:,} of {plan.budget_bytes:,} bytes "
          f"({plan.state_bytes / plan.budget_bytes:.1%}), predicted quality {plan.predicted.quality:.4f}, "
          f"objective within {plan.predicted.objective_bound - plan.predicted.objective:.1e} of the LP bound")
    for row in plan.by_method():
        print(f"- {row['method']}: {row['parameters']} tensors, {row['numel']:,} elements, {row['state_bytes']:,} bytes")


if __name__ == "__main__":
    main()
