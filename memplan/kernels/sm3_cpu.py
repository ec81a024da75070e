"""SM3's step on ranges of cover views (d_1, ..., d_p), compiled with numba.

Per element, with mu the previous per-axis accumulators (read-only, in the working dtype)::

    SM3-II:  nu = min_i mu_i[i_i] + G^2        new maxima: max over every slice of nu
    SM3-I:   nu = min_i mu_i[i_i]              (mu already holds this step's maxima of G^2)
    r = 1 / sqrt(nu + eps)   (1 - momentum is rounded once, from double, as torch does)
    W <- W * decay - lr G r                    or, with momentum:  m <- momentum m + (1 - momentum) G r;
                                                                   W <- W * decay - lr m

(the fp32 buffer m is computed and stored as the eager step does: momentum m in fp32, and W steps
by the stored m, also for float64 weights).

One kernel call steps a table of ranges, reached through their addresses: a rank's range of one
parameter (:func:`sm3_range`, whose new maxima are max-combined into output vectors that the
caller reduces across ranks; SM3-I first needs :func:`sm3_square_maxima_range`, the maxima of
G^2, a read-only pass over the gradient), or many whole parameters (:func:`sm3_many`, SM3-II,
which also stores their new accumulators: one call per step however many small tensors a model
has).

A range is walked in runs along its trailing axes (the last, and the ones before it while their
product is at most :data:`TAIL_ELEMENTS`); the minimum over the other (head) axes is one number per
run. Threads (Python threads running ``nogil`` kernels) take pieces, contiguous runs of items
(:func:`memplan.kernels.jit.split_work`), as they finish one. For an item whose runs span several trailing axes, a
thread builds the table of their accumulators' minima (one entry per element of a run), keeps the
maxima of nu per table entry, and folds them into each trailing axis's maxima when the item ends;
runs along the last axis alone read that axis's accumulator as the table. SM3-II steps a long
item's whole runs two at a time, one from each half of the item, in one loop (twice the streams
read at once; benchmarks/RESULTS.md). Each piece keeps its maxima in its own row of partial
vectors; after the threads join, one serial step combines the rows (exactly: max is order-free,
and nu >= 0).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import cache, lru_cache
from typing import Sequence

import numpy as np
import torch

from memplan.kernels.jit import (batch_dtype, compile_ahead, compile_in_child, dtype_like, gradient_addresses,
                                 kernel_pieces, piece_origins, run_in_threads, split_work, tail_axes)
from memplan.kernels.scalars import DecayScalars
from memplan.kernels.sm3_tables import (ADD_MAXIMA, AXIS_FIELDS, RANGE_FIELDS, SCALARS, SM3_I, SM3_II, SQUARE_MAXIMA,
                                        STORE_MAXIMA)


@dataclass(frozen=True)
class SM3Scalars(DecayScalars):
    """The per-step scalars of SM3's update."""

    lr: float
    eps: float
    momentum: float = 0.0


@dataclass(frozen=True, slots=True)
class SM3Tensor:
    """One parameter of a multi-tensor SM3-II step (:func:`sm3_many`), stepped whole: its
    contiguous weights and gradients (any shape, read in row-major order; fp32 or float64, the same
    dtype), its cover ``view``, its per-axis accumulators (the optimizer's contiguous fp32 state:
    read as mu, overwritten by the new slice maxima of nu) and its contiguous fp32 momentum buffer
    (None without momentum)."""

    weights: torch.Tensor
    grads: torch.Tensor
    view: tuple[int, ...]
    accumulators: tuple[torch.Tensor, ...]
    buffer: torch.Tensor | None
    scalars: SM3Scalars


TAIL_ELEMENTS = 1 << 15
"""Trailing axes are walked as one axis while their product stays this small (see
:mod:`memplan.kernels.extreme_cpu`): their accumulators' minima become one table, and the
table's maxima are folded back into each trailing axis's maxima after each item."""



@cache
def _kernel():
    """The numba kernels (walk, combine), imported on first use and loaded from numba's cache, each
    signature compiled into it by a child process first where it is missing (see
    :func:`~memplan.kernels.jit.compile_in_child`)."""
    from memplan.kernels import sm3_numba

    return compile_in_child(sm3_numba.walk), compile_in_child(sm3_numba.combine)


def sm3_range(weights: torch.Tensor, grads: torch.Tensor, start: int, view: tuple[int, ...],
              accumulators: list[torch.Tensor], new_maxima: list[torch.Tensor] | None,
              buffer: torch.Tensor | None, scalars: SM3Scalars, chunk_elements: int | None = None) -> None:
    """Update the elements ``[start, start + weights.numel())`` of the cover ``view``.

    ``accumulators`` are the per-axis mu (read-only); with ``new_maxima`` (SM3-II) the range's
    slice maxima of nu are max-combined into those vectors (contiguous, of one dtype), without
    (SM3-I) nu is the minimum of the accumulators alone. ``buffer`` is the range's contiguous
    momentum buffer (fp32), or None. fp32 and float64 run as they are; narrower floats are
    stepped through fp32 copies of at most ``chunk_elements`` elements at a time.
    """
    _dispatch(weights, grads, start, view, accumulators, new_maxima, buffer, scalars, chunk_elements,
              SM3_II if new_maxima is not None else SM3_I)


def sm3_square_maxima_range(weights: torch.Tensor, grads: torch.Tensor, start: int, view: tuple[int, ...],
                            maxima: list[torch.Tensor], scalars: SM3Scalars,
                            chunk_elements: int | None = None) -> None:
    """SM3-I's first pass: max-combine the range's slice maxima of G^2 into ``maxima``
    (``weights`` only enter through coupled weight decay; nothing is written to them)."""
    _dispatch(weights, grads, start, view, maxima, maxima, None, scalars, chunk_elements, SQUARE_MAXIMA)


def sm3_many(tensors: list[SM3Tensor]) -> None:
    """Step every tensor whole with SM3-II and replace its accumulators by the new slice maxima of
    nu, in one kernel call (see :class:`SM3Tensor`).

    Per tensor, what :func:`sm3_range` does on ``[0, numel)`` of its view with new maxima, then
    the optimizer's store of the new accumulators. The tensors share the weights' dtype (fp32 or
    float64; ValueError otherwise); an empty list is a no-op.
    """
    if not tensors:
        return
    SM3Call(tensors).run([tensor.grads for tensor in tensors], [tensor.scalars for tensor in tensors])


class SM3Call:
    """A multi-tensor call (:func:`sm3_many`) prepared once for its tensors and run every step with
    that step's gradients and scalars: the addresses of the weights, buffers and accumulators, and
    the ranges, are built and checked here, once (see :class:`memplan.kernels.smmf_cpu.SMMFCall`).
    The call keeps its tensors; a caller that replaces any of them prepares a new call."""

    def __init__(self, tensors: list[SM3Tensor]) -> None:
        if not tensors:
            raise ValueError("SM3Call: no tensors")
        self._dtype = _checked_dtype(tensors)
        self._tensors = tensors   # kept: the tables point into them
        self._weights = [tensor.weights for tensor in tensors]
        self._addresses = np.array([(tensor.weights.data_ptr(), tensor.grads.data_ptr(),
                                     0 if tensor.buffer is None else tensor.buffer.data_ptr())
                                    for tensor in tensors], dtype=np.int64).reshape(-1, 3)
        accumulators = np.array([accumulator.data_ptr() for tensor in tensors for accumulator in tensor.accumulators],
                                dtype=np.int64)
        self._axis_addresses = np.stack([accumulators, accumulators], axis=1)
        self._layouts = tuple((0, tensor.weights.numel(), tuple(tensor.view)) for tensor in tensors)
        self._scalars = np.empty((len(tensors), len(SCALARS)), dtype=np.float64)

    def run(self, grads: Sequence[torch.Tensor], scalars: SM3Scalars | Sequence[SM3Scalars]) -> None:
        """Step every tensor with ``grads`` (one per tensor: contiguous, of its weights' dtype and
        size) and ``scalars`` (one for all, or one per tensor), and store the new accumulators."""
        self._addresses[:, 1] = gradient_addresses("sm3_many", grads, self._weights)
        if isinstance(scalars, SM3Scalars):
            self._scalars[:] = _scalar_row(scalars)
        else:
            self._scalars[:] = np.array([_scalar_row(row) for row in scalars], dtype=np.float64)
        _call(self._addresses, self._layouts, self._axis_addresses, self._scalars, SM3_II, _numpy_type(self._dtype),
              np.float32, np.float32, STORE_MAXIMA)


def _checked_dtype(tensors: list[SM3Tensor]) -> torch.dtype:
    """The tensors' weights dtype; ValueError where a tensor does not fit the kernel, which reaches
    them through their addresses (a wrong size, dtype or layout would read or write past them)."""
    dtype = batch_dtype("sm3_many", tensors)
    for index, tensor in enumerate(tensors):
        weights, grads, buffer = tensor.weights, tensor.grads, tensor.buffer
        length = weights.numel()
        if not (weights.is_cpu and grads.is_cpu and weights.is_contiguous() and grads.is_contiguous()) \
                or grads.numel() != length or math.prod(tensor.view) != length:
            raise ValueError(f"sm3_many: tensor {index}'s weights and gradients must be contiguous CPU tensors with "
                             f"as many elements as its view {tensor.view}")
        if len(tensor.accumulators) != len(tensor.view) or any(
                accumulator.dtype != torch.float32 or accumulator.numel() != dim or not accumulator.is_cpu
                or not accumulator.is_contiguous() for accumulator, dim in zip(tensor.accumulators, tensor.view)):
            raise ValueError(f"sm3_many: tensor {index}'s accumulators must be contiguous fp32 CPU vectors, one per "
                             f"axis of its view {tensor.view}")
        if buffer is not None and (buffer.dtype != torch.float32 or buffer.numel() != length or not buffer.is_cpu
                                   or not buffer.is_contiguous()):
            raise ValueError(f"sm3_many: tensor {index}'s momentum buffer must be a contiguous fp32 CPU tensor of "
                             f"its size")
    return dtype


def _dispatch(weights, grads, start, view, accumulators, outputs, buffer, scalars, chunk_elements, mode) -> None:
    working = weights.dtype if weights.dtype.itemsize >= 4 else torch.float32
    length = weights.numel()
    readable = [accumulator.reshape(-1).to(working).contiguous() for accumulator in accumulators]
    if weights.dtype == working and grads.dtype == working:
        _run(weights, grads, start, view, readable, outputs, buffer, scalars, mode, working)
        return
    piece = max(1, chunk_elements or length)
    for offset in range(0, length, piece):
        stop = min(length, offset + piece)
        weight = weights[offset:stop].to(working)
        _run(weight, grads[offset:stop].to(working), start + offset, view, readable, outputs,
             None if buffer is None else buffer[offset:stop], scalars, mode, working)
        if mode != SQUARE_MAXIMA:
            weights[offset:stop].copy_(weight)


def _run(weights, grads, start, view, accumulators, outputs, buffer, scalars, mode, working) -> None:
    """One range as a table of one: ``accumulators`` contiguous in the working dtype, the maxima
    (unless SM3-I's update) max-combined into ``outputs``."""
    view = tuple(int(dim) for dim in view)
    with_maxima = mode != SM3_I
    _check_range(weights, grads, start, view, accumulators, outputs if with_maxima else None, buffer)
    addresses = np.array([[weights.data_ptr(), grads.data_ptr(), 0 if buffer is None else buffer.data_ptr()]],
                         dtype=np.int64)
    axis_addresses = np.array([[accumulator.data_ptr(), output.data_ptr() if with_maxima else 0]
                               for accumulator, output in zip(accumulators, outputs or accumulators)], dtype=np.int64)
    _call(addresses, ((start, weights.numel(), view),), axis_addresses,
          np.array([_scalar_row(scalars)], dtype=np.float64), mode, _numpy_type(working), _numpy_type(working),
          _numpy_type(outputs[0].dtype) if with_maxima else None, ADD_MAXIMA)


def _check_range(weights, grads, start, view, accumulators, outputs, buffer) -> None:
    """ValueError where a range does not fit the kernel, which reaches its tensors through their
    addresses (a wrong size, dtype or layout would read or write past them)."""
    length = weights.numel()
    if not (weights.is_contiguous() and grads.is_contiguous()) or grads.numel() != length \
            or not 0 <= start <= start + length <= math.prod(view):
        raise ValueError(f"sm3_range: the weights and gradients must be contiguous, of one length, and lie within "
                         f"the view {view}")
    if len(accumulators) != len(view) or any(accumulator.numel() != dim
                                             for accumulator, dim in zip(accumulators, view)):
        raise ValueError(f"sm3_range: one accumulator per axis of the view {view}, of its length")
    if outputs is not None and (len(outputs) != len(view) or outputs[0].dtype not in (torch.float32, torch.float64)
                                or any(output.numel() != dim or output.dtype != outputs[0].dtype
                                       or not output.is_contiguous() for output, dim in zip(outputs, view))):
        raise ValueError(f"sm3_range: the maxima must be contiguous fp32 or float64 vectors of one dtype, one per axis "
                         f"of the view {view}")
    if buffer is not None and (buffer.dtype != torch.float32 or buffer.numel() != length
                               or not buffer.is_contiguous()):
        raise ValueError("sm3_range: the momentum buffer must be a contiguous fp32 tensor of the range's length")


def _call(addresses: np.ndarray, layouts: tuple[tuple[int, int, tuple[int, ...]], ...], axis_addresses: np.ndarray,
          scalars: np.ndarray, mode: int, weight_type, accumulator_type, output_type, what: int) -> None:
    """One kernel call over the ranges ``layouts`` (start, length, view), then the combination
    (none for SM3-I's update, which has no maxima)."""
    ranges, axis_table, scratch = _tables(layouts, TAIL_ELEMENTS)
    lengths = tuple(length for _, length, _ in layouts)
    pieces = kernel_pieces(sum(lengths))
    items, bounds, touched = split_work(lengths, pieces)
    origins, total = piece_origins(items, bounds, ranges[:, 6], ranges[:, 7])
    partial = np.empty(total, dtype=weight_type)
    walk, combine = _kernel()
    bits_type = np.uint32 if weight_type is np.float32 else np.uint64   # the maxima's bits (see sm3_numba.walk)
    arguments = (ranges, axis_table, addresses, axis_addresses, scalars, items, bounds, origins, partial, mode,
                 dtype_like(weight_type), dtype_like(bits_type), dtype_like(accumulator_type), scratch)
    combine_arguments = (ranges, axis_table, axis_addresses, touched, origins, partial, what, dtype_like(output_type))
    compile_ahead(("sm3", mode, weight_type, accumulator_type, output_type, what),
                  lambda: [(walk, arguments + (0, pieces))] + ([(combine, combine_arguments)] if mode != SM3_I else []))
    run_in_threads(lambda low, high: walk(*arguments, low, high), pieces)
    if mode != SM3_I:
        combine(*combine_arguments)


@lru_cache(maxsize=64)
def _tables(layouts: tuple[tuple[int, int, tuple[int, ...]], ...],
            tail_elements: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The range table (see :data:`RANGE_FIELDS`) and the axis table (:data:`AXIS_FIELDS`) of ranges
    (start, length, view), and the lengths of a thread's scratch vectors: the longest merged tail's
    table, the most maxima and the most axes. Cached: a training loop
    steps the same views every step."""
    ranges = np.zeros((len(layouts), len(RANGE_FIELDS)), dtype=np.int64)
    axis_rows: list[tuple[int, int]] = []
    scratch = np.ones(3, dtype=np.int64)
    slot = 0
    for at, (start, length, view) in enumerate(layouts):
        trailing = tail_axes(view, tail_elements)
        run = math.prod(view[len(view) - trailing:])
        ranges[at] = (start, length, len(axis_rows), len(view), len(view) - trailing, run, slot, sum(view))
        axis_rows += [(dim, sum(view[:axis])) for axis, dim in enumerate(view)]
        slot += sum(view)
        scratch = np.maximum(scratch, (run if trailing > 1 else 1, sum(view), len(view)))
    return ranges, np.array(axis_rows, dtype=np.int64).reshape(-1, len(AXIS_FIELDS)), scratch


def _scalar_row(scalars: SM3Scalars) -> list[float]:
    return [scalars.lr, scalars.eps, scalars.momentum, 1.0 - scalars.momentum, scalars.decay, scalars.coupled_decay,
            scalars.grad_sign]


def _numpy_type(dtype: torch.dtype):
    return np.float32 if dtype == torch.float32 else np.float64


__all__ = ["SM3Call", "SM3Scalars", "SM3Tensor", "sm3_many", "sm3_range", "sm3_square_maxima_range"]
