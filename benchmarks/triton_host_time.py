"""The host's Python per step of memplan's Triton optimizers, measured without a GPU.

    python benchmarks/triton_host_time.py [--set resnet50|gpt2 ...] [--steps 50]

A GPU step cannot hide the Python that prepares its launches: when the kernels take less time
than the host needs to issue them, the host's time is the step's. This script steps SMMF and
SM3-II (no momentum) on CPU tensors with their Triton path selected and the kernel launches
replaced by no-ops, so what is timed is everything else a step does on the host: the optimizer's
checks, the prepared call's gradient addresses and scalars, the upload of the per-call table and
the zero-filled statistics buffer. It leaves out Triton's own launcher (a few tens of microseconds
per launch, three or four launches a step). Medians over ``--steps`` steps after three warm-up
steps, one torch thread.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from memplan.kernels import sm3_triton, smmf_triton
from memplan.optim import SM3, SMMF
from optim_speed import build, make_params, parameter_shapes


class _NoLaunch:
    """A kernel whose launches do nothing."""

    def __getitem__(self, grid):
        return lambda *args, **kwargs: None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--set", action="append", help="gpt2 (the 67.7 M set) or a bundled profile (default: both "
                        "resnet50 and gpt2)")
    parser.add_argument("--steps", type=int, default=50)
    args = parser.parse_args()
    smmf_triton._many_kernels = lambda: (_NoLaunch(), _NoLaunch(), _NoLaunch())
    sm3_triton._many_kernels = lambda: (_NoLaunch(), _NoLaunch())
    for cls in (SMMF, SM3):
        cls.implementation = lambda self, group: "triton"
    torch.set_num_threads(1)
    print("| set | method | host ms per step (median; min) |\n|---|---|---|")
    for name in args.set or ["resnet50", "gpt2"]:
        shapes = parameter_shapes(name)
        for spec in ["smmf:impl=triton", "sm3:momentum=0,impl=triton"]:
            optimizer = build(spec, make_params(shapes, "cpu"))
            for _ in range(3):
                optimizer.step()
            times = []
            for _ in range(args.steps):
                start = time.perf_counter()
                optimizer.step()
                times.append((time.perf_counter() - start) * 1e3)
            print(f"| {name} ({len(shapes)} tensors) | {spec} | {statistics.median(times):.3f}; {min(times):.3f} |")


if __name__ == "__main__":
    main()
