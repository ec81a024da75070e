"""SM3's step on a flat range of its cover view (d_1, ..., d_p), compiled with numba.

Per element, with mu the previous per-axis accumulators (read-only, in the working dtype)::

    SM3-II:  nu = min_i mu_i[i_i] + G^2        new maxima: max over every slice of nu
    SM3-I:   nu = min_i mu_i[i_i]              (mu already holds this step's maxima of G^2)
    r = 1 / sqrt(nu + eps)   (1 - momentum is rounded once, from double, as torch does)
    W <- W * decay - lr G r                    or, with momentum:  m <- momentum m + (1 - momentum) G r;
                                                                   W <- W * decay - lr m

SM3-II's update is one pass; SM3-I first needs :func:`sm3_square_maxima_range` (the maxima of
G^2, a read-only pass over the gradient). The range is walked in runs along the trailing axes
(the last, and the ones before it while their product is at most :data:`TAIL_ELEMENTS`; the
minimum over the other axes is one number per run); each thread (a Python thread running a ``nogil`` kernel) keeps its own maxima, combined exactly
(max is order-free) afterwards.
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
class SM3Scalars(DecayScalars):
    """The per-step scalars of SM3's update."""

    lr: float
    eps: float
    momentum: float = 0.0


@dataclass(frozen=True)
class SM3Tensor:
    """One parameter of a multi-tensor SM3-II step (:func:`sm3_many`), stepped whole: its flat,
    contiguous weights and gradients (fp32 or float64, the same dtype), its cover ``view``, its
    per-axis accumulators (the optimizer's state: read as mu, overwritten by the new slice maxima
    of nu) and its momentum buffer (None without momentum)."""

    weights: torch.Tensor
    grads: torch.Tensor
    view: tuple[int, ...]
    accumulators: tuple[torch.Tensor, ...]
    buffer: torch.Tensor | None
    scalars: SM3Scalars


def _build_kernels():
    numba = numba_module()
    jit = numba.njit(cache=True, nogil=True, error_model="numpy", fastmath={"reassoc"})
    serial_jit = numba.njit(cache=True, nogil=True, error_model="numpy")

    @jit
    def run_update(weights, grads, buffer, last_acc, last_max, nus, base, add_square, lr, eps, momentum, dampening,
                   decay, coupled, grad_sign, with_buffer, with_maxima):
        """One run along the walked last axis (arrays sliced to it; ``nus`` is scratch); returns
        the run's maximum of nu. Each loop is branch-free, so LLVM vectorizes it."""
        count = weights.shape[0]
        one = weights.dtype.type(1)
        if add_square:
            for i in range(count):
                gradient = grads[i] * grad_sign + coupled * weights[i]
                nus[i] = min(base, last_acc[i]) + gradient * gradient
        else:
            for i in range(count):
                nus[i] = min(base, last_acc[i])
        run_max = eps * 0
        if with_maxima:
            for i in range(count):
                last_max[i] = max(last_max[i], nus[i])
            for i in range(count):
                run_max = max(run_max, nus[i])
        if with_buffer:
            for i in range(count):
                weight = weights[i]
                gradient = grads[i] * grad_sign + coupled * weight
                moving = buffer[i] * momentum + dampening * (gradient * (one / np.sqrt(nus[i] + eps)))
                buffer[i] = moving
                weights[i] = weight * decay - lr * moving
        else:
            for i in range(count):
                weight = weights[i]
                gradient = grads[i] * grad_sign + coupled * weight
                weights[i] = weight * decay - lr * (gradient * (one / np.sqrt(nus[i] + eps)))
        return run_max

    @jit
    def run_square_max(weights, grads, last_max, coupled, grad_sign):
        run_max = coupled * 0
        for i in range(weights.shape[0]):
            gradient = grads[i] * grad_sign + coupled * weights[i]
            square = gradient * gradient
            last_max[i] = max(last_max[i], square)
            run_max = max(run_max, square)
        return run_max

    @serial_jit
    def walk(weights, grads, buffer, dims, offsets, acc, partial, start, mode, lr, eps, momentum, dampening, decay,
             coupled, grad_sign, per_thread, low, high):
        """Pieces ``low`` to ``high`` of the range into their rows of ``partial``. mode 0: SM3-II
        update; 1: SM3-I update; 2: SM3-I's maxima of G^2 (no update)."""
        length = weights.shape[0]
        axes = dims.shape[0]
        last = dims[axes - 1]
        last_offset = offsets[axes - 1]
        with_maxima = mode != 1
        infinity = np.full(1, np.inf, dtype=acc.dtype)
        nus = np.empty(last, dtype=weights.dtype)
        for thread in range(low, high):
            first = thread * per_thread
            stop = min(length, first + per_thread)
            if first >= stop:
                continue
            index = np.zeros(axes, dtype=np.int64)  # the outer axes' indices of the current run
            run = (start + first) // last
            for axis in range(axes - 2, -1, -1):
                index[axis] = run % dims[axis]
                run //= dims[axis]
            k = first
            while k < stop:
                col0 = (start + k) % last
                end = min(stop, k + last - col0)
                base = infinity[0]
                for axis in range(axes - 1):
                    base = min(base, acc[offsets[axis] + index[axis]])
                if mode == 2:
                    run_max = run_square_max(weights[k:end], grads[k:end],
                                             partial[thread, last_offset + col0:last_offset + col0 + end - k],
                                             coupled, grad_sign)
                else:
                    run_max = run_update(weights[k:end], grads[k:end], buffer[k:end] if buffer.shape[0] else buffer,
                                         acc[last_offset + col0:last_offset + col0 + end - k],
                                         partial[thread, last_offset + col0:last_offset + col0 + end - k],
                                         nus[:end - k], base,
                                         mode == 0, lr, eps, momentum, dampening, decay, coupled, grad_sign,
                                         buffer.shape[0] > 0, with_maxima)
                if with_maxima:
                    for axis in range(axes - 1):
                        slot = offsets[axis] + index[axis]
                        partial[thread, slot] = max(partial[thread, slot], run_max)
                for axis in range(axes - 2, -1, -1):  # the next run's outer indices
                    index[axis] += 1
                    if index[axis] < dims[axis]:
                        break
                    index[axis] = 0
                k = end

    @serial_jit
    def combine(out, partial):
        for slot in range(out.shape[0]):
            for thread in range(partial.shape[0]):
                out[slot] = max(out[slot], partial[thread, slot])

    return walk, combine


@cache
def _walk():
    """The compiled kernels, built (or read from numba's cache) on first use."""
    return _build_kernels()


def sm3_range(weights: torch.Tensor, grads: torch.Tensor, start: int, view: tuple[int, ...],
              accumulators: list[torch.Tensor], new_maxima: list[torch.Tensor] | None,
              buffer: torch.Tensor | None, scalars: SM3Scalars, chunk_elements: int | None = None) -> None:
    """Update the elements ``[start, start + weights.numel())`` of the cover ``view``.

    ``accumulators`` are the per-axis mu (read-only); with ``new_maxima`` (SM3-II) the range's
    slice maxima of nu are max-combined into those vectors, without (SM3-I) nu is the minimum of
    the accumulators alone. ``buffer`` is the range's momentum buffer (fp32), or None.
    """
    _dispatch(weights, grads, start, view, accumulators, new_maxima, buffer, scalars, chunk_elements,
              0 if new_maxima is not None else 1)


def sm3_square_maxima_range(weights: torch.Tensor, grads: torch.Tensor, start: int, view: tuple[int, ...],
                            maxima: list[torch.Tensor], scalars: SM3Scalars,
                            chunk_elements: int | None = None) -> None:
    """SM3-I's first pass: max-combine the range's slice maxima of G^2 into ``maxima``
    (``weights`` only enter through coupled weight decay; nothing is written to them)."""
    _dispatch(weights, grads, start, view, maxima, maxima, None, scalars, chunk_elements, 2)


def _dispatch(weights, grads, start, view, accumulators, outputs, buffer, scalars, chunk_elements, mode) -> None:
    working = weights.dtype if weights.dtype.itemsize >= 4 else torch.float32
    length = weights.numel()
    if weights.dtype == working and grads.dtype == working:
        _run(weights, grads, start, view, accumulators, outputs, buffer, scalars, mode, working)
        return
    piece = max(1, chunk_elements or length)
    for offset in range(0, length, piece):
        stop = min(length, offset + piece)
        weight = weights[offset:stop].to(working)
        _run(weight, grads[offset:stop].to(working), start + offset, view, accumulators, outputs,
             None if buffer is None else buffer[offset:stop], scalars, mode, working)
        if mode != 2:
            weights[offset:stop].copy_(weight)


TAIL_ELEMENTS = 1 << 15
"""Trailing axes are walked as one axis while their product stays this small (see
:mod:`memplan.kernels.extreme_cpu`): their accumulators' minima become one table, and the
table's maxima are folded back into each trailing axis's maxima after the walk."""


def _run(weights, grads, start, view, accumulators, outputs, buffer, scalars, mode, working) -> None:
    numpy_float = np.float32 if working == torch.float32 else np.float64
    full = tuple(int(dim) for dim in view)
    tail = tail_axes(full, TAIL_ELEMENTS)
    head, trailing = full[:len(full) - tail], full[len(full) - tail:]
    dims = np.array(head + (math.prod(trailing),), dtype=np.int64)
    offsets = np.concatenate([[0], np.cumsum(dims)[:-1]]).astype(np.int64)
    table = accumulators[len(head)].reshape(-1).to(working)
    for accumulator in accumulators[len(head) + 1:]:
        table = torch.minimum(table[:, None], accumulator.reshape(-1).to(working)[None, :]).reshape(-1)
    acc = torch.cat([accumulator.reshape(-1).to(working) for accumulator in accumulators[:len(head)]] +
                    [table]).numpy()
    out = np.zeros(int(dims.sum()), dtype=numpy_float)   # maxima of nu (or G^2) are >= 0
    buffer_array = np.zeros(0, dtype=numpy_float) if buffer is None else buffer.numpy()
    threads = kernel_threads(weights.numel())
    partial = np.zeros((threads, out.shape[0]), dtype=numpy_float)
    walk, combine = _walk()
    arguments = (weights.numpy(), grads.numpy(), buffer_array, dims, offsets, acc, partial, start, mode,
                 numpy_float(scalars.lr), numpy_float(scalars.eps), numpy_float(scalars.momentum),
                 numpy_float(1.0 - scalars.momentum), numpy_float(scalars.decay), numpy_float(scalars.coupled_decay),
                 numpy_float(scalars.grad_sign), -(-weights.numel() // threads))
    run_in_threads(lambda low, high: walk(*arguments, low, high), threads)
    if outputs is None or mode == 1:
        return
    combine(out, partial)
    parts = torch.from_numpy(out).split([int(dim) for dim in dims])
    for output, part in zip(outputs[:len(head)], parts):
        torch.maximum(output.view(-1), part.to(output.dtype), out=output.view(-1))
    maxima = parts[-1].view(trailing)   # the table's maxima, folded into each trailing axis
    for axis, output in enumerate(outputs[len(head):]):
        others = [other for other in range(tail) if other != axis]
        folded = maxima.amax(dim=others) if others else maxima
        torch.maximum(output.view(-1), folded.to(output.dtype), out=output.view(-1))


__all__ = ["SM3Scalars", "sm3_range", "sm3_square_maxima_range"]
