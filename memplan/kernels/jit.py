"""The CPU JIT (numba), imported on demand, with its on-disk cache outside the source tree.

The kernels are defined in modules of their own (``smmf_numba``, ``sm3_numba``, ``extreme_numba``,
and the pointer intrinsic in :mod:`memplan.kernels.numba_pointer`) that get numba from
:func:`numba_module`; the ``*_cpu`` modules import them on first use, so importing those does not
import numba. The kernels are module-level functions that reach each other as globals: numba keys a
cached kernel on its closure too, and a closure holding dispatchers or an intrinsic pickles
differently in every process, so kernels defined inside a function would be compiled again by every
process. numba freezes the globals a kernel reads when it compiles it, and checks only the kernel's
own file for changes: after changing a constant that a ``*_numba`` module imports from another
module, clear the cache (or touch that file). A kernel that Python calls compiles each new
signature in a child process and is loaded from the cache (:func:`compile_in_child`): the code a
process compiles for itself runs slower than the same kernel loaded from the cache.
"""

from __future__ import annotations

import itertools
import os
import pickle
import subprocess
import sys
import threading
import warnings
from concurrent.futures import ThreadPoolExecutor
from functools import cache, lru_cache
from operator import attrgetter, eq, is_
from pathlib import Path
from types import ModuleType
from typing import Any, Callable, Hashable, Sequence

import numpy as np


def cache_dir() -> Path:
    """Where compiled kernels are cached: ``$NUMBA_CACHE_DIR`` if set, else the user's cache
    (``$XDG_CACHE_HOME`` or ``~/.cache``) under ``memplan/numba``."""
    if os.environ.get("NUMBA_CACHE_DIR"):
        return Path(os.environ["NUMBA_CACHE_DIR"])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "memplan" / "numba"


@cache
def numba_module() -> ModuleType:
    """numba, configured to cache compiled kernels in :func:`cache_dir` (never beside the sources).

    A module of kernels calls this before it defines any: a kernel finds its cache directory when
    it is defined. Raises ImportError when numba is not installed (``pip install 'memplan[kernels]'``).
    """
    os.environ.setdefault("NUMBA_CACHE_DIR", str(cache_dir()))
    import numba

    numba.config.CACHE_DIR = str(cache_dir())  # also when numba was imported before the variable was set
    return numba


_COMPILE_IN_CHILD = """
import importlib, pickle, sys
signature = pickle.load(sys.stdin.buffer)
getattr(importlib.import_module(sys.argv[1]), sys.argv[2]).compile(signature)
"""
_compiling = threading.RLock()


def compile_in_child(kernel: Any) -> Any:
    """``kernel`` (a cached numba dispatcher that Python calls), made to compile each signature that
    neither this process nor numba's cache holds in a child process, and then to load it from the
    cache, as a process that finds it cached does; returns ``kernel``.

    Why: numba compiles the functions a kernel calls (such as ``item``, which steps one range) as
    libraries of their own, optimized once, and in the process that compiled them the kernel's calls
    go to those; the cached kernel carries its own copies of them, optimized a second time together
    with it, and only that second pass vectorizes most of their loops. SM3-II's step on the GPT-2-like
    set took 70 to 72 ms in the process that compiled it, 17 to 21 loaded from the cache; SMMF's and
    ET2's, depending on which kernels compiled first, up to 1.4 times their cached time
    (benchmarks/RESULTS.md). Where the child fails (no interpreter to start, an unwritable cache), a
    warning says so and the kernel compiles here."""
    if hasattr(kernel, "compile_here"):
        return kernel
    compile_here = kernel.compile

    def compile(signature: Any) -> Any:
        with _compiling:
            if _missing(kernel, signature):
                _compile_child(kernel, signature)
            return compile_here(signature)

    kernel.compile = compile
    kernel.compile_here = compile_here
    return kernel


def compile_ahead(kind: Hashable, calls: Callable[[], Sequence[tuple[Any, tuple[Any, ...]]]]) -> None:
    """Ready the kernels of a ``kind`` of call (a key naming it: the module, dtypes, modes), once per
    process: ``calls()`` lists each kernel (under :func:`compile_in_child`) with the arguments it
    will be called with, and each kernel is compiled for the signature of those arguments where
    neither this process nor numba's cache holds it, in child processes that all run at once (a
    step has at most three such kernels), then loaded from the cache. Compiled one after the
    other, each in its child when first called, a step's kernels took the sum of their compile
    times (ET2: 24 s, 17 of them its update pass's; benchmarks/RESULTS.md)."""
    if kind in _READY:
        return
    with _compiling:
        missing = [(kernel, tuple(map(kernel.typeof_pyval, arguments))) for kernel, arguments in calls()]
        missing = [(kernel, signature) for kernel, signature in missing if _missing(kernel, signature)]
        if missing:
            with ThreadPoolExecutor(max_workers=len(missing), thread_name_prefix="memplan-compile") as pool:
                list(pool.map(lambda pair: _compile_child(*pair), missing))
            for kernel, signature in missing:
                kernel.compile_here(signature)   # from the cache; compiled here where its child failed
        _READY.add(kind)


_READY: set[Hashable] = set()
"""The kinds of call whose kernels :func:`compile_ahead` has readied in this process."""


def _missing(kernel: Any, signature: Any) -> bool:
    """Whether ``kernel`` (under :func:`compile_in_child`) must be compiled for ``signature`` by a
    child: neither this process nor the cache holds it, and this is no frozen application (whose
    executable runs no ``-c``)."""
    arguments, _ = numba_module().core.sigutils.normalize_signature(signature)
    return (tuple(arguments) not in kernel.overloads and not getattr(sys, "frozen", False)
            and not _in_cache(kernel, signature))


def _in_cache(kernel: Any, signature: Any) -> bool:
    """Whether numba's cache holds ``kernel`` compiled for ``signature`` (numba's own index; True
    where its internals are not as expected, so that the kernel compiles here as it would anyway)."""
    try:
        cache_of_kernel = kernel._cache
        kernel.targetctx.refresh()
        key = cache_of_kernel._index_key(signature, kernel.targetctx.codegen())
        return key in cache_of_kernel._cache_file._load_index()
    except Exception:   # noqa: BLE001 - another numba's internals: fall back to its own compile
        return True


def _compile_child(kernel: Any, signature: Any) -> None:
    """Compile ``kernel`` for ``signature`` in a child process, which stores it in numba's cache."""
    function = kernel.py_func
    environment = dict(os.environ, PYTHONPATH=os.pathsep.join(path for path in sys.path if path),
                       NUMBA_CACHE_DIR=str(numba_module().config.CACHE_DIR))
    try:
        done = subprocess.run([sys.executable, "-c", _COMPILE_IN_CHILD, function.__module__, function.__name__],
                              input=pickle.dumps(signature), capture_output=True, env=environment, check=False)
    except OSError as error:
        failure = str(error)
    else:
        if done.returncode == 0:
            return
        failure = (done.stderr.decode(errors="replace").strip().splitlines() or [f"exit {done.returncode}"])[-1]
    warnings.warn(f"memplan: compiling {function.__name__} in a child process failed ({failure}); compiling it "
                  f"in this process, where it may run slower", RuntimeWarning, stacklevel=2)


def kernel_threads(elements: int, min_per_thread: int = 1 << 16) -> int:
    """Threads worth using for ``elements``: torch's thread count (what ``torch.set_num_threads``
    chose), capped by numba's pool and by at least ``min_per_thread`` elements per thread."""
    return max(1, min(_usable_threads(), elements // min_per_thread))


def _usable_threads() -> int:
    """torch's thread count, capped by numba's pool."""
    import torch

    return min(torch.get_num_threads(), numba_module().config.NUMBA_NUM_THREADS)


PIECES_PER_THREAD = 4
"""Pieces a kernel call's work is cut into per thread it uses. The threads take pieces as they
finish them, so a thread whose tensors step slower per element (short rows, other root orders)
takes fewer: with one piece per thread, SMMF's two threads on ResNet-50 finished 10% apart. Four
pieces per thread against one, side by side on 2 threads, gave steps 0.83 to 1.01 times as long
(median 0.94) for SMMF, SMMF without first moment, SM3-II without momentum and ET2 on ResNet-50
and the GPT-2-like set (benchmarks/RESULTS.md)."""


def kernel_pieces(elements: int) -> int:
    """Pieces to cut a kernel call over ``elements`` into (each with its own partial sums):
    :data:`PIECES_PER_THREAD` per thread worth using, or one."""
    threads = kernel_threads(elements)
    return threads * PIECES_PER_THREAD if threads > 1 else 1


@cache
def _pool(workers: int) -> ThreadPoolExecutor:
    return ThreadPoolExecutor(max_workers=workers, thread_name_prefix="memplan-kernel")


def run_in_threads(piece: Callable[[int, int], None], pieces: int) -> None:
    """Run ``piece(p, p + 1)`` for every p < ``pieces`` on as many threads as torch uses (the
    caller's and pooled ones; numba's pool caps them), each taking the next piece when it finishes
    one (all in the caller's thread when one is used). ``piece`` must release the GIL (a ``nogil``
    kernel) for them to overlap, and its results must not depend on the thread that ran it."""
    threads = max(1, min(pieces, _usable_threads()))
    if threads <= 1:
        piece(0, pieces)
        return
    taken = itertools.count()   # next() on a count is atomic under the GIL

    def work() -> None:
        while (index := next(taken)) < pieces:
            piece(index, index + 1)

    futures = [_pool(threads - 1).submit(work) for _ in range(threads - 1)]
    work()
    for future in futures:
        future.result()


@cache
def dtype_like(numpy_type: Any) -> np.ndarray:
    """An empty array of ``numpy_type``: how a kernel call passes a dtype (the kernel reads
    ``like.dtype.type``). numba types a class argument such as ``np.float32`` in Python at every
    call, 5 to 10 us each (a multi-tensor SMMF call passed three to each of its eight pieces, with
    the GIL held), and an array's in C."""
    return np.empty(0, dtype=numpy_type)


def batch_dtype(name: str, tensors: Sequence[Any]) -> Any:
    """The weights' dtype that the tensors of one multi-tensor call (``name``) share, fp32 or
    float64; ValueError when a tensor's weights or gradients have another."""
    import torch

    dtype = tensors[0].weights.dtype
    if dtype not in (torch.float32, torch.float64):
        raise ValueError(f"{name} steps fp32 or float64 tensors, not {dtype}")
    if any(tensor.weights.dtype != dtype or tensor.grads.dtype != dtype for tensor in tensors):
        raise ValueError(f"{name}: every tensor's weights and gradients must share the first tensor's dtype")
    return dtype


def gradient_addresses(name: str, grads: Sequence[Any], weights: Sequence[Any], device: Any = None) -> list[int]:
    """The addresses of a prepared multi-tensor call's new gradients, one per tensor of its
    ``weights``; ValueError unless each is a contiguous tensor of its weights' dtype and size, on
    the CPU (or on ``device``, a CUDA device for the Triton calls), where the kernel reads it
    through its address. The checks run as builtin passes over the lists (a step's Python, with the
    caches cold from the kernel, costs microseconds a tensor otherwise)."""
    import torch

    if len(grads) != len(weights):
        raise ValueError(f"{name}: {len(grads)} gradients for {len(weights)} tensors")
    where = map(_IS_CPU, grads) if device is None else map(eq, map(_DEVICE, grads), itertools.repeat(device))
    if not (all(map(is_, map(_DTYPE, grads), map(_DTYPE, weights)))
            and all(map(torch.Tensor.is_contiguous, grads)) and all(where)
            and list(map(torch.Tensor.numel, grads)) == list(map(torch.Tensor.numel, weights))):
        place = "CPU" if device is None else str(device)
        index = next(index for index, (grad, weight) in enumerate(zip(grads, weights))
                     if grad.dtype != weight.dtype or not grad.is_contiguous()
                     or (grad.device != device if device is not None else not grad.is_cpu)
                     or grad.numel() != weight.numel())
        raise ValueError(f"{name}: tensor {index}'s gradient must be a contiguous {place} tensor of its weights' "
                         f"dtype and size")
    return list(map(torch.Tensor.data_ptr, grads))


_DTYPE, _IS_CPU, _DEVICE = attrgetter("dtype"), attrgetter("is_cpu"), attrgetter("device")


@lru_cache(maxsize=64)
def split_work(lengths: tuple[int, ...], pieces: int, align: int = 8) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Cut ranges of ``lengths`` elements into work items, in ``pieces`` pieces (see
    :func:`kernel_pieces`).

    Each piece is a contiguous run of items holding about ``sum(lengths) / pieces`` elements;
    a range is cut only at multiples of ``align`` elements from its start (a packed sign byte is
    never shared). Returns the items (an int64 ``(K, 3)`` array of range, first, stop), each
    piece's run (``bounds[p]`` to ``bounds[p + 1]``) and, per range, the first and last piece
    that touches it (``(R, 2)``; -1 for an empty range). Cached: a training loop asks for the
    same split every step.
    """
    quota = max(1, -(-sum(lengths) // pieces))
    items: list[tuple[int, int, int]] = []
    bounds = [0]
    touched = np.full((len(lengths), 2), -1, dtype=np.int64)
    filled = 0
    for index, length in enumerate(lengths):
        first = 0
        while first < length:
            room = quota - filled
            last_piece = len(bounds) == pieces
            stop = length if last_piece else min(length, first + -(-room // align) * align)
            items.append((index, first, stop))
            piece = len(bounds) - 1
            touched[index, 0] = piece if touched[index, 0] < 0 else touched[index, 0]
            touched[index, 1] = piece
            filled += stop - first
            first = stop
            if filled >= quota and not last_piece:
                bounds.append(len(items))
                filled = 0
    bounds += [len(items)] * (pieces + 1 - len(bounds))
    return np.array(items, dtype=np.int64).reshape(-1, 3), np.array(bounds, dtype=np.int64), touched


def piece_origins(items: np.ndarray, bounds: np.ndarray, slots: np.ndarray,
                  widths: np.ndarray) -> tuple[np.ndarray, int]:
    """A compact layout of the pieces' partial vectors (see :func:`split_work`): range r's vectors
    of piece p start at ``origins[p] + slots[r]`` in one buffer of ``total`` elements, which holds,
    per piece, only the ranges it touches (a contiguous run of them). Every piece with a row of
    its own over all ranges cost pieces x the state's vector lengths (8 MB for SMMF on ResNet-50
    with 8 pieces); this costs about one such row, plus the ranges that two pieces share."""
    origins = np.zeros(len(bounds) - 1, dtype=np.int64)
    total = 0
    for piece in range(len(bounds) - 1):
        if bounds[piece] == bounds[piece + 1]:
            continue
        first, last = items[bounds[piece], 0], items[bounds[piece + 1] - 1, 0]
        start = int(slots[first])
        origins[piece] = total - start
        total += int(slots[last] + widths[last]) - start
    return origins, total


def tail_axes(dims: tuple[int, ...], limit: int) -> int:
    """How many trailing axes of ``dims`` a kernel walks as one axis: the last, and the ones
    before it while the product of those walked stays at most ``limit``."""
    tail, size = 1, dims[-1]
    while tail < len(dims) and size * dims[-tail - 1] <= limit:
        size *= dims[-tail - 1]
        tail += 1
    return tail
