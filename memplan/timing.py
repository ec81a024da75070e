"""Calibration: measuring this machine's device for the cost model.

:func:`calibrate` times small synthetic kernels and returns the
:class:`memplan.costmodel.DeviceProfile` the cost model (:func:`memplan.costmodel.predict_seconds`)
reads: memory, reduction and cache bandwidths, the strided-norm rate, the per-kernel overhead
(``memplan bench --calibrate``), and the per-element rate and per-step cost of each of memplan's
one-pass kernels that can run here, stepping a fixed synthetic parameter set
(:data:`FUSED_CALIBRATION_SHAPES`) and four times as many tensors, never the user's model.
"""

from __future__ import annotations

import math
import statistics
import time
from dataclasses import dataclass
from typing import Any, Callable, Sequence

from memplan.costmodel import DeviceProfile
from memplan.devices import Device, parse_device


CALIBRATION_BLOCK_ELEMENTS = 2**19
"""Elements of each cache-bandwidth tensor: 2 MiB of fp32, the size of memplan's block temporaries."""

CALIBRATION_CACHE_SETS = 3
"""Triples of block-sized tensors the cache-bandwidth kernels cycle through (18 MiB in all,
more than a core's L2, about the working set of one SMMF block step)."""

CALIBRATION_CACHE_BYTES = CALIBRATION_CACHE_SETS * 3 * CALIBRATION_BLOCK_ELEMENTS * 4
"""The working set the cache bandwidth is measured on, recorded as the profile's ``cache_bytes``."""

CALIBRATION_STREAM_BYTES = 256 * 2**20
"""Size of each tensor of the memory-bandwidth kernels: far beyond any cache."""

STRIDED_NORM_SHAPE = (8192, 1024)
"""The matrix whose column norms (a reduction over axis 0) calibrate the strided-norm rate."""


FUSED_CALIBRATION_SHAPES = ((1024, 1024),) * 3 + ((128, 128, 3, 3),) * 8 + ((768,),) * 4
"""The parameters whose steps time memplan's one-pass kernels: 16.5 MiB of fp32 matrices and 3 x 3
convolutions (with their gradients, beyond a core's L2) and a few vectors. A kernel's rate depends
on the axes it walks (extreme tensoring's root order, SM3's covers), so the set mixes the two
kinds of tensor most models are made of: from matrices alone, ET1's rate predicted ResNet-50's
step 34 to 43% short."""


FUSED_CALIBRATION_COPIES = 4
"""The one-pass kernels step the calibration set and a set of each of its tensors this many times
over: the slope of their step times over elements is a kernel's rate, and what remains of the
smaller set's time its seconds a step besides the elements (the Python that prepares and starts a
call, the threads, the serial combination). The smaller set's time over its elements alone put
that cost into the rate: once the kernels were fast, SM3 without momentum calibrated at 0.41 ns an
element on 2 threads, and the 124 M-parameter GPT-2's step, 0.22 ns an element, was predicted 86%
long."""

FUSED_CALIBRATION_STEPS = 25
"""Timed steps (at least) behind each kernel's rate: one step takes a few milliseconds, and the median
of five in a row swung by a third between runs on a shared machine."""


@dataclass(frozen=True)
class StreamKernel:
    """One kernel of the bandwidth suite and what the census counts for it per element:
    ``reads`` and ``updates`` (read, then written back) once each, ``overwrites`` once in cache
    and twice in memory on a write-allocating device."""

    name: str
    reads: int
    updates: int
    overwrites: int
    run: Callable[[Any, Any, Any], Any]

    def counted_bytes(self, element_bytes: int, in_cache: bool, write_allocate: bool) -> int:
        """Bytes per element the cost model charges for this kernel."""
        fills = self.overwrites if write_allocate and not in_cache else 0
        return element_bytes * (self.reads + 2 * self.updates + self.overwrites + fills)


def _add_out(x: Any, y: Any, z: Any) -> Any:
    import torch

    return torch.add(x, y, out=z)


STREAM_KERNELS = (
    StreamKernel("x.add_(y)", reads=1, updates=1, overwrites=0, run=lambda x, y, z: x.add_(y)),
    StreamKernel("x.mul_(s)", reads=0, updates=1, overwrites=0, run=lambda x, y, z: x.mul_(1.0)),
    StreamKernel("x.addcmul_(y, z)", reads=2, updates=1, overwrites=0,
                 run=lambda x, y, z: x.addcmul_(y, z, value=1e-12)),
    StreamKernel("torch.add(x, y, out=z)", reads=2, updates=0, overwrites=1, run=_add_out),
    StreamKernel("x * y", reads=2, updates=0, overwrites=1, run=lambda x, y, z: x * y),
    StreamKernel("z.copy_(x)", reads=1, updates=0, overwrites=1, run=lambda x, y, z: z.copy_(x)),
)
"""The kernels whose median rate is a bandwidth: the in-place and out-of-place streams optimizer
steps are made of."""

REDUCTION_KERNEL = StreamKernel("x.sum()", reads=1, updates=0, overwrites=0, run=lambda x, y, z: x.sum())
"""The kernel whose rate over a tensor far beyond the cache is the reduction bandwidth."""


def calibrate(device: str | Device = "cpu", repeats: int = 5, stream_bytes: int = CALIBRATION_STREAM_BYTES,
              progress: Callable[[str], None] | None = None,
              fused_shapes: Sequence[tuple[int, ...]] = FUSED_CALIBRATION_SHAPES) -> DeviceProfile:
    """Measure this device's memory, reduction and cache bandwidths, strided-norm rate and
    kernel overhead.

    Every figure is the median of ``repeats`` timed runs (after an untimed one) of small
    synthetic kernels, never of an optimizer. The memory bandwidth is the median over
    :data:`STREAM_KERNELS` of the bytes the cost model counts for a kernel over its time; the
    cache bandwidth the same with :data:`REDUCTION_KERNEL` among them, on block-sized tensors;
    the reduction bandwidth is :data:`REDUCTION_KERNEL`'s rate.
    """
    import torch

    import memplan

    target = device if isinstance(device, Device) else parse_device(device)
    report = progress or (lambda message: None)
    write_allocate = target.write_allocate
    with target.keep_freed():
        report("memory bandwidth")
        memory_bandwidth = _suite_bandwidth(target, STREAM_KERNELS, stream_bytes // 4, 1, repeats, False,
                                            write_allocate)
        report("reduction bandwidth")
        reduction_bandwidth = _suite_bandwidth(target, (REDUCTION_KERNEL,), stream_bytes // 4, 1, repeats, False,
                                               write_allocate)
        report("cache bandwidth")
        cache_bandwidth = _suite_bandwidth(target, STREAM_KERNELS + (REDUCTION_KERNEL,), CALIBRATION_BLOCK_ELEMENTS,
                                           CALIBRATION_CACHE_SETS, repeats, True, write_allocate)
        report("strided norms")
        strided_norm_bandwidth = _strided_norm_bandwidth(target, repeats)
        report("kernel overhead")
        kernel_overhead = _kernel_overhead(target, repeats)
        report("one-pass kernels")
        fused_rates, fused_steps = fused_kernel_costs(target, repeats, fused_shapes)
    description = target.description
    kernels = ", ".join(kernel.name for kernel in STREAM_KERNELS)
    return DeviceProfile(
        name=f"calibrated {description}", kind=target.kind, memory_bandwidth=memory_bandwidth,
        kernel_overhead=kernel_overhead, memory_bytes=target.total_memory(), cache_bytes=CALIBRATION_CACHE_BYTES,
        cache_bandwidth=cache_bandwidth, reduction_bandwidth=reduction_bandwidth,
        strided_norm_bandwidth=strided_norm_bandwidth,
        write_allocate=write_allocate, threads=target.threads(),
        match=(target.model_name(),), fused_element_seconds=fused_rates, fused_step_seconds=fused_steps,
        source=(f"measured on {description} by memplan bench --calibrate: median of {repeats} runs; "
                f"bandwidths from {kernels} over {stream_bytes // 2**20} MiB tensors (memory) and, with "
                f"{REDUCTION_KERNEL.name}, over {CALIBRATION_CACHE_SETS} triples of 2 MiB tensors (cache); "
                f"{REDUCTION_KERNEL.name} over {stream_bytes // 2**20} MiB (reduction); column norms of a "
                f"{STRIDED_NORM_SHAPE[0]}x{STRIDED_NORM_SHAPE[1]} matrix; 1000 one-element add_ calls (overhead); "
                f"steps of memplan's one-pass kernels over {_shapes_text(fused_shapes)} and "
                f"{FUSED_CALIBRATION_COPIES} times as many tensors (their rates and seconds a step)"),
        made_with=f"memplan {memplan.__version__}, torch {torch.__version__}",
    )


def fused_kernel_costs(target: Device, repeats: int, shapes: Sequence[tuple[int, ...]] = FUSED_CALIBRATION_SHAPES,
                       ) -> tuple[dict[str, float], dict[str, float]]:
    """Seconds per element, and seconds per step besides the elements, of each one-pass kernel
    that runs on ``target`` (memplan's CPU kernels where numba is installed, its Triton kernels on
    CUDA), keyed as :meth:`memplan.methods.Method.fused_kernel` names them: fitted to the median
    steps over ``shapes`` and over :data:`FUSED_CALIBRATION_COPIES` times as many tensors (fp32,
    random weights and gradients; the kernels share them). Where noise leaves no positive slope,
    the larger set's time over its elements is the rate and the step cost is 0. The kernels are
    timed in interleaved rounds of ``repeats`` steps (at least :data:`FUSED_CALIBRATION_STEPS`
    steps each in all), so that a slow phase of a shared machine does not fall on one kernel alone."""
    import torch

    from memplan.methods import METHODS, build, parse_spec
    from memplan.optim.implementation import implementation_of

    impl = "triton" if target.kind == "cuda" else "compiled"
    generator = torch.Generator().manual_seed(0)
    sets = [list(shapes), [shape for shape in shapes for _ in range(FUSED_CALIBRATION_COPIES)]]
    sizes = [sum(math.prod(shape) for shape in chosen) for chosen in sets]
    tensors = []
    for chosen in sets:
        params = [torch.nn.Parameter(torch.randn(shape, generator=generator).to(target.torch_device))
                  for shape in chosen]
        for param in params:
            param.grad = torch.randn(param.shape, generator=generator).to(target.torch_device) * 1e-3
        tensors.append(params)
    steps: dict[tuple[str, int], Callable[[], Any]] = {}
    for method in METHODS.values():
        for key in method.fused_kernel_variants():
            for which, params in enumerate(tensors):
                optimizer = build(parse_spec(f"{key}{',' if ':' in key else ':'}impl={impl}"), params)
                if implementation_of(optimizer) != impl:   # numba or Triton is missing here
                    break
                optimizer.step()   # allocates the state (and compiles, on a first run)
                steps[key, which] = optimizer.step
    per_round = max(1, repeats)
    times: dict[tuple[str, int], list[float]] = {entry: [] for entry in steps}
    for _ in range(-(-FUSED_CALIBRATION_STEPS // per_round)):
        for entry, step in steps.items():
            times[entry] += _step_seconds(target, step, per_round)
    rates, step_seconds = {}, {}
    for key in {key for key, _ in steps}:
        small, large = statistics.median(times[key, 0]), statistics.median(times[key, 1])
        slope = (large - small) / (sizes[1] - sizes[0])
        rates[key] = slope if slope > 0 else large / sizes[1]
        step_seconds[key] = max(0.0, small - sizes[0] * slope) if slope > 0 else 0.0
    return rates, step_seconds


def _step_seconds(target: Device, function: Callable[[], Any], count: int) -> list[float]:
    """The wall times of ``count`` synchronized runs of ``function`` after an untimed one."""
    function()
    target.synchronize()
    times = []
    for _ in range(count):
        start = time.perf_counter()
        function()
        target.synchronize()
        times.append(time.perf_counter() - start)
    return times


def _shapes_text(shapes: Sequence[tuple[int, ...]]) -> str:
    counts: dict[tuple[int, ...], int] = {}
    for shape in shapes:
        counts[shape] = counts.get(shape, 0) + 1
    return " + ".join(f"{count} x {'x'.join(map(str, shape))}" for shape, count in counts.items())


def _median_seconds(target: Device, function: Callable[[], Any], repeats: int) -> float:
    """Median wall time of ``function`` (synchronized) over ``repeats`` runs after an untimed one."""
    return statistics.median(_step_seconds(target, function, repeats))


def _suite_bandwidth(target: Device, kernels: Sequence[StreamKernel], numel: int, sets: int, repeats: int,
                     in_cache: bool, write_allocate: bool) -> float:
    """The median over ``kernels`` of counted bytes per second, each kernel cycling over ``sets``
    triples of fp32 tensors of ``numel`` elements."""
    import torch

    triples = [tuple(torch.rand(numel, device=target.torch_device) + 1.0 for _ in range(3)) for _ in range(sets)]
    rates = []
    for kernel in kernels:
        def run_all(kernel: StreamKernel = kernel) -> None:
            for x, y, z in triples:
                kernel.run(x, y, z)
        seconds = _median_seconds(target, run_all, repeats)
        rates.append(kernel.counted_bytes(4, in_cache, write_allocate) * numel * sets / seconds)
    return statistics.median(rates)


def _strided_norm_bandwidth(target: Device, repeats: int) -> float:
    """Bytes per second of column norms (a reduction over a non-innermost axis)."""
    import torch

    matrix = torch.rand(STRIDED_NORM_SHAPE, device=target.torch_device)
    seconds = _median_seconds(target, lambda: torch.linalg.vector_norm(matrix, dim=0), repeats)
    return matrix.numel() * matrix.element_size() / seconds


def _kernel_overhead(target: Device, repeats: int, calls: int = 1000) -> float:
    """Seconds per launch of a one-element in-place add, launched back to back."""
    import torch

    x = torch.zeros(1, device=target.torch_device)
    y = torch.zeros(1, device=target.torch_device)

    def run() -> None:
        for _ in range(calls):
            x.add_(y)
    return _median_seconds(target, run, repeats) / calls
