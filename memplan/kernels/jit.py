"""The CPU JIT (numba), imported on demand, with its on-disk cache outside the source tree."""

from __future__ import annotations

import os
from functools import cache
from pathlib import Path
from concurrent.futures import ThreadPoolExecutor
from types import ModuleType
from typing import Callable


def cache_dir() -> Path:
    """Where compiled kernels are cached: ``$NUMBA_CACHE_DIR`` if set, else the user's cache
    (``$XDG_CACHE_HOME`` or ``~/.cache``) under ``memplan/numba``."""
    if os.environ.get("NUMBA_CACHE_DIR"):
        return Path(os.environ["NUMBA_CACHE_DIR"])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "memplan" / "numba"


@cache
def numba_module() -> ModuleType:
    """numba, configured to cache compiled kernels in :func:`cache_dir` (never beside the sources).

    Raises ImportError when numba is not installed (``pip install 'memplan[kernels]'``).
    """
    os.environ.setdefault("NUMBA_CACHE_DIR", str(cache_dir()))
    import numba

    numba.config.CACHE_DIR = str(cache_dir())  # also when numba was imported before the variable was set
    return numba


def kernel_threads(elements: int, min_per_thread: int = 1 << 16) -> int:
    """Threads worth using for ``elements``: torch's thread count (what ``torch.set_num_threads``
    chose), capped by numba's pool and by at least ``min_per_thread`` elements per thread."""
    import torch

    pool = numba_module().config.NUMBA_NUM_THREADS
    return max(1, min(torch.get_num_threads(), pool, elements // min_per_thread))


@cache
def _pool(workers: int) -> ThreadPoolExecutor:
    return ThreadPoolExecutor(max_workers=workers, thread_name_prefix="memplan-kernel")


def run_in_threads(piece: Callable[[int, int], None], threads: int) -> None:
    """Run ``piece(t, t + 1)`` for t < ``threads`` on a pool of threads (``piece(0, 1)`` in the
    caller's when one); ``piece`` must release the GIL (a ``nogil`` kernel) for them to overlap."""
    if threads <= 1:
        piece(0, threads)
        return
    futures = [_pool(threads).submit(piece, thread, thread + 1) for thread in range(1, threads)]
    piece(0, 1)
    for future in futures:
        future.result()


def tail_axes(dims: tuple[int, ...], limit: int) -> int:
    """How many trailing axes of ``dims`` a kernel walks as one axis: the last, and the ones
    before it while the product of those walked stays at most ``limit``."""
    tail, size = 1, dims[-1]
    while tail < len(dims) and size * dims[-tail - 1] <= limit:
        size *= dims[-tail - 1]
        tail += 1
    return tail
