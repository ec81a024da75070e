"""Which CPU technology runs SMMF's one-pass step: numba against torch.compile (inductor), side by side.

    python benchmarks/kernel_choice.py [--threads 2] [--rounds 5]

One 5087 x 4608 matrix (the square-matricized 50257 x 768 embedding, 23.4 M elements), 1-bit
signs, fp32. Each round times, in turn: torch's fused AdamW step, the numba kernel
(memplan.kernels.smmf_cpu) and the same step written as torch ops and compiled with
torch.compile (inductor's C++ backend; its compile time is excluded). Medians over rounds, with
min-max spread, and each one's ratio to fused AdamW within its round.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from memplan.kernels.smmf_cpu import SMMFScalars, smmf_range

ROWS, COLS = 5087, 4608
SHIFTS = torch.arange(8, dtype=torch.uint8)


def inductor_step(weights, grads, packed, row_v, col_v, row_m, col_m, step_size: float, eps: float):
    """SMMF's fused step as torch ops: what torch.compile gets to fuse."""
    gradient = grads.view(ROWS, COLS)
    bits = (packed.view(-1, 1) >> SHIFTS) & 1
    signs = bits.view(-1)[:ROWS * COLS].view(ROWS, COLS).to(torch.float32) * 2 - 1
    second = gradient * gradient + row_v[:, None] * col_v[None, :]
    moment = gradient + signs * row_m[:, None] * col_m[None, :]
    weights.view(ROWS, COLS).add_(step_size * moment / (second.sqrt() + eps))
    positive = (moment > 0).to(torch.uint8).view(-1, 8) << SHIFTS
    packed.copy_(positive.sum(dim=1).to(torch.uint8))
    magnitude = moment.abs()
    return second.sum(1), second.sum(0), magnitude.sum(1), magnitude.sum(0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    count = ROWS * COLS
    generator = torch.Generator().manual_seed(0)
    weights, grads = torch.randn(count, generator=generator), torch.randn(count, generator=generator) * 1e-3
    packed = torch.randint(0, 256, (count // 8,), dtype=torch.uint8, generator=generator)
    factors = [torch.rand(size, generator=generator) for size in (ROWS, COLS, ROWS, COLS)]
    param = torch.nn.Parameter(weights.clone())
    param.grad = grads.clone()
    adamw = torch.optim.AdamW([param], fused=True)

    def numba_step():
        sums = [torch.zeros(size) for size in (ROWS, COLS, ROWS, COLS)]
        smmf_range(weights, grads, packed, 0, COLS, (factors[0], factors[1]), (factors[2], factors[3]),
                   (sums[0], sums[1]), (sums[2], sums[3]), SMMFScalars(step_size=-1e-3, eps=1e-8))

    compiled = torch.compile(inductor_step, dynamic=False)
    start = time.perf_counter()
    compiled(weights, grads, packed, *factors, -1e-3, 1e-8)
    compile_s = time.perf_counter() - start
    steps = {"adamw fused": adamw.step, "numba": numba_step,
             "torch.compile": lambda: compiled(weights, grads, packed, *factors, -1e-3, 1e-8)}
    for step in steps.values():
        step()
    times: dict[str, list[float]] = {name: [] for name in steps}
    for _ in range(args.rounds):
        for name, step in steps.items():
            begin = time.perf_counter()
            step()
            times[name].append((time.perf_counter() - begin) * 1e3)
    print(f"SMMF step on {ROWS} x {COLS} fp32, 1-bit signs; torch {torch.__version__}, {args.threads} threads, "
          f"{args.rounds} interleaved rounds (torch.compile's first call: {compile_s:.1f} s)\n")
    print("| step | ms (median) | spread (min-max) | vs fused AdamW (median of per-round ratios) | GB/s (12.25 B/elem; AdamW 28) |")
    print("|---|---|---|---|---|")
    for name, values in times.items():
        ratio = statistics.median(mine / base for mine, base in zip(values, times["adamw fused"]))
        moved = (28 if name.startswith("adamw") else 12.25) * count
        print(f"| {name} | {statistics.median(values):.1f} | {min(values):.1f}-{max(values):.1f} | {ratio:.2f}x | "
              f"{moved / statistics.median(values) / 1e6:.1f} |")


if __name__ == "__main__":
    main()
