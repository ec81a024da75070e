"""The numba kernels of :mod:`memplan.kernels.sm3_cpu` (the step, and how a call walks its ranges,
are described there), imported by it on first use. Module-level functions, so that numba's cache
serves them to a new process (see :mod:`memplan.kernels.jit`).
"""

from __future__ import annotations

import numpy as np

from memplan.kernels.jit import numba_module
from memplan.kernels.numba_pointer import array_pointer, float_bits
from memplan.kernels.sm3_tables import SM3_I, SQUARE_MAXIMA, STORE_MAXIMA

numba = numba_module()
carray = numba.carray

FAST_MATH = {"reassoc", "arcp", "afn"}
"""LLVM's freedoms in these kernels: reassociation (so that reductions vectorize), and reciprocals and
approximate functions, under which ``1 / sqrt(x)`` becomes a reciprocal square root estimate refined
by a Newton step (x86: ``vrsqrt14ps``) instead of a square root and a division, both of which
occupy the divider: SM3's step on ResNet-50 went from 21.3 to 18.7 ms on one thread. The root is
then within 1.3 ulp of exact in fp32 (1.5e-7 relative, the largest over 10^7 values from 1e-30
to 1e30), not 0.5; float64 keeps its square root and division (within 0.75 ulp). Inlined loops
take their caller's flags, so every kernel here has the same ones."""

_jit = numba.njit(cache=True, nogil=True, error_model="numpy", fastmath=FAST_MATH)
# the run loops are inlined into ``item`` (a call per run, with its array views, costs about as
# much as a short run's elements)
_run_loop = numba.njit(cache=True, nogil=True, error_model="numpy", fastmath=FAST_MATH, inline="always")


@_run_loop
def largest(values):
    """The largest of non-negative ``values`` (0 for none), in eight independent maxima: one
    running maximum is a chain of dependent compares that LLVM does not vectorize."""
    zero = values.dtype.type(0)
    m0 = m1 = m2 = m3 = m4 = m5 = m6 = m7 = zero
    whole = values.shape[0] - values.shape[0] % 8
    for i in range(0, whole, 8):
        m0 = max(m0, values[i])
        m1 = max(m1, values[i + 1])
        m2 = max(m2, values[i + 2])
        m3 = max(m3, values[i + 3])
        m4 = max(m4, values[i + 4])
        m5 = max(m5, values[i + 5])
        m6 = max(m6, values[i + 6])
        m7 = max(m7, values[i + 7])
    result = max(max(max(m0, m1), max(m2, m3)), max(max(m4, m5), max(m6, m7)))
    for i in range(whole, values.shape[0]):
        result = max(result, values[i])
    return result


@_run_loop
def run_update(weights, grads, buffer, table, table_max, base, with_maxima, lr, eps, momentum, dampening, decay,
               coupled, grad_sign, with_buffer):
    """One run (arrays sliced to it). SM3-II (``with_maxima``): nu adds G^2, its maxima go into
    ``table_max`` and the run's is returned, both as the bits of the floats (:func:`float_bits`:
    nu >= +0.0, and the integers' maxima vectorize: 0.68 -> 0.38 ns an element on one core, where
    the float maxima needed a scratch copy of nu and a second pass); SM3-I: nu is the minimum alone
    (returns 0). One branch-free loop per case, so LLVM vectorizes it."""
    one = weights.dtype.type(1)
    top = table_max.dtype.type(0)
    if with_maxima and with_buffer:
        for i in range(weights.shape[0]):
            weight = weights[i]
            gradient = grads[i] * grad_sign + coupled * weight
            nu = min(base, table[i]) + gradient * gradient
            bits = float_bits(nu)
            table_max[i] = max(table_max[i], bits)
            top = max(top, bits)
            # as the eager step: the product in the buffer's dtype, the weight from the stored buffer
            moving = buffer.dtype.type(buffer[i] * momentum + dampening * (gradient * (one / np.sqrt(nu + eps))))
            buffer[i] = moving
            weights[i] = weight * decay - lr * moving
    elif with_maxima:
        for i in range(weights.shape[0]):
            weight = weights[i]
            gradient = grads[i] * grad_sign + coupled * weight
            nu = min(base, table[i]) + gradient * gradient
            bits = float_bits(nu)
            table_max[i] = max(table_max[i], bits)
            top = max(top, bits)
            weights[i] = weight * decay - lr * (gradient * (one / np.sqrt(nu + eps)))
    elif with_buffer:
        for i in range(weights.shape[0]):
            weight = weights[i]
            gradient = grads[i] * grad_sign + coupled * weight
            moving = buffer.dtype.type(buffer[i] * momentum
                                       + dampening * (gradient * (one / np.sqrt(min(base, table[i]) + eps))))
            buffer[i] = moving
            weights[i] = weight * decay - lr * moving
    else:
        for i in range(weights.shape[0]):
            weight = weights[i]
            gradient = grads[i] * grad_sign + coupled * weight
            weights[i] = weight * decay - lr * (gradient * (one / np.sqrt(min(base, table[i]) + eps)))
    return top


@_run_loop
def pair_nu(weights, grads, other_weights, other_grads, table, table_max, i, base, other_base, coupled, grad_sign):
    """Element i of two runs of the same columns (:func:`pair_update`): each run's weight, G and nu,
    and nu's bits (see :func:`run_update`), whose maximum goes into ``table_max[i]``."""
    minimum = table[i]
    weight = weights[i]
    gradient = grads[i] * grad_sign + coupled * weight
    nu = min(base, minimum) + gradient * gradient
    other_weight = other_weights[i]
    other_gradient = other_grads[i] * grad_sign + coupled * other_weight
    other_nu = min(other_base, minimum) + other_gradient * other_gradient
    bits = float_bits(nu)
    other_bits = float_bits(other_nu)
    table_max[i] = max(table_max[i], max(bits, other_bits))
    return weight, gradient, nu, bits, other_weight, other_gradient, other_nu, other_bits


@_run_loop
def pair_update(weights, grads, other_weights, other_grads, table, table_max, base, other_base, lr, eps, decay,
                coupled, grad_sign):
    """SM3-II without momentum on two runs of the same columns at once (:func:`item`'s halves):
    four streams read where one run reads two, and each table entry's maximum updated once for
    both; returns both runs' maxima (as bits, as :func:`run_update`)."""
    one = weights.dtype.type(1)
    top = table_max.dtype.type(0)
    other_top = table_max.dtype.type(0)
    for i in range(weights.shape[0]):
        weight, gradient, nu, bits, other_weight, other_gradient, other_nu, other_bits = pair_nu(
            weights, grads, other_weights, other_grads, table, table_max, i, base, other_base, coupled, grad_sign)
        top = max(top, bits)
        other_top = max(other_top, other_bits)
        weights[i] = weight * decay - lr * (gradient * (one / np.sqrt(nu + eps)))
        other_weights[i] = other_weight * decay - lr * (other_gradient * (one / np.sqrt(other_nu + eps)))
    return top, other_top


@_run_loop
def pair_update_with_buffer(weights, grads, buffer, other_weights, other_grads, other_buffer, table, table_max, base,
                            other_base, lr, eps, momentum, dampening, decay, coupled, grad_sign):
    """:func:`pair_update` with momentum (each buffer's values as :func:`run_update` computes them)."""
    one = weights.dtype.type(1)
    top = table_max.dtype.type(0)
    other_top = table_max.dtype.type(0)
    for i in range(weights.shape[0]):
        weight, gradient, nu, bits, other_weight, other_gradient, other_nu, other_bits = pair_nu(
            weights, grads, other_weights, other_grads, table, table_max, i, base, other_base, coupled, grad_sign)
        top = max(top, bits)
        other_top = max(other_top, other_bits)
        moving = buffer.dtype.type(buffer[i] * momentum + dampening * (gradient * (one / np.sqrt(nu + eps))))
        other_moving = buffer.dtype.type(other_buffer[i] * momentum
                                         + dampening * (other_gradient * (one / np.sqrt(other_nu + eps))))
        buffer[i] = moving
        other_buffer[i] = other_moving
        weights[i] = weight * decay - lr * moving
        other_weights[i] = other_weight * decay - lr * other_moving
    return top, other_top


@_run_loop
def run_square_max(weights, grads, table_max, coupled, grad_sign):
    """SM3-I's first pass on one run: the maxima of G^2 into ``table_max``; returns the run's (both
    as bits, as :func:`run_update`)."""
    top = table_max.dtype.type(0)
    for i in range(weights.shape[0]):
        gradient = grads[i] * grad_sign + coupled * weights[i]
        bits = float_bits(gradient * gradient)
        table_max[i] = max(table_max[i], bits)
        top = max(top, bits)
    return top


@_run_loop
def bounded(out, values, bound):
    for i in range(out.shape[0]):
        out[i] = min(bound, values[i])


@_run_loop
def merge(out, values, store):
    """``out`` <- ``values`` (``store``) or their maximum with ``out``, in ``out``'s dtype; a NaN in
    either is the maximum, as in torch's (``max`` keeps its first argument when the second is NaN)."""
    if store:
        for i in range(out.shape[0]):
            out[i] = values[i]
    else:
        for i in range(out.shape[0]):
            current, value = out[i], out.dtype.type(values[i])
            out[i] = current if current >= value or current != current else value


@_jit
def fill_head(head_values, axis_addresses, dims, offsets, first_axis, head, accumulator_type):
    """The head axes' accumulators, in the working dtype, at their offsets in ``head_values``."""
    for axis in range(head):
        accumulator = carray(array_pointer(axis_addresses[first_axis + axis, 0], accumulator_type), (dims[axis],))
        values = head_values[offsets[axis]:offsets[axis] + dims[axis]]
        for i in range(dims[axis]):
            values[i] = accumulator[i]


@_jit
def fill_table(table, axis_addresses, dims, first_axis, head, axes, accumulator_type):
    """The minima of the trailing axes' accumulators over their row-major product, in the
    working dtype: the last axis's, then each axis before it spread over the table so far."""
    last = dims[axes - 1]
    accumulator = carray(array_pointer(axis_addresses[first_axis + axes - 1, 0], accumulator_type), (last,))
    for i in range(last):
        table[i] = accumulator[i]
    size = last
    for axis in range(axes - 2, head - 1, -1):
        accumulator = carray(array_pointer(axis_addresses[first_axis + axis, 0], accumulator_type), (dims[axis],))
        for i in range(dims[axis] - 1, -1, -1):   # block 0 last: the blocks above read it
            bounded(table[i * size:(i + 1) * size], table[:size], table.dtype.type(accumulator[i]))
        size *= dims[axis]


@_jit
def fold_table(table_max, maxima, dims, offsets, head, axes, tail):
    """Each trailing axis's maxima max-combined with the table's, over the other trailing axes."""
    stride = tail
    for axis in range(head, axes):
        block = stride   # elements per index of the axis before
        stride //= dims[axis]
        out = maxima[offsets[axis]:offsets[axis] + dims[axis]]
        for outer in range(0, tail, block):
            if stride == 1:
                merge(out, table_max[outer:outer + block], False)
                continue
            for i in range(dims[axis]):
                first = outer + i * stride
                out[i] = max(out[i], largest(table_max[first:first + stride]))


@_run_loop
def head_base(head_values, offsets, index, head):
    """The smallest of the head axes' accumulators at a run's head ``index`` (infinity for none)."""
    base = head_values.dtype.type(np.inf)
    for axis in range(head):
        base = min(base, head_values[offsets[axis] + index[axis]])
    return base


@_run_loop
def head_index(index, dims, head, run):
    """The head axes' indices of run ``run``."""
    for axis in range(head - 1, -1, -1):
        index[axis] = run % dims[axis]
        run //= dims[axis]


@_run_loop
def next_run(index, dims, head):
    """The next run's head indices."""
    for axis in range(head - 1, -1, -1):
        index[axis] += 1
        if index[axis] < dims[axis]:
            break
        index[axis] = 0


@_run_loop
def raise_maxima(maxima, offsets, index, head, run_max):
    """A run's maximum into its head slices' maxima."""
    for axis in range(head):
        slot = offsets[axis] + index[axis]
        maxima[slot] = max(maxima[slot], run_max)


PAIR_MIN_RUNS = 8
"""The whole runs each half of an item needs before :func:`item` steps its halves together."""


@_jit
def item(weights, grads, buffer, table, table_max, head_values, maxima, dims, offsets, index, other_index, start,
         first, stop, head, tail, mode, lr, eps, momentum, dampening, decay, coupled, grad_sign, with_buffer):
    """Elements ``[first, stop)`` of a range that starts at element ``start`` of its view, run by
    run (a function of its own: inside a loop body numba would type the index arithmetic as
    float64, and the loops would not vectorize). ``table`` and ``table_max`` hold one entry per
    element of a run; ``table_max`` and ``maxima`` hold the bits of the maxima (see
    :func:`run_update`). SM3-II steps the whole runs of an item with :data:`PAIR_MIN_RUNS` in each
    half a run from each half at a time (:func:`pair_update`)."""
    with_maxima = mode != SM3_I
    aligned = min(stop, first + (tail - (start + first) % tail) % tail)   # the first whole run's start
    half = (stop - aligned) // tail // 2 * tail
    paired = mode != SM3_I and mode != SQUARE_MAXIMA and half >= PAIR_MIN_RUNS * tail
    head_index(index, dims, head, (start + first) // tail)
    k = first
    while k < stop:
        if paired and k == aligned:
            head_index(other_index, dims, head, (start + aligned + half) // tail)
            for k in range(aligned, aligned + half, tail):
                base = head_base(head_values, offsets, index, head)
                other_base = head_base(head_values, offsets, other_index, head)
                other = k + half
                if with_buffer:
                    run_max, other_max = pair_update_with_buffer(
                        weights[k:k + tail], grads[k:k + tail], buffer[k:k + tail], weights[other:other + tail],
                        grads[other:other + tail], buffer[other:other + tail], table[:tail], table_max[:tail], base,
                        other_base, lr, eps, momentum, dampening, decay, coupled, grad_sign)
                else:
                    run_max, other_max = pair_update(
                        weights[k:k + tail], grads[k:k + tail], weights[other:other + tail], grads[other:other + tail],
                        table[:tail], table_max[:tail], base, other_base, lr, eps, decay, coupled, grad_sign)
                raise_maxima(maxima, offsets, index, head, run_max)
                raise_maxima(maxima, offsets, other_index, head, other_max)
                next_run(index, dims, head)
                next_run(other_index, dims, head)
            k = aligned + 2 * half
            head_index(index, dims, head, (start + k) // tail)
            continue
        col0 = (start + k) % tail
        end = min(stop, k + tail - col0)
        col1 = col0 + end - k
        base = head_base(head_values, offsets, index, head)
        if mode == SQUARE_MAXIMA:
            run_max = run_square_max(weights[k:end], grads[k:end], table_max[col0:col1], coupled, grad_sign)
        else:
            run_max = run_update(weights[k:end], grads[k:end], buffer[k:end] if with_buffer else buffer,
                                 table[col0:col1], table_max[col0:col1], base, with_maxima, lr, eps, momentum,
                                 dampening, decay, coupled, grad_sign, with_buffer)
        if with_maxima:
            raise_maxima(maxima, offsets, index, head, run_max)
        if col1 == tail:
            next_run(index, dims, head)
        k = end


@numba.njit(cache=True, nogil=True, error_model="numpy")
def walk(ranges, axis_table, addresses, axis_addresses, scalars, items, bounds, origins, partial, mode, weights_like,
         bits_like, accumulators_like, scratch, low, high):
    """The items of pieces ``low`` to ``high``; each piece's maxima go to its own vectors in
    ``partial``, from ``origins[piece]`` (see :func:`memplan.kernels.jit.piece_origins`; zeroed
    here, per range, where the piece first meets it), written as their bits (``bits_type``, the
    unsigned integer of the weights' width; see :func:`run_update`), so that ``partial`` holds the
    floats themselves.

    A tail of one axis reads that axis's accumulator as the table and keeps the maxima of nu
    in the piece's partial vector for it; a merged tail builds the table (at most
    :data:`~memplan.kernels.sm3_cpu.TAIL_ELEMENTS` entries) and folds its maxima into each
    trailing axis's after the item."""
    weight_type = weights_like.dtype.type
    bits_type = bits_like.dtype.type
    accumulator_type = accumulators_like.dtype.type
    table = np.empty(scratch[0], dtype=partial.dtype)
    table_max = np.empty(scratch[0], dtype=bits_type)
    head_values = np.empty(scratch[1], dtype=partial.dtype)
    index = np.zeros(scratch[2], dtype=np.int64)
    other_index = np.zeros(scratch[2], dtype=np.int64)
    partial_bits = partial.view(bits_type)
    for piece in range(low, high):
        previous = -1
        for position in range(bounds[piece], bounds[piece + 1]):
            at = items[position, 0]
            start, length, first_axis, axes, head, tail, slot, width = ranges[at]
            dims = axis_table[first_axis:first_axis + axes, 0]
            offsets = axis_table[first_axis:first_axis + axes, 1]
            maxima = partial_bits[origins[piece] + slot:origins[piece] + slot + width]
            if at != previous:
                maxima[:] = 0
                previous = at
            weights = carray(array_pointer(addresses[at, 0], weight_type), (length,))
            grads = carray(array_pointer(addresses[at, 1], weight_type), (length,))
            with_buffer = addresses[at, 2] != 0
            buffer = carray(array_pointer(addresses[at, 2], np.float32), (length if with_buffer else 0,))
            if mode != SQUARE_MAXIMA:
                fill_head(head_values, axis_addresses, dims, offsets, first_axis, head, accumulator_type)
            values = scalars[at]
            lr, eps, momentum, dampening = (weight_type(values[0]), weight_type(values[1]),
                                            np.float32(values[2]), weight_type(values[3]))
            decay, coupled, grad_sign = weight_type(values[4]), weight_type(values[5]), weight_type(values[6])
            if axes - head == 1:
                last = carray(array_pointer(axis_addresses[first_axis + axes - 1, 0], accumulator_type), (tail,))
                item(weights, grads, buffer, last, maxima[offsets[axes - 1]:offsets[axes - 1] + tail],
                     head_values, maxima, dims, offsets, index, other_index, start, items[position, 1],
                     items[position, 2], head, tail, mode, lr, eps, momentum, dampening, decay, coupled, grad_sign,
                     with_buffer)
                continue
            if mode != SQUARE_MAXIMA:
                fill_table(table, axis_addresses, dims, first_axis, head, axes, accumulator_type)
            if mode != SM3_I:
                table_max[:tail] = 0
            item(weights, grads, buffer, table, table_max, head_values, maxima, dims, offsets, index, other_index,
                 start, items[position, 1], items[position, 2], head, tail, mode, lr, eps, momentum, dampening, decay,
                 coupled, grad_sign, with_buffer)
            if mode != SM3_I:
                fold_table(table_max, maxima, dims, offsets, head, axes, tail)


@numba.njit(cache=True, nogil=True, error_model="numpy", fastmath=FAST_MATH)
def combine(ranges, axis_table, axis_addresses, touched, origins, partial, what, outputs_like):
    """Each range's maxima, over the pieces that touched it (into the first one's vectors; 0 where
    none did), max-combined into its output vectors (ADD_MAXIMA) or stored there (STORE_MAXIMA)."""
    output_type = outputs_like.dtype.type
    for at in range(ranges.shape[0]):
        first_axis, axes, slot, width = ranges[at, 2], ranges[at, 3], ranges[at, 6], ranges[at, 7]
        low, high = touched[at, 0], touched[at, 1]
        if low < 0:   # an empty range: no piece holds its maxima
            totals = np.zeros(width, dtype=partial.dtype)
        else:
            totals = partial[origins[low] + slot:origins[low] + slot + width]
            for piece in range(low + 1, high + 1):
                merge(totals, partial[origins[piece] + slot:origins[piece] + slot + width], False)
        for axis in range(first_axis, first_axis + axes):
            dim, offset = axis_table[axis, 0], axis_table[axis, 1]
            merge(carray(array_pointer(axis_addresses[axis, 1], output_type), (dim,)), totals[offset:offset + dim],
                  what == STORE_MAXIMA)


__all__ = ["combine", "walk"]
