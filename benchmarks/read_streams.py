"""How many streams a compiled loop must read at once to reach the machine's read rate: a sum of
squares over one 256 MiB fp32 tensor, compiled with numba, each thread reading its share as 1, 2 or
4 interleaved streams (its share cut in as many parts, one element of each per iteration), beside
``torch.sum`` over the same tensor.

    python benchmarks/read_streams.py [--rounds 7]

One and two threads (Python threads running ``nogil`` loops, as memplan's CPU kernels run);
interleaved rounds; the table gives the median ns per element and GB/s (4 bytes read each).
"""

from __future__ import annotations

import argparse
import statistics
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch

from memplan.kernels.jit import numba_module

numba = numba_module()
LOOP = dict(nogil=True, fastmath={"reassoc"}, error_model="numpy")


@numba.njit(**LOOP)
def one_stream(values):
    """The sum of squares, read front to back."""
    total = np.float32(0)
    for i in range(values.shape[0]):
        total += values[i] * values[i]
    return total


@numba.njit(**LOOP)
def two_streams(values):
    """The same, the two halves read at once."""
    half = values.shape[0] // 2
    first = np.float32(0)
    second = np.float32(0)
    for i in range(half):
        first += values[i] * values[i]
        second += values[half + i] * values[half + i]
    return first + second


@numba.njit(**LOOP)
def four_streams(values):
    """The same, the four quarters read at once."""
    quarter = values.shape[0] // 4
    a = np.float32(0)
    b = np.float32(0)
    c = np.float32(0)
    d = np.float32(0)
    for i in range(quarter):
        a += values[i] * values[i]
        b += values[quarter + i] * values[quarter + i]
        c += values[2 * quarter + i] * values[2 * quarter + i]
        d += values[3 * quarter + i] * values[3 * quarter + i]
    return a + b + c + d


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args()
    tensor = torch.randn(64 * 2**20)
    values = tensor.numpy()
    pool = ThreadPoolExecutor(2)

    def threaded(loop, threads: int):
        share = values.shape[0] // threads
        return lambda: list(pool.map(lambda k: loop(values[k * share:(k + 1) * share]), range(threads)))

    def torch_sum(threads: int):
        def run():
            torch.set_num_threads(threads)
            return tensor.sum()
        return run

    cases = {}
    for threads in (1, 2):
        cases[f"torch.sum, {threads} thread(s)"] = torch_sum(threads)
        for name, loop in (("1 stream", one_stream), ("2 streams", two_streams), ("4 streams", four_streams)):
            loop(values[:64])  # compile
            cases[f"numba, {threads} thread(s), {name} each"] = threaded(loop, threads)
    times: dict[str, list[float]] = {name: [] for name in cases}
    for _ in range(args.rounds):
        for name, run in cases.items():
            start = time.perf_counter()
            run()
            times[name].append((time.perf_counter() - start) / values.shape[0] * 1e9)
    print(f"sum of squares over {values.shape[0]:,} fp32; ns per element, median of {args.rounds} interleaved "
          "rounds (min-max)\n")
    print("| loop | ns per element | GB/s |")
    print("|---|---|---|")
    for name, values_ns in times.items():
        median = statistics.median(values_ns)
        print(f"| {name} | {median:.3f} ({min(values_ns):.3f}-{max(values_ns):.3f}) | {4 / median:.1f} |")


if __name__ == "__main__":
    main()
