"""Step time, state and peak extra memory of memplan's optimizers beside torch's AdamW, on CPU or CUDA.

    python benchmarks/optim_speed.py [--threads 2] [--steps 5] [--repeats 3] [--set gpt2|resnet50|64x64,...]
                                     [--methods spec,spec,...] [--device cpu|cuda]

``--set resnet50`` takes the bundled ResNet-50 profile's 161 tensors (25.6 M parameters, many
small) instead, and ``--set 64x64`` (shapes, comma-separated) the tensors written out. Methods with
``impl=compiled`` run the one-pass CPU kernels, ``impl=triton`` the Triton kernels on a GPU; the
``impl`` column says which implementation actually ran (a missing JIT
falls back to eager). ``--device cuda`` times each step between CUDA events (one synchronisation
after the timed steps, as ``memplan bench`` does) and defaults to the Triton methods.

The parameter set is a 67.7 M-parameter GPT-2-like model: token embedding 50257x768, position
embedding 1024x768, and 4 blocks of LayerNorm(768) + Linear 768->2304, 768->768, 768->3072,
3072->768 (weights and biases), with random gradients of scale 1e-3. Each optimizer gets a
warm-up step, then `--steps` timed steps; the median is reported. The whole round (every
optimizer, in turn) is repeated `--repeats` times, interleaved, and the ratio to AdamW is taken
within each round, so slow phases of a shared machine hit both sides of a ratio alike; the
table gives the median over rounds. Each round also times ``torch.sum`` over every gradient (the
``read`` row): the rate the machine reads the tensors at, beside which the one-pass steps' read
bytes are reported (``GB/s read``). Peak extra memory is measured in a separate, profiled step
(torch.profiler memory events on CPU, the allocator's peak on CUDA; see ``peak_during`` in
memplan/devices.py).
"""

from __future__ import annotations

import argparse
import math
import statistics

import torch

from memplan.devices import Device, parse_device
from memplan.loaders.bundled import load_bundled
from memplan.measure import state_storage_bytes
from memplan.methods import split_spec_list
from memplan.optim import build_optimizer
from memplan.optim.implementation import implementation_of

SHAPES = [(50257, 768), (1024, 768)]
for _ in range(4):
    SHAPES += [(768,), (768,), (2304, 768), (2304,), (768, 768), (768,), (3072, 768), (3072,), (768, 3072), (768,)]

METHODS = ["adamw:impl=foreach", "adamw:impl=forloop", "adamw:impl=fused", "smmf", "smmf:sign_bits=8",
           "smmf:beta1=none", "et2", "et1", "et3", "et_inf", "sm3", "sm3:momentum=0", "smmf:impl=compiled",
           "smmf:sign_bits=8,impl=compiled", "smmf:beta1=none,impl=compiled", "sm3:impl=compiled",
           "sm3:momentum=0,impl=compiled", "et2:impl=compiled"]
CUDA_METHODS = ["adamw:impl=fused", "adamw:impl=foreach", "smmf:impl=triton", "smmf:sign_bits=8,impl=triton",
                "smmf:beta1=none,impl=triton", "sm3:impl=triton", "sm3:momentum=0,impl=triton", "smmf",
                "sm3:momentum=0", "et2"]
BYTES_PER_ELEMENT = {"adamw:impl=fused": 28, "smmf": 12.25, "smmf:sign_bits=8": 14, "smmf:beta1=none": 12,
                     "sm3": 20, "sm3:momentum=0": 12, "et2": 16}
"""The compulsory traffic of one fused step (ALGORITHMS.md), for the achieved-bandwidth column of
the one-pass kernels (``impl=compiled`` or ``triton``) and fused AdamW."""
READ_BYTES_PER_ELEMENT = {"adamw:impl=fused": 16, "smmf": 8.125, "smmf:sign_bits=8": 9, "smmf:beta1=none": 8,
                          "sm3": 12, "sm3:momentum=0": 8, "et2": 12}
"""The part of that traffic a step reads (extreme tensoring reads the gradients once per pass): on
a CPU whose writes back to read lines cost little, a step's time follows these bytes, and the
``read`` row (``torch.sum`` over the same gradients, timed in every round) gives the rate they can
be read at."""
CHUNK = 32 * 2**20


def parameter_shapes(name: str) -> list[tuple[int, ...]]:
    """The benchmark's tensors: the GPT-2-like set, shapes written out (``64x64`` or ``768x768,768``:
    a step's fixed costs where the tensors are small), or a bundled profile's parameters."""
    if name == "gpt2":
        return SHAPES
    if all(part.replace("x", "").isdigit() for part in name.split(",")):
        return [tuple(int(dim) for dim in part.split("x")) for part in name.split(",")]
    return [tuple(param.shape) for param in load_bundled(name).params]


def make_params(shapes: list[tuple[int, ...]], device: str, seed: int = 0) -> list[torch.nn.Parameter]:
    """Random weights and gradients on ``device``, drawn there (the same values for a seed)."""
    generator = torch.Generator(device).manual_seed(seed)
    params = [torch.nn.Parameter(torch.randn(shape, generator=generator, device=device) * 0.02) for shape in shapes]
    for param in params:
        param.grad = torch.randn(param.shape, generator=generator, device=device) * 1e-3
    return params


def fused_bytes(spec: str, implementation: str, table: dict[str, float] = BYTES_PER_ELEMENT) -> float | None:
    """Bytes per element (from ``table``) a one-pass step of ``spec`` moves, where it ran as one
    (else None)."""
    if spec == "adamw:impl=fused":
        return table[spec]
    if implementation not in ("compiled", "triton"):
        return None
    name, _, options = spec.partition(":")  # as written: the parsed values print as None, 0.0
    options = ",".join(option for option in options.split(",") if option and not option.startswith("impl="))
    return table.get(f"{name}:{options}" if options else name)


def timed_read(params: list[torch.nn.Parameter], steps: int, device: Device) -> float:
    """Median time of summing every gradient (each read once), in milliseconds: the rate this
    device reads a step's gradients at, in the same round as the steps."""
    return statistics.median(device.time_steps(lambda: [param.grad.sum() for param in params], steps))


def timed_steps(optimizer: torch.optim.Optimizer, steps: int, device: Device) -> float:
    """Median time of ``steps`` steps on ``device``, in milliseconds (wall time on CPU, between
    CUDA events on a GPU)."""
    return statistics.median(device.time_steps(optimizer.step, steps))


def build(spec: str, params: list[torch.nn.Parameter]) -> torch.optim.Optimizer:
    overrides = {} if spec.startswith("adamw") else {"chunk_bytes": CHUNK}
    return build_optimizer(spec, params, lr=1e-3, **overrides)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--set", default="gpt2",
                        help="gpt2 (the 67.7 M set), shapes such as 64x64,128, or a bundled profile (resnet50)")
    parser.add_argument("--methods", help="comma-separated specs; the first is the baseline "
                        "(default: every method on CPU, the Triton ones and references on CUDA)")
    parser.add_argument("--no-peak", action="store_true", help="skip the profiled peak-memory step (faster)")
    parser.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    args = parser.parse_args()
    device = parse_device(args.device)
    methods = split_spec_list(args.methods or ",".join(METHODS if device.kind == "cpu" else CUDA_METHODS))
    torch.set_num_threads(args.threads)
    device.prepare()
    shapes = parameter_shapes(args.set)
    elements = sum(math.prod(shape) for shape in shapes)
    where = f"{args.threads} threads" if device.kind == "cpu" else device.description
    print(f"{args.set}: {elements:,} parameters in {len(shapes)} tensors; torch {torch.__version__}, {where}, "
          f"median of {args.steps} steps, {args.repeats} interleaved rounds\n")
    rounds: dict[str, list[float]] = {spec: [] for spec in methods}
    impl: dict[str, str] = {}
    state: dict[str, int] = {}
    peak: dict[str, int] = {}
    reads: list[float] = []
    for _ in range(args.repeats):
        params = make_params(shapes, device.torch_device)
        timed_read(params, 1, device)
        reads.append(timed_read(params, args.steps, device))
        del params
        for spec in methods:
            params = make_params(shapes, device.torch_device)
            optimizer = build(spec, params)
            impl[spec] = implementation_of(optimizer)
            optimizer.step()  # warm-up: allocates the state (and compiles the kernels, the first time)
            rounds[spec].append(timed_steps(optimizer, args.steps, device))
            state[spec] = state_storage_bytes(optimizer)
            if spec not in peak:
                peak[spec] = 0 if args.no_peak else device.peak_during(optimizer.step)[1]
            del optimizer, params
            device.release()
    baseline = rounds[methods[0]]
    read_rate = 4 * elements / statistics.median(reads) / 1e6
    print(f"| method | impl | step (ms, median of rounds; min-max) | vs {methods[0]} (median of per-round ratios) | "
          f"GB/s (fused traffic) | GB/s read (% of read row) | state (MiB) | peak extra (MiB) |")
    print("|---|---|---|---|---|---|---|---|")
    print(f"| read: torch.sum of each gradient | torch | {statistics.median(reads):.1f} ({min(reads):.1f}-"
          f"{max(reads):.1f}) | {statistics.median(r / b for r, b in zip(reads, baseline)):.2f}x | - | "
          f"{read_rate:.1f} (100%) | - | - |")
    for spec in methods:
        ratio = statistics.median(mine / base for mine, base in zip(rounds[spec], baseline))
        median = statistics.median(rounds[spec])
        traffic = fused_bytes(spec, impl[spec])
        rate = "-" if traffic is None else f"{traffic * elements / median / 1e6:.1f}"
        read = fused_bytes(spec, impl[spec], READ_BYTES_PER_ELEMENT)
        read_cell = "-" if read is None else (f"{read * elements / median / 1e6:.1f} "
                                              f"({read * elements / median / 1e6 / read_rate:.0%})")
        extra = "-" if args.no_peak else f"{peak[spec] / 2**20:.2f}"
        print(f"| {spec} | {impl[spec]} | {median:.1f} ({min(rounds[spec]):.1f}-{max(rounds[spec]):.1f}) | "
              f"{ratio:.2f}x | {rate} | {read_cell} | {state[spec] / 2**20:.2f} | {extra} |")


if __name__ == "__main__":
    main()
