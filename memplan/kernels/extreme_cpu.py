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
range. Sums are float64, in each thread's own partial vectors, combined in thread order after the
threads join. The threads are Python threads running ``nogil`` kernels over contiguous runs of
items (:func:`memplan.kernels.jit.split_work`).

Roots: orders 1, 2 and 4 take square roots, as the eager step does. Another order p, with
a = -1 / (2p), x = t + offset (t the accumulators' product), M = max(t, offset) and
z = x / (sqrt(2) M) in [1/sqrt(2), sqrt(2)], takes x^a = M^a 2^(a/2) z^a: M^a is offset^a or the
product of the per-axis roots s_k^a (computed in float64 per slice, a table per run like the
accumulators'), and z^a = exp(a ln z), ln z = 2 atanh((z - 1) / (z + 1)), two short series. The
root is within a few ulp of the exact one in fp32 and float64, and is taken in the loop that applies
it (one loop per order and momentum); the loops stay branch-free and vectorize (libm's log and exp
per element do not: 12.5 ns an element, against under 1 ns for the whole update now).

ET-infinity's passes are :func:`squared_norm_range` and :func:`scale_range`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import cache, lru_cache

import numpy as np
import torch

from memplan.kernels.jit import array_pointer, kernel_threads, numba_module, run_in_threads, split_work, tail_axes
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

ADD_SUMS, STORE_ACCUMULATORS = 0, 1
"""What pass 1 does with each range's slice sums: add them to output vectors, or fold them into
the range's accumulators and rescale those for pass 2 (:func:`et_many`)."""

RANGE_FIELDS = ("start", "length", "first_axis", "axes", "head", "tail", "slot", "width")
"""The columns of a call's range table: the range's first element in its index and its length,
its index's first row in the axis table and its axes (the order p), the head axes (walked one by
one), the elements of a run (the product of the trailing axes), and the offset and count of its
per-slice values (sums, scaled accumulators, roots: one per slice of every axis) in a call's
vectors."""
AXIS_FIELDS = ("dim", "offset")
"""The columns of a call's axis table, one row per axis of every range: its length, and the offset
of its slices among its range's (the axes' in order)."""
SCALARS = ("lr", "momentum", "decay", "coupled", "grad_sign", "keep", "alpha", "eps")
"""The columns of a call's per-range scalars (float64): the update's, then the accumulators'
S <- keep S + alpha sums, and eps."""
CORRECTIONS = ("scale", "offset", "sqrt2_root", "offset_root")
"""The columns of a call's per-range corrections (float64): the scale and offset of
:func:`memplan.optim.extreme._scaled_factors`, and for orders other than 1, 2 and 4, 2^(a/2) and
offset^a 2^(a/2) (a = -1 / (2p); see the module docstring)."""
_LR, _MOMENTUM, _DECAY, _COUPLED, _GRAD_SIGN, _KEEP, _ALPHA, _EPS = range(len(SCALARS))
_SCALE, _OFFSET, _SQRT2_ROOT, _OFFSET_ROOT = range(len(CORRECTIONS))

_TINY = np.float32(np.finfo(np.float32).tiny)


def _build_kernel():
    numba = numba_module()
    pointer = array_pointer()
    carray = numba.carray
    jit = numba.njit(cache=True, nogil=True, error_model="numpy", fastmath={"reassoc"})
    serial_jit = numba.njit(cache=True, nogil=True, error_model="numpy")
    # the run loops are inlined into the item functions (a call per run, with its array views,
    # costs about as much as a short run's elements), and the element functions into the run loops
    run_loop = numba.njit(cache=True, nogil=True, error_model="numpy", fastmath={"reassoc"}, inline="always")
    element = run_loop

    @run_loop
    def run_squares(weights, grads, table_sums, coupled, grad_sign):
        """One run: G^2 added to the table's sums; returns the run's sum. The weights are read
        only for coupled weight decay (this pass reads nothing else)."""
        total = 0.0
        if coupled == 0:
            for i in range(grads.shape[0]):
                square = grads[i] * grads[i]
                table_sums[i] += square
                total += square
            return total
        for i in range(grads.shape[0]):
            gradient = grads[i] * grad_sign + coupled * weights[i]
            square = gradient * gradient
            table_sums[i] += square
            total += square
        return total

    @element
    def reduced_root(table, table_roots, i, outer, outer_root, offset, offset_root):
        """For x = outer * table[i] + offset, of an order other than 1, 2 and 4 (see the module
        docstring; ``outer_root`` and ``offset_root`` are outer^a 2^(a/2) and offset^a 2^(a/2)):
        M^a 2^(a/2), and w = (z - 1) / (z + 1), so that x^a = M^a 2^(a/2) exp(2 a atanh(w))."""
        product = outer * table[i]
        total = product + offset
        above = product > offset
        largest = table.dtype.type(math.sqrt(2.0)) * (product if above else offset)
        return outer_root * table_roots[i] if above else offset_root, (total - largest) / (total + largest)

    # ln z = 2 (w + w^3 / 3 + ...) with |w| <= 0.172, and exp(a ln z) with |a ln z| <= 0.058 (p >= 3):
    # the terms kept leave both under a tenth of an ulp of the working dtype

    @element
    def single_root(table, table_roots, i, outer, outer_root, offset, offset_root, exponent):
        """(outer * table[i] + offset) ^ exponent in fp32 (see :func:`reduced_root`)."""
        kind = table.dtype.type
        base, w = reduced_root(table, table_roots, i, outer, outer_root, offset, offset_root)
        w2 = w * w
        v = exponent * w * (kind(2) + w2 * (kind(2 / 3) + w2 * (kind(2 / 5) + w2 * (kind(2 / 7) + w2 * kind(2 / 9)))))
        return base * (kind(1) + v * (kind(1) + v * (kind(1 / 2) + v * (kind(1 / 6) + v * kind(1 / 24)))))

    @element
    def double_root(table, table_roots, i, outer, outer_root, offset, offset_root, exponent):
        """The same in float64."""
        kind = table.dtype.type
        base, w = reduced_root(table, table_roots, i, outer, outer_root, offset, offset_root)
        w2 = w * w
        v = exponent * w * (kind(2) + w2 * (kind(2 / 3) + w2 * (kind(2 / 5) + w2 * (kind(2 / 7) + w2 * (
            kind(2 / 9) + w2 * (kind(2 / 11) + w2 * (kind(2 / 13) + w2 * (kind(2 / 15) + w2 * (kind(2 / 17) + w2 * kind(
                2 / 19))))))))))
        return base * (kind(1) + v * (kind(1) + v * (kind(1 / 2) + v * (kind(1 / 6) + v * (kind(1 / 24) + v * (
            kind(1 / 120) + v * (kind(1 / 720) + v * (kind(1 / 5040) + v * (kind(1 / 40320) + v * kind(
                1 / 362880))))))))))

    @element
    def plain_step(weights, grads, i, root, scale, lr, decay, coupled, grad_sign):
        weight = weights[i]
        weights[i] = weight * decay - lr * (root * (grads[i] * grad_sign + coupled * weight) * scale)

    @element
    def momentum_step(weights, grads, buffer, i, root, scale, lr, momentum, decay, coupled, grad_sign):
        """``momentum`` has the buffer's dtype: the decayed buffer and the new one are rounded to it,
        and the weights read the rounded buffer, as in the eager step (where they differ, float64
        weights keep an fp32 buffer)."""
        weight = weights[i]
        moving = buffer.dtype.type(buffer[i] * momentum + root * (grads[i] * grad_sign + coupled * weight) * scale)
        buffer[i] = moving
        weights[i] = weight * decay - lr * moving

    @run_loop
    def run_update(weights, grads, buffer, table, table_roots, outer, outer_root, offset, offset_root, exponent,
                   order, scale, lr, momentum, decay, coupled, grad_sign, with_buffer):
        """One run's update (arrays sliced to it), root and step fused: one branch-free loop per
        order (square roots for 1, 2 and 4, as the eager step takes them) and buffer."""
        one = weights.dtype.type(1)
        count = weights.shape[0]
        if order == 1:
            if with_buffer:
                for i in range(count):
                    root = one / np.sqrt(outer * table[i] + offset)
                    momentum_step(weights, grads, buffer, i, root, scale, lr, momentum, decay, coupled, grad_sign)
            else:
                for i in range(count):
                    root = one / np.sqrt(outer * table[i] + offset)
                    plain_step(weights, grads, i, root, scale, lr, decay, coupled, grad_sign)
        elif order == 2:
            if with_buffer:
                for i in range(count):
                    root = one / np.sqrt(np.sqrt(outer * table[i] + offset))
                    momentum_step(weights, grads, buffer, i, root, scale, lr, momentum, decay, coupled, grad_sign)
            else:
                for i in range(count):
                    root = one / np.sqrt(np.sqrt(outer * table[i] + offset))
                    plain_step(weights, grads, i, root, scale, lr, decay, coupled, grad_sign)
        elif order == 4:
            if with_buffer:
                for i in range(count):
                    root = one / np.sqrt(np.sqrt(np.sqrt(outer * table[i] + offset)))
                    momentum_step(weights, grads, buffer, i, root, scale, lr, momentum, decay, coupled, grad_sign)
            else:
                for i in range(count):
                    root = one / np.sqrt(np.sqrt(np.sqrt(outer * table[i] + offset)))
                    plain_step(weights, grads, i, root, scale, lr, decay, coupled, grad_sign)
        elif weights.itemsize == 8:
            if with_buffer:
                for i in range(count):
                    root = double_root(table, table_roots, i, outer, outer_root, offset, offset_root, exponent)
                    momentum_step(weights, grads, buffer, i, root, scale, lr, momentum, decay, coupled, grad_sign)
            else:
                for i in range(count):
                    root = double_root(table, table_roots, i, outer, outer_root, offset, offset_root, exponent)
                    plain_step(weights, grads, i, root, scale, lr, decay, coupled, grad_sign)
        elif with_buffer:
            for i in range(count):
                root = single_root(table, table_roots, i, outer, outer_root, offset, offset_root, exponent)
                momentum_step(weights, grads, buffer, i, root, scale, lr, momentum, decay, coupled, grad_sign)
        else:
            for i in range(count):
                root = single_root(table, table_roots, i, outer, outer_root, offset, offset_root, exponent)
                plain_step(weights, grads, i, root, scale, lr, decay, coupled, grad_sign)

    @serial_jit
    def head_indices(index, dims, head, start, first, tail):
        """The head axes' indices of the run that holds element ``start + first``."""
        run = (start + first) // tail
        for axis in range(head - 1, -1, -1):
            index[axis] = run % dims[axis]
            run //= dims[axis]

    @serial_jit
    def next_run(index, dims, head):
        for axis in range(head - 1, -1, -1):
            index[axis] += 1
            if index[axis] < dims[axis]:
                return
            index[axis] = 0

    @jit
    def spread(table, vectors, dims, offsets, head, axes):
        """The row-major outer product of the trailing axes' ``vectors`` (at their offsets) into
        ``table``, multiplied in its dtype left to right (as a chain of ``torch.outer``)."""
        size = dims[head]
        for i in range(size):
            table[i] = vectors[offsets[head] + i]
        for axis in range(head + 1, axes):
            dim, offset = dims[axis], offsets[axis]
            for i in range(size - 1, -1, -1):   # from the back: entry i is read before anything overwrites it
                value = table[i]
                for j in range(dim):
                    table[i * dim + j] = value * vectors[offset + j]
            size *= dim

    @jit
    def fold(table_sums, sums, dims, offsets, head, axes, tail):
        """Each trailing axis's slice sums of the table (row-major over the trailing axes), added
        to its sums."""
        stride = tail
        for axis in range(head, axes):
            block = stride   # elements per index of the axis before
            stride //= dims[axis]
            for outer in range(0, tail, block):
                for i in range(dims[axis]):
                    first = outer + i * stride
                    total = 0.0
                    for k in range(first, first + stride):
                        total += table_sums[k]
                    sums[offsets[axis] + i] += total

    @jit
    def square_item(weights, grads, table_sums, sums, dims, offsets, index, start, first, stop, head, tail, coupled,
                    grad_sign):
        """Pass 1 over elements ``[first, stop)`` of a range that starts at element ``start`` of
        its index (a function of its own: inside a loop body numba would type the index arithmetic
        as float64, and the loops would not vectorize)."""
        head_indices(index, dims, head, start, first, tail)
        k = first
        while k < stop:
            col0 = (start + k) % tail
            end = min(stop, k + tail - col0)
            col1 = col0 + end - k
            total = run_squares(weights[k:end], grads[k:end], table_sums[col0:col1], coupled, grad_sign)
            for axis in range(head):
                sums[offsets[axis] + index[axis]] += total
            if col1 == tail:
                next_run(index, dims, head)
            k = end

    @jit
    def update_item(weights, grads, buffer, table, table_roots, scaled, axis_roots, dims, offsets, index, start, first,
                    stop, head, tail, order, scale, offset, sqrt2_root, offset_root, lr, momentum, decay, coupled,
                    grad_sign, with_buffer):
        """Pass 2 over elements ``[first, stop)`` of a range (``scaled`` and ``axis_roots`` sliced
        to the range's slices)."""
        general = order != 1 and order != 2 and order != 4
        kind = table.dtype.type
        exponent = kind(-0.5 / order)
        head_indices(index, dims, head, start, first, tail)
        k = first
        while k < stop:
            col0 = (start + k) % tail
            end = min(stop, k + tail - col0)
            col1 = col0 + end - k
            outer = kind(1)
            outer_root = sqrt2_root
            for axis in range(head):
                outer = outer * scaled[offsets[axis] + index[axis]]
                if general:
                    outer_root *= axis_roots[offsets[axis] + index[axis]]
            run_update(weights[k:end], grads[k:end], buffer[k:end] if with_buffer else buffer, table[col0:col1],
                       table_roots[col0:col1], outer, kind(outer_root), offset, offset_root, exponent, order, scale,
                       lr, momentum, decay, coupled, grad_sign, with_buffer)
            if col1 == tail:
                next_run(index, dims, head)
            k = end

    @serial_jit
    def square_walk(ranges, axis_table, addresses, scalars, items, bounds, partial, weight_type, scratch, low, high):
        """Pass 1 over the items of threads ``low`` to ``high``; each thread's slice sums go to its
        row of ``partial`` (zeroed here, per range: a thread meets a range in one item at most)."""
        table_sums = np.empty(scratch[0])
        index = np.zeros(scratch[1], dtype=np.int64)
        for thread in range(low, high):
            for position in range(bounds[thread], bounds[thread + 1]):
                at = items[position, 0]
                start, length, first_axis, axes, head, tail, slot, width = ranges[at]
                dims = axis_table[first_axis:first_axis + axes, 0]
                offsets = axis_table[first_axis:first_axis + axes, 1]
                sums = partial[thread, slot:slot + width]
                sums[:] = 0.0
                table_sums[:tail] = 0.0
                weights = carray(pointer(addresses[at, 0], weight_type), (length,))
                grads = carray(pointer(addresses[at, 1], weight_type), (length,))
                square_item(weights, grads, table_sums, sums, dims, offsets, index, start, items[position, 1],
                            items[position, 2], head, tail, weight_type(scalars[at, _COUPLED]),
                            weight_type(scalars[at, _GRAD_SIGN]))
                fold(table_sums, sums, dims, offsets, head, axes, tail)

    @serial_jit
    def update_walk(ranges, axis_table, addresses, scalars, corrections, scaled, axis_roots, items, bounds,
                    weight_type, scratch, low, high):
        """Pass 2 over the items of threads ``low`` to ``high``, from the ranges' scaled
        accumulators (and, for orders other than 1, 2 and 4, their roots) in ``scaled`` and
        ``axis_roots``."""
        table = np.empty(scratch[0], dtype=scaled.dtype)
        table_roots = np.empty(scratch[0], dtype=scaled.dtype)
        root_products = np.empty(scratch[0])
        index = np.zeros(scratch[1], dtype=np.int64)
        for thread in range(low, high):
            for position in range(bounds[thread], bounds[thread + 1]):
                at = items[position, 0]
                start, length, first_axis, axes, head, tail, slot, width = ranges[at]
                dims = axis_table[first_axis:first_axis + axes, 0]
                offsets = axis_table[first_axis:first_axis + axes, 1]
                range_scaled = scaled[slot:slot + width]
                range_roots = axis_roots[slot:slot + width]
                spread(table, range_scaled, dims, offsets, head, axes)
                if axes != 1 and axes != 2 and axes != 4:
                    # the roots' products in float64, rounded once
                    spread(root_products, range_roots, dims, offsets, head, axes)
                    for i in range(tail):
                        table_roots[i] = root_products[i]
                weights = carray(pointer(addresses[at, 0], weight_type), (length,))
                grads = carray(pointer(addresses[at, 1], weight_type), (length,))
                with_buffer = addresses[at, 2] != 0
                buffer = carray(pointer(addresses[at, 2], np.float32), (length if with_buffer else 0,))
                values, correction = scalars[at], corrections[at]
                update_item(weights, grads, buffer, table, table_roots, range_scaled, range_roots, dims, offsets,
                            index, start, items[position, 1], items[position, 2], head, tail, axes,
                            weight_type(correction[_SCALE]), weight_type(correction[_OFFSET]),
                            correction[_SQRT2_ROOT], weight_type(correction[_OFFSET_ROOT]),
                            weight_type(values[_LR]), np.float32(values[_MOMENTUM]), weight_type(values[_DECAY]),
                            weight_type(values[_COUPLED]), weight_type(values[_GRAD_SIGN]), with_buffer)

    @serial_jit
    def prepare_roots(ranges, axis_table, scaled, axis_roots, corrections):
        """For each range of an order p other than 1, 2 and 4, with a = -1 / (2p): its scaled
        accumulators to the power a (float64, from their working-dtype values), 2^(a/2), and
        offset^a 2^(a/2) (the offset as the working dtype holds it)."""
        for at in range(ranges.shape[0]):
            axes, slot, width = ranges[at, 3], ranges[at, 6], ranges[at, 7]
            if axes == 1 or axes == 2 or axes == 4:
                continue
            exponent = -0.5 / axes
            for i in range(slot, slot + width):
                axis_roots[i] = np.exp(np.log(np.float64(scaled[i])) * exponent)
            sqrt2_root = np.exp(np.log(2.0) * exponent * 0.5)
            offset = np.float64(scaled.dtype.type(corrections[at, _OFFSET]))
            corrections[at, _SQRT2_ROOT] = sqrt2_root
            corrections[at, _OFFSET_ROOT] = np.exp(np.log(offset) * exponent) * sqrt2_root

    @serial_jit
    def finish_sums(ranges, axis_table, axis_addresses, scalars, touched, partial, what, output_type, scaled,
                    axis_roots, corrections):
        """Each range's slice sums, combined over the threads that touched it in thread order: added
        to its output vectors (ADD_SUMS), or (STORE_ACCUMULATORS) folded into its fp32
        accumulators, S <- keep S + alpha sums, which are then scaled for pass 2 as
        :func:`memplan.optim.extreme._scaled_factors` does, in fp32 (into ``scaled`` and
        ``corrections``, with their roots: :func:`prepare_roots`)."""
        totals = np.zeros(partial.shape[1])
        for at in range(ranges.shape[0]):
            first_axis, axes, slot, width = ranges[at, 2], ranges[at, 3], ranges[at, 6], ranges[at, 7]
            sums = totals[slot:slot + width]
            sums[:] = 0.0
            if touched[at, 0] >= 0:
                for thread in range(touched[at, 0], touched[at, 1] + 1):
                    for i in range(width):
                        sums[i] += partial[thread, slot + i]
            if what == ADD_SUMS:
                for axis in range(first_axis, first_axis + axes):
                    dim, offset = axis_table[axis, 0], axis_table[axis, 1]
                    out = carray(pointer(axis_addresses[axis], output_type), (dim,))
                    for i in range(dim):
                        out[i] += output_type(sums[offset + i])
                continue
            keep, alpha = np.float32(scalars[at, _KEEP]), np.float32(scalars[at, _ALPHA])
            log_scale = np.float32(0)
            for axis in range(first_axis, first_axis + axes):
                dim, offset = axis_table[axis, 0], axis_table[axis, 1]
                accumulator = carray(pointer(axis_addresses[axis], np.float32), (dim,))
                maximum = np.float32(1)
                for i in range(dim):
                    # decayed in fp32, then this step's sums added as torch's fused multiply-add does
                    decayed = accumulator[i] * keep
                    step_sum = np.float64(np.float32(sums[offset + i]))
                    value = np.float32(np.float64(decayed) + np.float64(alpha) * step_sum)
                    accumulator[i] = value
                    maximum = max(maximum, value)
                for i in range(dim):
                    scaled[slot + offset + i] = accumulator[i] / maximum
                log_scale += np.log(maximum)
            corrections[at, _SCALE] = np.exp(np.float32(-0.5 / axes) * log_scale)
            corrections[at, _OFFSET] = max(np.float32(scalars[at, _EPS]) * np.exp(-log_scale), _TINY)
        if what == STORE_ACCUMULATORS:
            prepare_roots(ranges, axis_table, scaled, axis_roots, corrections)

    return square_walk, finish_sums, prepare_roots, update_walk


@cache
def _kernel():
    """The compiled kernels, built (or read from numba's cache) on first use."""
    return _build_kernel()


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
    dtype = tensors[0].weights.dtype
    if dtype not in (torch.float32, torch.float64):
        raise ValueError(f"et_many steps fp32 or float64 tensors, not {dtype}")
    if any(tensor.weights.dtype != dtype or tensor.grads.dtype != dtype for tensor in tensors):
        raise ValueError("et_many: every tensor's weights and gradients must share the first tensor's dtype")
    addresses = np.array([(tensor.weights.data_ptr(), tensor.grads.data_ptr(),
                           0 if tensor.buffer is None else tensor.buffer.data_ptr()) for tensor in tensors],
                         dtype=np.int64).reshape(-1, 3)
    axis_addresses = np.array([accumulator.data_ptr() for tensor in tensors for accumulator in tensor.accumulators],
                              dtype=np.int64)
    scalars = np.array([_scalar_row(tensor.scalars, tensor.beta2, tensor.eps) for tensor in tensors],
                       dtype=np.float64)
    layouts = tuple((0, tensor.weights.numel(), tuple(tensor.index)) for tensor in tensors)
    weight_type = _numpy_type(dtype)
    scaled, axis_roots, corrections = _square_sums(addresses, layouts, axis_addresses, scalars, weight_type,
                                                   np.float32, STORE_ACCUMULATORS)
    _update(addresses, layouts, scalars, corrections, scaled, axis_roots, weight_type)


def _square_sums(addresses: np.ndarray, layouts: tuple[tuple[int, int, tuple[int, ...]], ...],
                 axis_addresses: np.ndarray, scalars: np.ndarray, weight_type, output_type,
                 what: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Pass 1 over the ranges ``layouts`` (start, length, index) in one kernel call, then the
    serial combination of the sums; returns the scaled accumulators, their roots and the
    corrections that pass 2 reads (filled for STORE_ACCUMULATORS only)."""
    ranges, axis_table, scratch = _tables(layouts, TAIL_ELEMENTS)
    lengths = tuple(length for _, length, _ in layouts)
    threads = kernel_threads(sum(lengths))
    items, bounds, touched = split_work(lengths, threads)
    partial = np.empty((threads, int(ranges[-1, 6] + ranges[-1, 7])), dtype=np.float64)
    square_walk, finish_sums, _, _ = _kernel()
    arguments = (ranges, axis_table, addresses, scalars, items, bounds, partial, weight_type, scratch)
    run_in_threads(lambda low, high: square_walk(*arguments, low, high), threads)
    storing = what == STORE_ACCUMULATORS
    scaled = np.empty(partial.shape[1] if storing else 0, dtype=weight_type)
    axis_roots = np.empty(scaled.shape[0], dtype=np.float64)
    corrections = np.zeros((len(layouts) if storing else 0, len(CORRECTIONS)), dtype=np.float64)
    finish_sums(ranges, axis_table, axis_addresses, scalars, touched, partial, what, output_type, scaled, axis_roots,
                corrections)
    return scaled, axis_roots, corrections


def _update(addresses: np.ndarray, layouts: tuple[tuple[int, int, tuple[int, ...]], ...], scalars: np.ndarray,
            corrections: np.ndarray, scaled: np.ndarray, axis_roots: np.ndarray, weight_type) -> None:
    """Pass 2 over the ranges ``layouts`` in one kernel call."""
    ranges, axis_table, scratch = _tables(layouts, TAIL_ELEMENTS)
    lengths = tuple(length for _, length, _ in layouts)
    threads = kernel_threads(sum(lengths))
    items, bounds, _ = split_work(lengths, threads)
    _, _, _, update_walk = _kernel()
    arguments = (ranges, axis_table, addresses, scalars, corrections, scaled, axis_roots, items, bounds, weight_type,
                 scratch)
    run_in_threads(lambda low, high: update_walk(*arguments, low, high), threads)


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


__all__ = ["ETScalars", "ETTensor", "et_many", "et_square_sums_range", "et_update_range", "scale_range",
           "squared_norm_range"]
