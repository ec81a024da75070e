"""Extreme tensoring's two passes and ET-infinity's on a flat range of the tensor index, with numba.

Pass 1 (:func:`et_square_sums_range`) adds the range's slice sums of G^2 (every axis) into output
vectors; the optimizer all-reduces (when sharded) and folds them into its accumulators. Pass 2
(:func:`et_update_range`) applies, per element, with s_k the accumulators scaled as in
:func:`memplan.optim.extreme._scaled_factors`::

    step = (offset + prod_k s_k[i_k]) ^ (-1 / (2p)) * G
    W <- W * decay - lr * step * scale          or, with momentum:  m <- momentum m + step * scale;
                                                                  W <- W * decay - lr m

ET-infinity's passes are :func:`squared_norm_range` and :func:`scale_range`. The range is walked
in runs along the trailing axes (the last one, and the ones before it while their product stays
small: :data:`TAIL_ELEMENTS`), as in :mod:`memplan.kernels.sm3_cpu`; sums accumulate in float64,
per thread, and are combined in a fixed order.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import cache

import numpy as np
import torch

from memplan.kernels.jit import kernel_threads, numba_module, run_in_threads, tail_axes
from memplan.kernels.scalars import DecayScalars


@dataclass(frozen=True)
class ETScalars(DecayScalars):
    """The per-step scalars of the update pass."""

    lr: float
    momentum: float = 0.0


def _build():
    numba = numba_module()
    jit = numba.njit(cache=True, nogil=True, error_model="numpy", fastmath={"reassoc"})
    serial_jit = numba.njit(cache=True, nogil=True, error_model="numpy")

    @jit
    def run_squares(weights, grads, last_sums, coupled, grad_sign):
        total = 0.0
        for i in range(weights.shape[0]):
            gradient = grads[i] * grad_sign + coupled * weights[i]
            square = gradient * gradient
            last_sums[i] += square
            total += square
        return total

    @jit
    def run_update(weights, grads, buffer, last_scaled, last_roots, roots, outer, offset, threshold, scale, order, lr,
                   momentum, decay, coupled, grad_sign, with_buffer):
        # The loops are branch-free where they can be, so LLVM vectorizes them: the order's root
        # first, into the run's scratch ``roots``, then the update. Orders 1, 2 and 4 take square
        # roots. Other orders would take a log and an exp per element (scalar code); instead, where
        # the offset moves the root by less than half an ulp (outer * s >= threshold), the root is
        # separable: outer^a * s^a, with s^a precomputed per table entry (``last_roots``).
        one = weights.dtype.type(1)
        count = weights.shape[0]
        if order == 1:
            for i in range(count):
                roots[i] = one / np.sqrt(outer * last_scaled[i] + offset)
        elif order == 2:
            for i in range(count):
                roots[i] = one / np.sqrt(np.sqrt(outer * last_scaled[i] + offset))
        elif order == 4:
            for i in range(count):
                roots[i] = one / np.sqrt(np.sqrt(np.sqrt(outer * last_scaled[i] + offset)))
        else:
            exponent = -0.5 / order   # float64: the rare exact roots keep their precision
            outer_root = np.exp(np.log(np.float64(outer)) * exponent) if outer > 0 else 0.0
            for i in range(count):
                roots[i] = outer_root * last_roots[i]
            for i in range(count):
                if outer * last_scaled[i] < threshold:
                    roots[i] = np.exp(np.log(outer * last_scaled[i] + offset) * exponent)
        if with_buffer:
            for i in range(count):
                weight = weights[i]
                moving = buffer[i] * momentum + roots[i] * (grads[i] * grad_sign + coupled * weight) * scale
                buffer[i] = moving
                weights[i] = weight * decay - lr * moving
        else:
            for i in range(count):
                weight = weights[i]
                weights[i] = weight * decay - lr * (roots[i] * (grads[i] * grad_sign + coupled * weight) * scale)

    @serial_jit
    def walk(weights, grads, buffer, dims, offsets, scaled, last_roots, partial, start, update, order, offset, threshold,
             scale, lr, momentum, decay, coupled, grad_sign, per_thread, low, high):
        """Pieces ``low`` to ``high``. update False: slice sums of G^2 into their rows of
        ``partial``; True: the update pass."""
        length = weights.shape[0]
        axes = dims.shape[0]
        last = dims[axes - 1]
        last_offset = offsets[axes - 1]
        one = np.ones(1, dtype=weights.dtype)
        roots = np.empty(last if update else 0, dtype=weights.dtype)
        for thread in range(low, high):
            first = thread * per_thread
            stop = min(length, first + per_thread)
            if first >= stop:
                continue
            index = np.zeros(axes, dtype=np.int64)
            run = (start + first) // last
            for axis in range(axes - 2, -1, -1):
                index[axis] = run % dims[axis]
                run //= dims[axis]
            k = first
            while k < stop:
                col0 = (start + k) % last
                end = min(stop, k + last - col0)
                if update:
                    outer = one[0]
                    for axis in range(axes - 1):
                        outer = outer * scaled[offsets[axis] + index[axis]]
                    run_update(weights[k:end], grads[k:end], buffer[k:end] if buffer.shape[0] else buffer,
                               scaled[last_offset + col0:last_offset + col0 + end - k],
                               last_roots[col0:col0 + end - k] if last_roots.shape[0] else last_roots,
                               roots[:end - k], outer, offset, threshold, scale, order, lr, momentum, decay, coupled,
                               grad_sign, buffer.shape[0] > 0)
                else:
                    total = run_squares(weights[k:end], grads[k:end],
                                        partial[thread, last_offset + col0:last_offset + col0 + end - k],
                                        coupled, grad_sign)
                    for axis in range(axes - 1):
                        partial[thread, offsets[axis] + index[axis]] += total
                for axis in range(axes - 2, -1, -1):
                    index[axis] += 1
                    if index[axis] < dims[axis]:
                        break
                    index[axis] = 0
                k = end

    @serial_jit
    def combine(sums, partial):
        for slot in range(sums.shape[0]):
            total = 0.0
            for thread in range(partial.shape[0]):
                total += partial[thread, slot]
            sums[slot] += total

    return walk, combine


@cache
def _walk():
    """The compiled kernels, built (or read from numba's cache) on first use."""
    return _build()


def et_square_sums_range(weights: torch.Tensor, grads: torch.Tensor, start: int, index: tuple[int, ...],
                         sums: list[torch.Tensor], scalars: ETScalars, chunk_elements: int | None = None) -> None:
    """Pass 1: add the slice sums of G^2 of elements ``[start, start + len)`` of the tensor
    ``index`` into ``sums`` (one vector per axis; ``weights`` only enter through coupled decay)."""
    _pieces(weights, grads, None, start, index, sums, scalars, chunk_elements, update=False)


def et_update_range(weights: torch.Tensor, grads: torch.Tensor, buffer: torch.Tensor | None, start: int,
                    index: tuple[int, ...], scaled: list[torch.Tensor], scale: float, offset: float,
                    scalars: ETScalars, chunk_elements: int | None = None) -> None:
    """Pass 2: the update of elements ``[start, start + len)`` from the scaled accumulators."""
    _pieces(weights, grads, buffer, start, index, scaled, scalars, chunk_elements, update=True,
            scale=scale, offset=offset)


def squared_norm_range(weights: torch.Tensor, grads: torch.Tensor, scalars: ETScalars) -> float:
    """ET-infinity's pass 1: the range's sum of G^2 (in float64)."""
    weight, gradient = _working(weights), _working(grads)
    numpy_float = weight.numpy().dtype.type
    return float(_norm_kernels()[0](weight.numpy(), gradient.numpy(), numpy_float(scalars.coupled_decay),
                                    numpy_float(scalars.grad_sign), kernel_threads(weights.numel())))


def scale_range(weights: torch.Tensor, grads: torch.Tensor, inverse_root: float, scalars: ETScalars) -> None:
    """ET-infinity's pass 2: W <- W * decay - lr * G * inverse_root over the range."""
    weight, gradient = _working(weights), _working(grads)
    numpy_float = weight.numpy().dtype.type
    _norm_kernels()[1](weight.numpy(), gradient.numpy(), numpy_float(inverse_root), numpy_float(scalars.lr),
                       numpy_float(scalars.decay), numpy_float(scalars.coupled_decay),
                       numpy_float(scalars.grad_sign), kernel_threads(weights.numel()))
    if weight is not weights:
        weights.copy_(weight)


def _working(tensor: torch.Tensor) -> torch.Tensor:
    return tensor if tensor.dtype.itemsize >= 4 else tensor.to(torch.float32)


@cache
def _norm_kernels():
    """ET-infinity's two compiled passes, built on first use."""
    numba = numba_module()

    @numba.njit(parallel=True, cache=True, nogil=True, error_model="numpy")
    def squared_norm(weights, grads, coupled, grad_sign, threads):
        total = 0.0
        for i in numba.prange(weights.shape[0]):
            gradient = grads[i] * grad_sign + coupled * weights[i]
            total += gradient * gradient
        return total

    @numba.njit(parallel=True, cache=True, nogil=True, error_model="numpy")
    def scale(weights, grads, inverse_root, lr, decay, coupled, grad_sign, threads):
        for i in numba.prange(weights.shape[0]):
            weight = weights[i]
            gradient = grads[i] * grad_sign + coupled * weight
            weights[i] = weight * decay - lr * (gradient * inverse_root)

    return squared_norm, scale


def _pieces(weights, grads, buffer, start, index, vectors, scalars, chunk_elements, update, scale=1.0,
            offset=0.0) -> None:
    working = weights.dtype if weights.dtype.itemsize >= 4 else torch.float32
    length = weights.numel()
    if length == 0:   # a rank's empty shard
        return
    piece = length if weights.dtype == working and grads.dtype == working else max(1, chunk_elements or length)
    for begin in range(0, length, piece):
        stop = min(length, begin + piece)
        weight = weights[begin:stop].to(working)
        _run(weight, grads[begin:stop].to(working), None if buffer is None else buffer[begin:stop], start + begin,
             index, vectors, scalars, update, scale, offset, working)
        if update and weight.data_ptr() != weights[begin:stop].data_ptr():
            weights[begin:stop].copy_(weight)


TAIL_ELEMENTS = 1 << 15
"""Trailing axes are walked as one axis while their product stays this small: a run along the last
axis alone would be as short as that axis (3 for a 3 x 3 convolution kernel) and each run pays a
fixed cost."""


def _run(weights, grads, buffer, start, index, vectors, scalars, update, scale, offset, working) -> None:
    numpy_float = np.float32 if working == torch.float32 else np.float64
    dims = tuple(int(dim) for dim in index)
    tail = tail_axes(dims, TAIL_ELEMENTS)
    head, trailing = dims[:len(dims) - tail], dims[len(dims) - tail:]
    walked = head + (math.prod(trailing),)
    if update:
        # the trailing axes' accumulators as one table: their outer product
        table = vectors[len(head)].reshape(-1).to(working)
        for vector in vectors[len(head) + 1:]:
            table = torch.outer(table, vector.reshape(-1).to(working)).reshape(-1)
        scaled = torch.cat([vector.reshape(-1).to(working) for vector in vectors[:len(head)]] + [table]).numpy()
        order = len(dims)
        exponent = -0.5 / order
        # the separable roots' table, and where they are exact: |exponent| offset / (outer s) at most
        # the unit roundoff (see run_update)
        last_roots = (np.zeros(0, dtype=numpy_float) if order in (1, 2, 4) else
                      (table.double() ** exponent).to(working).numpy())
        threshold = abs(exponent) * offset / (np.finfo(numpy_float).eps / 2)
        _call(weights, grads, buffer, walked, order, scaled, np.zeros(sum(walked), dtype=np.float64), start, True,
              scalars, scale, offset, numpy_float, last_roots, threshold)
        return
    sums = np.zeros(sum(walked), dtype=np.float64)
    _call(weights, grads, buffer, walked, len(dims), np.zeros(0, dtype=numpy_float), sums, start, False, scalars,
          1.0, 0.0, numpy_float)
    parts = torch.from_numpy(sums).split(list(walked))
    for vector, part in zip(vectors[:len(head)], parts):
        vector.view(-1).add_(part.to(vector.dtype))
    # the trailing table's sums of G^2, summed over every trailing axis but one (in float64)
    table = parts[-1].view(trailing)
    for axis, vector in enumerate(vectors[len(head):]):
        others = [other for other in range(tail) if other != axis]
        vector.view(-1).add_((table.sum(dim=others) if others else table).to(vector.dtype))


def _call(weights, grads, buffer, dims, order, scaled, sums, start, update, scalars, scale, offset, numpy_float,
          last_roots=None, threshold=0.0) -> None:
    dims_array = np.array(dims, dtype=np.int64)
    offsets = np.concatenate([[0], np.cumsum(dims_array)[:-1]]).astype(np.int64)
    buffer_array = np.zeros(0, dtype=numpy_float) if buffer is None else buffer.numpy()
    threads = kernel_threads(weights.numel())
    partial = np.zeros((threads, 0 if update else sums.shape[0]), dtype=np.float64)
    walk, combine = _walk()
    last_roots = np.zeros(0, dtype=numpy_float) if last_roots is None else last_roots
    arguments = (weights.numpy(), grads.numpy(), buffer_array, dims_array, offsets, scaled, last_roots, partial, start,
                 update, order, numpy_float(offset), numpy_float(threshold), numpy_float(scale), numpy_float(scalars.lr), numpy_float(scalars.momentum),
                 numpy_float(scalars.decay), numpy_float(scalars.coupled_decay),
                 numpy_float(scalars.grad_sign), -(-weights.numel() // threads))
    run_in_threads(lambda low, high: walk(*arguments, low, high), threads)
    if not update:
        combine(sums, partial)


__all__ = ["ETScalars", "et_square_sums_range", "et_update_range", "scale_range", "squared_norm_range"]
