"""Extreme tensoring's two compiled passes timed apart, beside ``torch.sum`` over the same gradients.

    python benchmarks/et_passes.py [--set gpt2|resnet50|64x64,...] [--level 2] [--rounds 7] [--threads 2]

Every tensor of the set (``optim_speed.py``'s) in one multi-tensor call, as the optimizer makes it
(fp32, no momentum): pass 1 (the slice sums of G^2, and the accumulators' update), pass 2 (the
update), each the fastest of 3 calls per round, in interleaved rounds with the read row; prints the
median ms and the spread of each. Run it in processes alternating with a worktree of another
revision (``PYTHONPATH=...``) to time a change to one pass.
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import torch

from optim_speed import make_params, parameter_shapes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--set", default="gpt2", help="gpt2, shapes such as 64x64,128, or a bundled profile")
    parser.add_argument("--level", type=int, default=2, help="the extreme-tensoring level (et2: 2)")
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    from memplan.kernels import extreme_cpu
    from memplan.methods.shapes import et_index

    params = make_params(parameter_shapes(args.set), "cpu")
    scalars = extreme_cpu.ETScalars(lr=1e-3)
    tensors = []
    for param in params:
        index = et_index(tuple(param.shape), args.level)
        tensors.append(extreme_cpu.ETTensor(param.data.view(-1), param.grad.view(-1), index,
                                            tuple(torch.zeros(dim) for dim in index), None, scalars, None, 1e-30))
    call = extreme_cpu.ETCall(tensors)
    call.run([tensor.grads for tensor in tensors], (scalars, None, 1e-30))   # loads or compiles the kernels
    row = np.array([extreme_cpu._scalar_row(scalars, None, 1e-30)] * len(tensors), dtype=np.float64)
    layouts = tuple((0, tensor.weights.numel(), tuple(tensor.index)) for tensor in tensors)
    addresses = call._addresses
    scaled, axis_roots, corrections = extreme_cpu._square_sums(
        addresses, layouts, call._axis_addresses, row, np.float32, np.float32, extreme_cpu.STORE_ACCUMULATORS)
    cases = {
        "pass 1": lambda: extreme_cpu._square_sums(addresses, layouts, call._axis_addresses, row, np.float32,
                                                   np.float32, extreme_cpu.STORE_ACCUMULATORS),
        "pass 2": lambda: extreme_cpu._update(addresses, layouts, row, corrections, scaled, axis_roots, np.float32),
        "read: torch.sum of each gradient": lambda: [param.grad.sum() for param in params],
    }
    times: dict[str, list[float]] = {name: [] for name in cases}
    for _ in range(args.rounds):
        for name, run in cases.items():
            elapsed = []
            for _ in range(3):
                start = time.perf_counter()
                run()
                elapsed.append(time.perf_counter() - start)
            times[name].append(min(elapsed) * 1e3)
    print(f"{args.set}, et{args.level}, {args.threads} threads; ms, median of {args.rounds} rounds (min-max)\n")
    print("| pass | ms |")
    print("|---|---|")
    for name, values in times.items():
        print(f"| {name} | {statistics.median(values):.2f} ({min(values):.2f}-{max(values):.2f}) |")


if __name__ == "__main__":
    main()
