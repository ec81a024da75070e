"""Measuring what a step really allocates: state bytes, and the peak of temporaries on CPU.

On CPU there is no allocator peak counter, so the peak comes from the profiler's memory events
(``torch.profiler`` with ``profile_memory=True`` records every allocation and free with its
size and time): the peak is the maximum of their running sum. The profiler slows the code it
watches, so timings are always taken in separate, unprofiled runs.
"""

from __future__ import annotations

import os
from typing import Any, Callable

import torch


def state_storage_bytes(optimizer: torch.optim.Optimizer, skip_keys: tuple[str, ...] = ("step",)) -> int:
    """Bytes of the distinct storages held in ``optimizer.state`` (step counters excluded)."""
    seen: dict[tuple[str, int], int] = {}
    for state in optimizer.state.values():
        for key, value in state.items():
            if isinstance(value, torch.Tensor) and key not in skip_keys:
                storage = value.untyped_storage()
                # storages without memory (meta, empty) have no address: count each tensor once
                identity = (str(value.device), storage.data_ptr() or id(value))
                seen[identity] = storage.nbytes()
    return sum(seen.values())


def cpu_peak_bytes(function: Callable[[], Any]) -> tuple[Any, int]:
    """Run ``function`` under the profiler; return its result and the peak of bytes it held at once
    on the CPU beyond what existed when it started."""
    from torch.profiler import ProfilerActivity, profile

    os.environ.setdefault("KINETO_LOG_LEVEL", "6")
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as profiler:
        result = function()
    events = [
        (event.start_ns(), event.nbytes())
        for event in profiler.profiler.kineto_results.events()
        if event.name() == "[memory]" and str(event.device_type()).endswith("CPU")
    ]
    events.sort()
    running = peak = 0
    for _, change in events:
        running += change
        peak = max(peak, running)
    return result, peak
