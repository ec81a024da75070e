"""Step time, state and peak extra memory of memplan's optimizers beside torch's AdamW, on CPU.

    python benchmarks/optim_speed.py [--threads 2] [--steps 5] [--repeats 3]

The parameter set is a 67.7 M-parameter GPT-2-like model: token embedding 50257x768, position
embedding 1024x768, and 4 blocks of LayerNorm(768) + Linear 768->2304, 768->768, 768->3072,
3072->768 (weights and biases), with random gradients of scale 1e-3. Each optimizer gets a
warm-up step, then `--steps` timed steps; the median is reported. The whole round (every
optimizer, in turn) is repeated `--repeats` times, interleaved, and the ratio to AdamW is taken
within each round, so slow phases of a shared machine hit both sides of a ratio alike; the
table gives the median over rounds. Peak extra memory is measured in a separate, profiled step
(torch.profiler memory events; see CpuDevice.peak_during in memplan/devices.py).
"""

from __future__ import annotations

import argparse
import gc
import statistics
import time

import torch

from memplan.devices import CpuDevice
from memplan.measure import state_storage_bytes
from memplan.optim import build_optimizer

SHAPES = [(50257, 768), (1024, 768)]
for _ in range(4):
    SHAPES += [(768,), (768,), (2304, 768), (2304,), (768, 768), (768,), (3072, 768), (3072,), (768, 3072), (768,)]

METHODS = ["adamw:impl=foreach", "adamw:impl=forloop", "adamw:impl=fused", "smmf", "smmf:sign_bits=8",
           "smmf:beta1=none", "et2", "et1", "et3", "et_inf", "sm3", "sm3:momentum=0"]
CHUNK = 32 * 2**20


def make_params(seed: int = 0) -> list[torch.nn.Parameter]:
    generator = torch.Generator().manual_seed(seed)
    params = [torch.nn.Parameter(torch.randn(shape, generator=generator) * 0.02) for shape in SHAPES]
    for param in params:
        param.grad = torch.randn(param.shape, generator=generator) * 1e-3
    return params


def timed_steps(optimizer: torch.optim.Optimizer, steps: int) -> float:
    """Median wall time of ``steps`` steps, in milliseconds."""
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        optimizer.step()
        times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times)


def build(spec: str, params: list[torch.nn.Parameter]) -> torch.optim.Optimizer:
    overrides = {} if spec.startswith("adamw") else {"chunk_bytes": CHUNK}
    return build_optimizer(spec, params, lr=1e-3, **overrides)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    params = make_params()
    print(f"{sum(p.numel() for p in params):,} parameters in {len(params)} tensors; torch {torch.__version__}, "
          f"{args.threads} threads, median of {args.steps} steps, {args.repeats} interleaved rounds\n")
    rounds: dict[str, list[float]] = {spec: [] for spec in METHODS}
    state: dict[str, int] = {}
    peak: dict[str, int] = {}
    for _ in range(args.repeats):
        for spec in METHODS:
            params = make_params()
            optimizer = build(spec, params)
            optimizer.step()  # warm-up: allocates the state
            rounds[spec].append(timed_steps(optimizer, args.steps))
            state[spec] = state_storage_bytes(optimizer)
            if spec not in peak:
                peak[spec] = CpuDevice().peak_during(optimizer.step)[1]
            del optimizer, params
            gc.collect()
    baseline = rounds[METHODS[0]]
    print("| method | step (ms, median of rounds) | vs AdamW (median of per-round ratios) | state (MiB) | peak extra (MiB) |")
    print("|---|---|---|---|---|")
    for spec in METHODS:
        ratio = statistics.median(mine / base for mine, base in zip(rounds[spec], baseline))
        print(f"| {spec} | {statistics.median(rounds[spec]):.1f} | {ratio:.2f}x | {state[spec] / 2**20:.2f} | "
              f"{peak[spec] / 2**20:.2f} |")


if __name__ == "__main__":
    main()
