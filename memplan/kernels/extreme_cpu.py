"""Extreme tensoring's two passes and ET-infinity's on CPU, compiled with numba.

Pass 1 sums G^2 over every slice of every axis of a parameter's tensor index (d_1, ..., d_p).
Pass 2 applies, per element, with s_k the accumulators scaled as in
:func:`memplan.optim.extreme._scaled_factors` (the scale C^(-1/2p) and the offset eps / C)::

    step = (offset + prod_k s_k[i_k]) ^ (-1 / (2p)) * G
    W <- W * decay - lr * step * scale          or, with momentum:  m <- momentum m + step * scale;
                                                                  W <- W * decay - lr m

One kernel call runs a pass over a table of ranges, reached through their addresses: a rank's
range of one parameter (:func:`et_square_sums_range` adds the range's slice sums into output
vectors, which the caller reduces across ranks and folds into its accumulators;
:func:`et_update_range` updates the range from the caller's scaled accumulators), or many whole
parameters (:func:`et_many`: pass 1, then one serial step that updates and rescales every
tensor's accumulators, then pass 2; one call per pass however many small tensors a model has).

A range is walked in runs along its trailing axes (the last, and the ones before it while their
product is small: :data:`CACHED_TAIL`, or :data:`TAIL_ELEMENTS` where runs would be short): the head
axes' product is one number per run, and the trailing axes' scaled accumulators are a table, their
row-major outer product, which a thread builds for each range it meets. In pass 1 a thread keeps
one sum of G^2 per table entry and folds them into the trailing axes' sums when it leaves the
range; with fp32 weights and no coupled decay it reads a long item's whole runs four at a time, one
from each quarter of the item, in one loop (four streams read at once; benchmarks/RESULTS.md).
Pass 2 steps a long item's whole runs two at a time, one from each half (for orders other than 1, 2
and 4, where both runs take the near root). Sums are float64, in each piece's own partial vectors,
combined in piece order after the threads join; with fp32 weights, a table entry first adds up to
16 runs' squares in fp32 (:data:`memplan.kernels.extreme_numba.BLOCK_RUNS`). The threads are Python
threads running ``nogil`` kernels over pieces, contiguous runs of items
(:func:`memplan.kernels.jit.split_work`), each taking the next piece when it finishes one.

Roots: orders 1, 2 and 4 take square roots, as the eager step does. Another order p, with
a = -1 / (2p), x = t + offset (t the accumulators' product), M = max(t, offset) and
z = x / (sqrt(2) M) in [1/sqrt(2), sqrt(2)], takes x^a = M^a 2^(a/2) z^a: M^a is offset^a or the
product of the per-axis roots s_k^a (computed in float64 per slice, a table per run like the
accumulators'), and z^a = exp(a ln z), ln z = 2 atanh((z - 1) / (z + 1)), two short series. The
root is within a few ulp of the exact one in fp32 and float64, and is taken in the loop that applies
it (one loop per order and momentum); the loops stay branch-free and vectorize (libm's log and exp
per element do not: 12.5 ns an element, against under 1 ns for the whole update now).

ET-infinity's passes are :func:`squared_norm_range` and :func:`scale_range` over a range, and
:func:`et_inf_many` over many whole tensors (pass 1, the accumulators' update and inverse roots in
one serial step, then pass 2; one kernel call per pass), walked the same way: items of
:func:`memplan.kernels.jit.split_work`, per-piece float64 sums combined in piece order.
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
from memplan.kernels.extreme_tables import (ADD_SUMS, AXIS_FIELDS, CORRECTIONS, INFINITY_SCALARS, RANGE_FIELDS,
                                            SCALARS, STORE_ACCUMULATORS)
from memplan.kernels.scalars import DecayScalars


@dataclass(frozen=True)
class ETScalars(DecayScalars):
    """The per-step scalars of the update pass."""

    lr: float
    momentum: float = 0.0


@dataclass(frozen=True, slots=True)
class ETTensor:
    """One parameter of a multi-tensor extreme-tensoring step (:func:`et_many`), stepped whole: its
    contiguous weights and gradients (any shape, read in row-major order; fp32 or float64, the same
    dtype), its tensor ``index``, its per-axis accumulators (the optimizer's contiguous fp32 state,
    updated in place) and its contiguous fp32 momentum buffer (None without momentum).

    ``beta2`` None adds this step's slice sums to the accumulators; a number decays them first
    (S <- beta2 S + (1 - beta2) sums). ``eps`` is added to the accumulators' product under the root.
    """

    weights: torch.Tensor
    grads: torch.Tensor
    index: tuple[int, ...]
    accumulators: tuple[torch.Tensor, ...]
    buffer: torch.Tensor | None
    scalars: ETScalars
    beta2: float | None
    eps: float


TAIL_ELEMENTS = 1 << 15
"""Trailing axes are walked as one axis while their product stays this small: a run along the last
axis alone would be as short as that axis (3 for a 3 x 3 convolution kernel) and each run pays a
fixed cost."""

CACHED_TAIL, SHORT_RUN = 1 << 12, 1 << 8
"""Trailing axes merge only while their product stays within ``CACHED_TAIL`` (a thread's tables
then stay in L1: on a (16, 32, 16, 32, 9) index, pass 1 took 0.2 ns an element rather than 0.5 and
pass 2 0.65 rather than 0.8), unless that leaves runs shorter than ``SHORT_RUN`` elements; then up
to :data:`TAIL_ELEMENTS`."""


@cache
def _kernel():
    """The numba kernels of both passes (square_walk, finish_sums, prepare_roots, update_walk),
    imported on first use and loaded from numba's cache, each signature compiled into it by a child
    process first where it is missing (see :func:`~memplan.kernels.jit.compile_in_child`)."""
    from memplan.kernels import extreme_numba

    return tuple(map(compile_in_child, (extreme_numba.square_walk, extreme_numba.finish_sums,
                                        extreme_numba.prepare_roots, extreme_numba.update_walk)))


def et_square_sums_range(weights: torch.Tensor, grads: torch.Tensor, start: int, index: tuple[int, ...],
                         sums: list[torch.Tensor], scalars: ETScalars, chunk_elements: int | None = None) -> None:
    """Pass 1: add the slice sums of G^2 of elements ``[start, start + len)`` of the tensor
    ``index`` into ``sums`` (one contiguous fp32 or float64 vector per axis, of one dtype;
    ``weights`` only enter through coupled decay). fp32 and float64 run as they are; narrower
    floats through fp32 copies of at most ``chunk_elements`` elements at a time."""
    if any(vector.dtype != sums[0].dtype or not vector.is_contiguous() for vector in sums) \
            or sums[0].dtype not in (torch.float32, torch.float64):
        raise ValueError("et_square_sums_range: the sums must be contiguous fp32 or float64 vectors of one dtype")
    axis_addresses = np.array([vector.data_ptr() for vector in sums], dtype=np.int64)
    row = np.array([_scalar_row(scalars, None, 0.0)], dtype=np.float64)
    index = tuple(int(dim) for dim in index)
    for begin, weight, grad in _working_pieces(weights, grads, chunk_elements):
        addresses = np.array([[weight.data_ptr(), grad.data_ptr(), 0]], dtype=np.int64)
        _square_sums(addresses, ((start + begin, weight.numel(), index),), axis_addresses, row,
                     _numpy_type(weight.dtype), _numpy_type(sums[0].dtype), ADD_SUMS)


def et_update_range(weights: torch.Tensor, grads: torch.Tensor, buffer: torch.Tensor | None, start: int,
                    index: tuple[int, ...], scaled: list[torch.Tensor], scale: float, offset: float,
                    scalars: ETScalars, chunk_elements: int | None = None) -> None:
    """Pass 2: the update of elements ``[start, start + len)`` from the scaled accumulators (one
    vector per axis), ``scale`` and ``offset`` (> 0) of :func:`memplan.optim.extreme._scaled_factors`;
    ``buffer`` is the range's contiguous fp32 momentum buffer, or None."""
    if weights.numel() == 0:   # a rank's empty shard
        return
    if buffer is not None and (buffer.dtype != torch.float32 or not buffer.is_contiguous()):
        raise ValueError(f"et_update_range: the momentum buffer must be a contiguous fp32 tensor, not {buffer.dtype}")
    working = _working_dtype(weights.dtype)
    index = tuple(int(dim) for dim in index)
    vectors = torch.cat([vector.reshape(-1).to(working) for vector in scaled]).numpy()
    axis_roots = np.empty(vectors.shape[0], dtype=np.float64)
    corrections = np.array([[scale, offset, 0.0, 0.0]], dtype=np.float64)
    ranges, axis_table, _ = _tables(((0, 1, index),), TAIL_ELEMENTS)
    _, _, prepare_roots, _ = _kernel()
    prepare_roots(ranges, axis_table, vectors, axis_roots, corrections)
    row = np.array([_scalar_row(scalars, None, 0.0)], dtype=np.float64)
    flat_buffer = None if buffer is None else buffer.view(-1)
    for begin, weight, grad in _working_pieces(weights, grads, chunk_elements):
        stop = begin + weight.numel()
        piece_buffer = 0 if flat_buffer is None else flat_buffer[begin:stop].data_ptr()
        addresses = np.array([[weight.data_ptr(), grad.data_ptr(), piece_buffer]], dtype=np.int64)
        _update(addresses, ((start + begin, weight.numel(), index),), row, corrections, vectors, axis_roots,
                _numpy_type(working))
        if weight.data_ptr() != weights[begin:stop].data_ptr():
            weights[begin:stop].copy_(weight)


def et_many(tensors: list[ETTensor]) -> None:
    """Step every tensor whole, both passes, one kernel call each (see :class:`ETTensor`).

    Per tensor, what the optimizer's per-parameter step does: pass 1 on ``[0, numel)``, the
    accumulators updated with the slice sums (rounded to fp32), scaled as
    :func:`memplan.optim.extreme._scaled_factors` does, then pass 2. The tensors share the weights'
    dtype (fp32 or float64; ValueError otherwise); an empty list is a no-op.
    """
    tensors = [tensor for tensor in tensors if tensor.weights.numel()]
    if not tensors:
        return
    ETCall(tensors).run([tensor.grads for tensor in tensors],
                        [(tensor.scalars, tensor.beta2, tensor.eps) for tensor in tensors])


class ETCall:
    """A multi-tensor call (:func:`et_many`) prepared once for its tensors (none of them empty) and
    run every step with that step's gradients and scalars: the addresses of the weights, buffers and
    accumulators, and the ranges, are built here, once (see
    :class:`memplan.kernels.smmf_cpu.SMMFCall`). The call keeps its tensors; a caller that replaces
    any of them prepares a new call."""

    def __init__(self, tensors: list[ETTensor]) -> None:
        if not tensors or any(tensor.weights.numel() == 0 for tensor in tensors):
            raise ValueError("ETCall: tensors, none of them empty")
        self._dtype = batch_dtype("et_many", tensors)
        self._tensors = tensors   # kept: the tables point into them
        self._weights = [tensor.weights for tensor in tensors]
        self._addresses = np.array([(tensor.weights.data_ptr(), tensor.grads.data_ptr(),
                                     0 if tensor.buffer is None else tensor.buffer.data_ptr())
                                    for tensor in tensors], dtype=np.int64).reshape(-1, 3)
        self._axis_addresses = np.array([accumulator.data_ptr() for tensor in tensors
                                         for accumulator in tensor.accumulators], dtype=np.int64)
        self._layouts = tuple((0, tensor.weights.numel(), tuple(tensor.index)) for tensor in tensors)
        self._scalars = np.empty((len(tensors), len(SCALARS)), dtype=np.float64)

    def run(self, grads: Sequence[torch.Tensor],
            scalars: tuple[ETScalars, float | None, float] | Sequence[tuple[ETScalars, float | None, float]]) -> None:
        """Step every tensor with ``grads`` (one per tensor: contiguous, of its weights' dtype and
        size) and ``scalars``, (scalars, beta2, eps) for all or one such per tensor (see
        :class:`ETTensor`), the accumulators updated in place."""
        self._addresses[:, 1] = gradient_addresses("et_many", grads, self._weights)
        if isinstance(scalars[0], ETScalars):
            self._scalars[:] = _scalar_row(*scalars)
        else:
            self._scalars[:] = np.array([_scalar_row(*row) for row in scalars], dtype=np.float64)
        weight_type = _numpy_type(self._dtype)
        scaled, axis_roots, corrections = _square_sums(self._addresses, self._layouts, self._axis_addresses,
                                                       self._scalars, weight_type, np.float32, STORE_ACCUMULATORS)
        _update(self._addresses, self._layouts, self._scalars, corrections, scaled, axis_roots, weight_type)


def _square_sums(addresses: np.ndarray, layouts: tuple[tuple[int, int, tuple[int, ...]], ...],
                 axis_addresses: np.ndarray, scalars: np.ndarray, weight_type, output_type,
                 what: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Pass 1 over the ranges ``layouts`` (start, length, index) in one kernel call, then the
    serial combination of the sums; returns the scaled accumulators, their roots and the
    corrections that pass 2 reads (filled for STORE_ACCUMULATORS only)."""
    ranges, axis_table, scratch = _tables(layouts, TAIL_ELEMENTS)
    lengths = tuple(length for _, length, _ in layouts)
    pieces = kernel_pieces(sum(lengths))
    items, bounds, touched = split_work(lengths, pieces)
    origins, total = piece_origins(items, bounds, ranges[:, 6], ranges[:, 7])
    partial = np.empty(total, dtype=np.float64)
    square_walk, finish_sums, _, update_walk = _kernel()
    arguments = (ranges, axis_table, addresses, scalars, items, bounds, origins, partial, dtype_like(weight_type),
                 scratch)
    storing = what == STORE_ACCUMULATORS
    scaled = np.empty(int(ranges[-1, 6] + ranges[-1, 7]) if storing else 0, dtype=weight_type)
    axis_roots = np.empty(scaled.shape[0], dtype=np.float64)
    corrections = np.zeros((len(layouts) if storing else 0, len(CORRECTIONS)), dtype=np.float64)
    finish_arguments = (ranges, axis_table, axis_addresses, scalars, touched, origins, partial, what,
                        dtype_like(output_type), scaled, axis_roots, corrections)
    # where pass 2 follows (et_many stores the accumulators), its kernel compiles beside these
    compile_ahead(("extreme", weight_type, output_type, what), lambda: [
        (square_walk, arguments + (0, pieces)), (finish_sums, finish_arguments)] + ([
            (update_walk, _update_arguments(ranges, axis_table, addresses, scalars, corrections, scaled, axis_roots,
                                            items, bounds, weight_type, scratch) + (0, pieces))] if storing else []))
    run_in_threads(lambda low, high: square_walk(*arguments, low, high), pieces)
    finish_sums(*finish_arguments)
    return scaled, axis_roots, corrections


def _update(addresses: np.ndarray, layouts: tuple[tuple[int, int, tuple[int, ...]], ...], scalars: np.ndarray,
            corrections: np.ndarray, scaled: np.ndarray, axis_roots: np.ndarray, weight_type) -> None:
    """Pass 2 over the ranges ``layouts`` in one kernel call."""
    ranges, axis_table, scratch = _tables(layouts, TAIL_ELEMENTS)
    lengths = tuple(length for _, length, _ in layouts)
    pieces = kernel_pieces(sum(lengths))
    items, bounds, _ = split_work(lengths, pieces)
    _, _, _, update_walk = _kernel()
    arguments = _update_arguments(ranges, axis_table, addresses, scalars, corrections, scaled, axis_roots, items,
                                  bounds, weight_type, scratch)
    run_in_threads(lambda low, high: update_walk(*arguments, low, high), pieces)


def _update_arguments(ranges, axis_table, addresses, scalars, corrections, scaled, axis_roots, items, bounds,
                      weight_type, scratch) -> tuple:
    """Pass 2's kernel arguments, but for the piece bounds."""
    return (ranges, axis_table, addresses, scalars, corrections, scaled, axis_roots, items, bounds,
            dtype_like(weight_type), scratch)


@lru_cache(maxsize=64)
def _tables(layouts: tuple[tuple[int, int, tuple[int, ...]], ...],
            tail_elements: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The range table (see :data:`RANGE_FIELDS`) and the axis table (:data:`AXIS_FIELDS`) of ranges
    (start, length, index), and the lengths of a thread's scratch: the longest run (a table's
    entries) and the most axes. The trailing axes walked as one are
    those within :data:`CACHED_TAIL`, or ``tail_elements`` where those runs would be shorter than
    :data:`SHORT_RUN`. Cached: a training loop steps the same indices every step."""
    ranges = np.zeros((len(layouts), len(RANGE_FIELDS)), dtype=np.int64)
    axis_rows: list[tuple[int, int]] = []
    scratch = np.ones(2, dtype=np.int64)
    slot = 0
    for at, (start, length, index) in enumerate(layouts):
        trailing = tail_axes(index, min(tail_elements, CACHED_TAIL))
        if math.prod(index[len(index) - trailing:]) < SHORT_RUN:
            trailing = tail_axes(index, tail_elements)
        run = math.prod(index[len(index) - trailing:])
        ranges[at] = (start, length, len(axis_rows), len(index), len(index) - trailing, run, slot, sum(index))
        axis_rows += [(dim, sum(index[:axis])) for axis, dim in enumerate(index)]
        slot += sum(index)
        scratch = np.maximum(scratch, (run, len(index)))
    return ranges, np.array(axis_rows, dtype=np.int64).reshape(-1, len(AXIS_FIELDS)), scratch


@lru_cache(maxsize=256)
def _scalar_row(scalars: ETScalars, beta2: float | None, eps: float) -> tuple[float, ...]:
    """A range's row of :data:`SCALARS` (cached: a group's tensors share their scalars)."""
    keep, alpha = (1.0, 1.0) if beta2 is None else (beta2, 1.0 - beta2)
    return scalars.lr, scalars.momentum, scalars.decay, scalars.coupled_decay, scalars.grad_sign, keep, alpha, eps


def _working_pieces(weights: torch.Tensor, grads: torch.Tensor, chunk_elements: int | None):
    """(offset, weights, gradients) of the range in the working dtype: the range itself for fp32
    and float64, else fp32 copies of at most ``chunk_elements`` elements (the caller writes updated
    copies back)."""
    working = _working_dtype(weights.dtype)
    length = weights.numel()
    if weights.dtype == working and grads.dtype == working:
        if length:
            yield 0, weights, grads
        return
    piece = max(1, chunk_elements or length)
    for begin in range(0, length, piece):
        stop = min(length, begin + piece)
        yield begin, weights[begin:stop].to(working), grads[begin:stop].to(working)


def _working_dtype(dtype: torch.dtype) -> torch.dtype:
    return dtype if dtype.itemsize >= 4 else torch.float32


def _numpy_type(dtype: torch.dtype):
    return np.float32 if dtype == torch.float32 else np.float64


@dataclass(frozen=True, slots=True)
class ETInfinityTensor:
    """One parameter of a multi-tensor ET-infinity step (:func:`et_inf_many`), stepped whole: its
    contiguous weights and gradients (any shape, read in row-major order; fp32 or float64, the same
    dtype) and its accumulated squared norm ``sum_sq`` (the optimizer's 0-d fp32 state, updated in
    place). ``beta2`` None adds this step's squared norm to it; a number decays it first
    (s <- beta2 s + (1 - beta2) ||G||^2). ``eps`` is added to it under the root."""

    weights: torch.Tensor
    grads: torch.Tensor
    sum_sq: torch.Tensor
    scalars: ETScalars
    beta2: float | None
    eps: float


def et_inf_many(tensors: list[ETInfinityTensor]) -> None:
    """Step every tensor whole, both passes, one kernel call each (see :class:`ETInfinityTensor`).

    Per tensor, what the optimizer's per-parameter step does, rounded as it rounds: the squared norm
    of G (summed in float64, rounded to fp32), the accumulator updated with it in fp32, the inverse
    root (eps + s)^(-1/2) in fp32, then W <- W * decay - lr * G * inverse_root. The tensors share
    the weights' dtype (fp32 or float64; ValueError otherwise); an empty list is a no-op.
    """
    tensors = [tensor for tensor in tensors if tensor.weights.numel()]
    if not tensors:
        return
    dtype = batch_dtype("et_inf_many", tensors)
    if any(tensor.sum_sq.dtype != torch.float32 or tensor.sum_sq.numel() != 1 for tensor in tensors):
        raise ValueError("et_inf_many: every accumulator must be a single fp32 value")
    addresses = np.array([(tensor.weights.data_ptr(), tensor.grads.data_ptr()) for tensor in tensors],
                         dtype=np.int64)
    states = np.array([tensor.sum_sq.data_ptr() for tensor in tensors], dtype=np.int64)
    scalars = np.array([_infinity_row(tensor.scalars, tensor.beta2, tensor.eps) for tensor in tensors],
                       dtype=np.float64)
    lengths = tuple(tensor.weights.numel() for tensor in tensors)
    weight_type = _numpy_type(dtype)
    compile_ahead(("extreme infinity", weight_type), lambda: _infinity_calls(addresses, lengths, scalars, weight_type,
                                                                             states))
    _, inverse_roots = _infinity_squared_norms(addresses, lengths, scalars, weight_type, states)
    _infinity_scale(addresses, lengths, scalars, inverse_roots, weight_type)


def _infinity_calls(addresses: np.ndarray, lengths: tuple[int, ...], scalars: np.ndarray, weight_type,
                    states: np.ndarray) -> list[tuple[object, tuple]]:
    """Both passes' kernels with the arguments :func:`et_inf_many`'s calls give them (see
    :func:`~memplan.kernels.jit.compile_ahead`)."""
    squared_norm, scale = _norm_kernels()
    norm_arguments, pieces = _norm_arguments(addresses, lengths, scalars, weight_type, states)
    scale_arguments, _ = _scale_arguments(addresses, lengths, scalars, norm_arguments[8], weight_type)
    return [(squared_norm, norm_arguments + (0, pieces, False)), (scale, scale_arguments + (0, pieces))]


def squared_norm_range(weights: torch.Tensor, grads: torch.Tensor, scalars: ETScalars) -> float:
    """ET-infinity's pass 1: the range's sum of G^2 (in float64)."""
    weight, gradient = _working(weights), _working(grads)
    addresses = np.array([(weight.data_ptr(), gradient.data_ptr())], dtype=np.int64)
    row = np.array([_infinity_row(scalars, None, 0.0)], dtype=np.float64)
    norms, _ = _infinity_squared_norms(addresses, (weight.numel(),), row, _numpy_type(weight.dtype),
                                       np.empty(0, dtype=np.int64))
    return float(norms[0])


def scale_range(weights: torch.Tensor, grads: torch.Tensor, inverse_root: float, scalars: ETScalars) -> None:
    """ET-infinity's pass 2: W <- W * decay - lr * G * inverse_root over the range."""
    weight, gradient = _working(weights), _working(grads)
    addresses = np.array([(weight.data_ptr(), gradient.data_ptr())], dtype=np.int64)
    row = np.array([_infinity_row(scalars, None, 0.0)], dtype=np.float64)
    _infinity_scale(addresses, (weight.numel(),), row, np.array([inverse_root], dtype=np.float64),
                    _numpy_type(weight.dtype))
    if weight is not weights:
        weights.copy_(weight)


def _infinity_squared_norms(addresses: np.ndarray, lengths: tuple[int, ...], scalars: np.ndarray, weight_type,
                            states: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """ET-infinity's pass 1 over the tensors ``addresses`` (weights, gradients) of ``lengths``
    elements in one kernel call, then the serial combination of the sums: returns each tensor's
    squared norm (float64) and, where ``states`` gives the tensors' accumulators (one address per
    tensor, or none), their updated values' inverse roots."""
    arguments, pieces = _norm_arguments(addresses, lengths, scalars, weight_type, states)
    kernel = _norm_kernels()[0]
    run_in_threads(lambda low, high: kernel(*arguments, low, high, False), pieces)
    kernel(*arguments, 0, 0, True)
    return arguments[7], arguments[8]   # the norms and inverse roots


def _norm_arguments(addresses: np.ndarray, lengths: tuple[int, ...], scalars: np.ndarray, weight_type,
                    states: np.ndarray) -> tuple[tuple, int]:
    """Pass 1's kernel arguments (but for the pieces it steps), with new vectors for its results
    (norms and inverse roots: the last two arrays), and the pieces of the call."""
    pieces = kernel_pieces(sum(lengths))
    items, bounds, touched = split_work(lengths, pieces)
    partial = np.zeros((pieces, len(lengths)), dtype=np.float64)
    norms = np.empty(len(lengths), dtype=np.float64)
    inverse_roots = np.empty(states.shape[0], dtype=np.float64)
    return (addresses, scalars, items, bounds, partial, touched, states, norms, inverse_roots,
            dtype_like(weight_type)), pieces


def _infinity_scale(addresses: np.ndarray, lengths: tuple[int, ...], scalars: np.ndarray,
                    inverse_roots: np.ndarray, weight_type) -> None:
    """ET-infinity's pass 2 over the tensors in one kernel call."""
    arguments, pieces = _scale_arguments(addresses, lengths, scalars, inverse_roots, weight_type)
    kernel = _norm_kernels()[1]
    run_in_threads(lambda low, high: kernel(*arguments, low, high), pieces)


def _scale_arguments(addresses: np.ndarray, lengths: tuple[int, ...], scalars: np.ndarray,
                     inverse_roots: np.ndarray, weight_type) -> tuple[tuple, int]:
    """Pass 2's kernel arguments (but for the pieces it steps), and the pieces of the call."""
    pieces = kernel_pieces(sum(lengths))
    items, bounds, _ = split_work(lengths, pieces)
    return (addresses, scalars, inverse_roots, items, bounds, dtype_like(weight_type)), pieces


@lru_cache(maxsize=256)
def _infinity_row(scalars: ETScalars, beta2: float | None, eps: float) -> tuple[float, ...]:
    """A tensor's row of :data:`INFINITY_SCALARS` (cached: a group's tensors share their scalars)."""
    keep, alpha = (1.0, 1.0) if beta2 is None else (beta2, 1.0 - beta2)
    return scalars.lr, scalars.decay, scalars.coupled_decay, scalars.grad_sign, keep, alpha, eps


def _working(tensor: torch.Tensor) -> torch.Tensor:
    """The range as the kernels read it: fp32 and float64 contiguous, narrower floats as fp32."""
    working = tensor if tensor.dtype.itemsize >= 4 else tensor.to(torch.float32)
    return working.contiguous()


@cache
def _norm_kernels():
    """ET-infinity's two numba kernels (squared norm, scale), imported on first use (as
    :func:`_kernel`'s are)."""
    from memplan.kernels import extreme_numba

    return compile_in_child(extreme_numba.infinity_squared_norm), compile_in_child(extreme_numba.infinity_scale)


__all__ = ["ETCall", "ETInfinityTensor", "ETScalars", "ETTensor", "et_inf_many", "et_many", "et_square_sums_range",
           "et_update_range", "scale_range", "squared_norm_range"]
