"""The numba kernels of :mod:`memplan.kernels.extreme_cpu` (the passes, and how a call walks its
ranges, are described there), imported by it on first use. Module-level functions, so that numba's
cache serves them to a new process (see :mod:`memplan.kernels.jit`).
"""

from __future__ import annotations

import math

import numpy as np

from memplan.kernels.extreme_tables import ADD_SUMS, CORRECTIONS, INFINITY_SCALARS, SCALARS, STORE_ACCUMULATORS
from memplan.kernels.jit import numba_module
from memplan.kernels.numba_pointer import array_pointer

numba = numba_module()
carray = numba.carray

_LR, _MOMENTUM, _DECAY, _COUPLED, _GRAD_SIGN, _KEEP, _ALPHA, _EPS = range(len(SCALARS))
_SCALE, _OFFSET, _SQRT2_ROOT, _OFFSET_ROOT = range(len(CORRECTIONS))
_INF_LR, _INF_DECAY, _INF_COUPLED, _INF_GRAD_SIGN, _INF_KEEP, _INF_ALPHA, _INF_EPS = range(len(INFINITY_SCALARS))

_TINY = np.float32(np.finfo(np.float32).tiny)

FAST_MATH = {"reassoc", "arcp", "afn"}
"""As :data:`memplan.kernels.sm3_numba.FAST_MATH` (a literal here too: numba checks only a kernel's
own file for changes): the roots of orders 1, 2 and 4 end in ``1 / sqrt``, which becomes a
reciprocal square root estimate and a Newton step (ET2's step on ResNet-50: 25.6 to 21.2 ms on
one thread)."""

_jit = numba.njit(cache=True, nogil=True, error_model="numpy", fastmath=FAST_MATH)
_serial_jit = numba.njit(cache=True, nogil=True, error_model="numpy")
# the run loops are inlined into the item functions (a call per run, with its array views,
# costs about as much as a short run's elements), and the element functions into the run loops
_run_loop = numba.njit(cache=True, nogil=True, error_model="numpy", fastmath=FAST_MATH, inline="always")
_element = _run_loop


@_run_loop
def run_squares(weights, grads, table_sums, coupled, grad_sign):
    """One run, or a chunk of one: G^2 added to the table's sums; returns their sum, added up in
    the table's dtype (the float64 sums, or a block's fp32 ones: :data:`BLOCK_RUNS`). The weights
    are read only for coupled weight decay (this pass reads nothing else)."""
    total = table_sums.dtype.type(0)
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


@_run_loop
def four_run_squares(first, second, third, fourth, table_sums):
    """The same entries of four whole runs at once (every array sliced to them; the gradients
    alone, no coupled decay): each entry's four squares added to the table's sums in one step;
    returns each run's sum over them."""
    zero = table_sums.dtype.type(0)
    a_sum, b_sum, c_sum, d_sum = zero, zero, zero, zero
    for i in range(table_sums.shape[0]):
        a = first[i] * first[i]
        b = second[i] * second[i]
        c = third[i] * third[i]
        d = fourth[i] * fourth[i]
        table_sums[i] += (a + b) + (c + d)
        a_sum += a
        b_sum += b
        c_sum += c
        d_sum += d
    return a_sum, b_sum, c_sum, d_sum


@_run_loop
def flush_block(table_sums, block_sums):
    """The block's fp32 table sums added to the float64 ones, and zeroed."""
    for i in range(block_sums.shape[0]):
        table_sums[i] += block_sums[i]
        block_sums[i] = 0


BLOCK_RUNS, CHUNK = 16, 1024
"""Pass 1 with fp32 weights adds each table entry's squares in fp32 over at most ``BLOCK_RUNS``
runs before it adds them to the float64 sums, and a run's squares in fp32 over at most ``CHUNK``
elements (spread over the vector lanes) before float64. An entry then adds at most 16 squares in
fp32: a relative error of 16 ulp (1e-6) at worst. Per element, the float64 sums had cost a
conversion and a float64 read and write: ET2's pass 1 over the GPT-2-like set on one thread took
19 ms, now 15 (torch.sum over the same gradients: 10-11). With two threads both reach torch.sum's
rate, which the memory then bounds (benchmarks/RESULTS.md)."""


@_element
def reduced_root(table, table_roots, i, outer, outer_root, offset, offset_root):
    """For x = outer * table[i] + offset, of an order other than 1, 2 and 4 (see
    :mod:`memplan.kernels.extreme_cpu`; ``outer_root`` and ``offset_root`` are outer^a 2^(a/2) and
    offset^a 2^(a/2)): M^a 2^(a/2), and w = (z - 1) / (z + 1), so that x^a = M^a 2^(a/2) exp(2 a atanh(w))."""
    product = outer * table[i]
    total = product + offset
    above = product > offset
    largest = table.dtype.type(math.sqrt(2.0)) * (product if above else offset)
    return outer_root * table_roots[i] if above else offset_root, (total - largest) / (total + largest)


# ln z = 2 (w + w^3 / 3 + ...) with |w| <= 0.172, and exp(a ln z) with |a ln z| <= 0.058 (p >= 3):
# the terms kept leave both under a tenth of an ulp of the working dtype

@_element
def single_root(table, table_roots, i, outer, outer_root, offset, offset_root, exponent):
    """(outer * table[i] + offset) ^ exponent in fp32 (see :func:`reduced_root`)."""
    kind = table.dtype.type
    base, w = reduced_root(table, table_roots, i, outer, outer_root, offset, offset_root)
    w2 = w * w
    v = exponent * w * (kind(2) + w2 * (kind(2 / 3) + w2 * (kind(2 / 5) + w2 * (kind(2 / 7) + w2 * kind(2 / 9)))))
    return base * (kind(1) + v * (kind(1) + v * (kind(1 / 2) + v * (kind(1 / 6) + v * kind(1 / 24)))))


@_element
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


NEAR, NEAR_DOUBLE = 2.0 ** -10, 2.0 ** -20
"""The largest offset, relative to a run's products, for which :func:`near_power` takes a root,
for fp32 and for float64 weights: the series' first neglected term, |a(a - 1)(a - 2)| / 6 e^3 with
|a| <= 1/6, is then below 1e-10 (a sixtieth of an fp32 ulp) and 1e-19 (a thousandth of a float64
ulp)."""


@_element
def near_power(table_roots, table_inverse, i, head_root, ratio, exponent):
    """(outer * table[i] + offset) ^ exponent where the offset is small beside the product (see
    :data:`NEAR`): outer^a table[i]^a (1 + e)^a with e = offset / (outer * table[i]) =
    ``ratio * table_inverse[i]``, and (1 + e)^a = 1 + a e (1 + (a - 1) e / 2) to second order.
    No division and no series of nine terms (:func:`single_root`): pass 2 of ET2 on 256 x 256 x 3
    x 3 convolutions (index order 5) took 0.47-0.54 rather than 0.68 ns an element on one thread,
    and ResNet-50's step 19.0-19.4 rather than 20.4-22.2 ms (3 alternating runs)."""
    kind = table_roots.dtype.type
    e = ratio * table_inverse[i]
    return head_root * table_roots[i] * (kind(1) + exponent * e * (kind(1) + (exponent - kind(1)) * kind(0.5) * e))


@_element
def plain_step(weights, grads, i, root, scale, lr, decay, coupled, grad_sign):
    weight = weights[i]
    weights[i] = weight * decay - lr * (root * (grads[i] * grad_sign + coupled * weight) * scale)


@_element
def momentum_step(weights, grads, buffer, i, root, scale, lr, momentum, decay, coupled, grad_sign):
    """``momentum`` has the buffer's dtype: the decayed buffer and the new one are rounded to it,
    and the weights read the rounded buffer, as in the eager step (where they differ, float64
    weights keep an fp32 buffer)."""
    weight = weights[i]
    moving = buffer.dtype.type(buffer[i] * momentum + root * (grads[i] * grad_sign + coupled * weight) * scale)
    buffer[i] = moving
    weights[i] = weight * decay - lr * moving


@_run_loop
def run_update(weights, grads, buffer, table, table_roots, table_inverse, outer, outer_root, offset, offset_root,
               exponent, order, near, head_root, ratio, scale, lr, momentum, decay, coupled, grad_sign, with_buffer):
    """One run's update (arrays sliced to it), root and step fused: one branch-free loop per
    order (square roots for 1, 2 and 4, as the eager step takes them) and buffer. Other orders
    take :func:`near_power` where ``near`` (the offset is at most :data:`NEAR` of every product
    of the run), else :func:`single_root` or :func:`double_root`."""
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
    elif near:
        if with_buffer:
            for i in range(count):
                root = near_power(table_roots, table_inverse, i, head_root, ratio, exponent)
                momentum_step(weights, grads, buffer, i, root, scale, lr, momentum, decay, coupled, grad_sign)
        else:
            for i in range(count):
                root = near_power(table_roots, table_inverse, i, head_root, ratio, exponent)
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


@_element
def pair_step(weights, grads, buffer, other_weights, other_grads, other_buffer, i, root, other_root, scale, lr,
              momentum, decay, coupled, grad_sign):
    """Both runs' step at element i, with momentum."""
    momentum_step(weights, grads, buffer, i, root, scale, lr, momentum, decay, coupled, grad_sign)
    momentum_step(other_weights, other_grads, other_buffer, i, other_root, scale, lr, momentum, decay, coupled,
                  grad_sign)


@_element
def plain_pair_step(weights, grads, other_weights, other_grads, i, root, other_root, scale, lr, decay, coupled,
                    grad_sign):
    """Both runs' step at element i, without momentum."""
    plain_step(weights, grads, i, root, scale, lr, decay, coupled, grad_sign)
    plain_step(other_weights, other_grads, i, other_root, scale, lr, decay, coupled, grad_sign)


@_run_loop
def pair_update(weights, grads, buffer, other_weights, other_grads, other_buffer, table, table_roots, table_inverse,
                outer, other_outer, offset, exponent, order, head_root, other_head_root, ratio, other_ratio, scale, lr,
                momentum, decay, coupled, grad_sign, with_buffer):
    """:func:`run_update` on two runs of the same table entries at once (:func:`update_item`'s
    halves), for orders 1, 2 and 4, and for the others where both runs take :func:`near_power`:
    four streams read where one run reads two. One branch-free loop per root and buffer."""
    one = weights.dtype.type(1)
    count = weights.shape[0]
    if order == 1:
        if with_buffer:
            for i in range(count):
                pair_step(weights, grads, buffer, other_weights, other_grads, other_buffer, i,
                          one / np.sqrt(outer * table[i] + offset), one / np.sqrt(other_outer * table[i] + offset),
                          scale, lr, momentum, decay, coupled, grad_sign)
        else:
            for i in range(count):
                plain_pair_step(weights, grads, other_weights, other_grads, i,
                                one / np.sqrt(outer * table[i] + offset),
                                one / np.sqrt(other_outer * table[i] + offset), scale, lr, decay, coupled, grad_sign)
    elif order == 2:
        if with_buffer:
            for i in range(count):
                pair_step(weights, grads, buffer, other_weights, other_grads, other_buffer, i,
                          one / np.sqrt(np.sqrt(outer * table[i] + offset)),
                          one / np.sqrt(np.sqrt(other_outer * table[i] + offset)),
                          scale, lr, momentum, decay, coupled, grad_sign)
        else:
            for i in range(count):
                plain_pair_step(weights, grads, other_weights, other_grads, i,
                                one / np.sqrt(np.sqrt(outer * table[i] + offset)),
                                one / np.sqrt(np.sqrt(other_outer * table[i] + offset)),
                                scale, lr, decay, coupled, grad_sign)
    elif order == 4:
        if with_buffer:
            for i in range(count):
                pair_step(weights, grads, buffer, other_weights, other_grads, other_buffer, i,
                          one / np.sqrt(np.sqrt(np.sqrt(outer * table[i] + offset))),
                          one / np.sqrt(np.sqrt(np.sqrt(other_outer * table[i] + offset))),
                          scale, lr, momentum, decay, coupled, grad_sign)
        else:
            for i in range(count):
                plain_pair_step(weights, grads, other_weights, other_grads, i,
                                one / np.sqrt(np.sqrt(np.sqrt(outer * table[i] + offset))),
                                one / np.sqrt(np.sqrt(np.sqrt(other_outer * table[i] + offset))),
                                scale, lr, decay, coupled, grad_sign)
    elif with_buffer:
        for i in range(count):
            pair_step(weights, grads, buffer, other_weights, other_grads, other_buffer, i,
                      near_power(table_roots, table_inverse, i, head_root, ratio, exponent),
                      near_power(table_roots, table_inverse, i, other_head_root, other_ratio, exponent),
                      scale, lr, momentum, decay, coupled, grad_sign)
    else:
        for i in range(count):
            plain_pair_step(weights, grads, other_weights, other_grads, i,
                            near_power(table_roots, table_inverse, i, head_root, ratio, exponent),
                            near_power(table_roots, table_inverse, i, other_head_root, other_ratio, exponent),
                            scale, lr, decay, coupled, grad_sign)


@_serial_jit
def head_indices(index, dims, head, start, first, tail):
    """The head axes' indices of the run that holds element ``start + first``."""
    run = (start + first) // tail
    for axis in range(head - 1, -1, -1):
        index[axis] = run % dims[axis]
        run //= dims[axis]


@_serial_jit
def next_run(index, dims, head):
    for axis in range(head - 1, -1, -1):
        index[axis] += 1
        if index[axis] < dims[axis]:
            return
        index[axis] = 0


@_jit
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


@_jit
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


@_jit
def square_runs(weights, grads, table_sums, block_sums, sums, offsets, dims, index, start, first, stop, head, tail,
                coupled, grad_sign, runs, low, high):
    """Pass 1 over elements ``[first, stop)`` run by run (``index`` the head axes' indices of the
    run that holds ``first``, advanced past them); ``runs``, ``low`` and ``high`` say what the fp32
    block holds on entry (runs, and the table entries they touched), returned updated (see
    :func:`square_item`)."""
    blocked = weights.itemsize == 4
    k = first
    while k < stop:
        col0 = (start + k) % tail
        end = min(stop, k + tail - col0)
        col1 = col0 + end - k
        if blocked:
            total = 0.0
            for c in range(k, end, CHUNK):
                chunk_end = min(end, c + CHUNK)
                at = col0 + c - k
                total += run_squares(weights[c:chunk_end], grads[c:chunk_end], block_sums[at:at + chunk_end - c],
                                     coupled, grad_sign)
            runs, low, high = runs + 1, min(low, col0), max(high, col1)
            if runs == BLOCK_RUNS:
                flush_block(table_sums[low:high], block_sums[low:high])
                runs, low, high = 0, tail, 0
        else:
            total = run_squares(weights[k:end], grads[k:end], table_sums[col0:col1], coupled, grad_sign)
        for axis in range(head):
            sums[offsets[axis] + index[axis]] += total
        if col1 == tail:
            next_run(index, dims, head)
        k = end
    return runs, low, high


@_jit
def square_quarters(grads, table_sums, block_sums, sums, offsets, dims, quarter_index, first, quarter, head, tail,
                    runs, low, high):
    """Pass 1 over the whole runs of ``[first, first + 4 * quarter)`` (fp32, no coupled decay), a
    run from each quarter at a time (``quarter_index[q]`` the head indices of quarter q's first
    run, advanced past its runs): four streams far apart, which a thread reads faster than one
    (benchmarks/RESULTS.md), and each table entry's block sum added to once for four runs."""
    if runs:
        flush_block(table_sums[low:high], block_sums[low:high])
    for k in range(first, first + quarter, tail):
        totals = (0.0, 0.0, 0.0, 0.0)
        for chunk in range(0, tail, CHUNK):
            at = k + chunk
            size = min(tail - chunk, CHUNK)
            a, b, c, d = four_run_squares(grads[at:at + size], grads[at + quarter:at + quarter + size],
                                          grads[at + 2 * quarter:at + 2 * quarter + size],
                                          grads[at + 3 * quarter:at + 3 * quarter + size],
                                          block_sums[chunk:chunk + size])
            totals = (totals[0] + a, totals[1] + b, totals[2] + c, totals[3] + d)
        for part in range(4):
            total = totals[part]
            for axis in range(head):
                sums[offsets[axis] + quarter_index[part, axis]] += total
            next_run(quarter_index[part], dims, head)
        runs += 4
        if runs == BLOCK_RUNS:
            flush_block(table_sums[:tail], block_sums[:tail])
            runs = 0
    return runs, 0 if runs else tail, tail if runs else 0


@_run_loop
def whole_runs(start, first, stop, tail, parts):
    """Of elements ``[first, stop)`` of a range that starts at element ``start`` of its index: where
    the first whole run starts, and how many elements of whole runs each of ``parts`` equal parts
    holds (whole runs too)."""
    aligned = min(stop, first + (tail - (start + first) % tail) % tail)
    return aligned, (stop - aligned) // tail // parts * tail


QUARTER_MIN_RUNS = 8
"""The whole runs each quarter of an item needs before :func:`square_item` reads its quarters
together."""


@_jit
def square_item(weights, grads, table_sums, block_sums, sums, dims, offsets, index, quarter_index, start, first,
                stop, head, tail, coupled, grad_sign):
    """Pass 1 over elements ``[first, stop)`` of a range that starts at element ``start`` of
    its index; ``block_sums`` is zero on entry and on return (:data:`BLOCK_RUNS`). With fp32
    weights and no coupled decay, the item's whole runs are read a quarter at a time
    (:func:`square_quarters`) where each quarter has :data:`QUARTER_MIN_RUNS`; the partial runs at
    either end, and the runs the quarters leave, run by run. A function of its own: inside a loop
    body numba would type the index arithmetic as float64, and the loops would not vectorize."""
    head_indices(index, dims, head, start, first, tail)
    runs, low, high = 0, tail, 0
    aligned, quarter = whole_runs(start, first, stop, tail, 4)
    if weights.itemsize == 4 and coupled == 0 and quarter >= QUARTER_MIN_RUNS * tail:
        runs, low, high = square_runs(weights, grads, table_sums, block_sums, sums, offsets, dims, index, start,
                                      first, aligned, head, tail, coupled, grad_sign, runs, low, high)
        for part in range(4):
            head_indices(quarter_index[part], dims, head, start, aligned + part * quarter, tail)
        runs, low, high = square_quarters(grads, table_sums, block_sums, sums, offsets, dims, quarter_index, aligned,
                                          quarter, head, tail, runs, low, high)
        first = aligned + 4 * quarter
        head_indices(index, dims, head, start, first, tail)
    runs, low, high = square_runs(weights, grads, table_sums, block_sums, sums, offsets, dims, index, start, first,
                                  stop, head, tail, coupled, grad_sign, runs, low, high)
    if runs:
        flush_block(table_sums[low:high], block_sums[low:high])


@_run_loop
def run_factors(scaled, axis_roots, offsets, index, head, general, sqrt2_root, offset, largest_inverse, limit, kind):
    """A run's product of its head axes' scaled accumulators; for orders other than 1, 2 and 4, that
    of their roots times 2^(a/2) and alone, and whether the offset is near (see :func:`run_update`)."""
    outer = kind(1)
    outer_root = sqrt2_root
    head_root = 1.0
    for axis in range(head):
        outer = outer * scaled[offsets[axis] + index[axis]]
        if general:
            outer_root *= axis_roots[offsets[axis] + index[axis]]
            head_root *= axis_roots[offsets[axis] + index[axis]]
    # the offset beside the run's smallest product: float64, so that nothing overflows
    near = general and np.float64(offset) * largest_inverse <= limit * np.float64(outer)
    return outer, kind(outer_root), kind(head_root), near


PAIR_MIN_RUNS = 8
"""The whole runs each half of an item needs before :func:`update_item` steps its halves together."""


@_jit
def update_item(weights, grads, buffer, table, table_roots, table_inverse, largest_inverse, scaled, axis_roots, dims,
                offsets, index, other_index, start, first, stop, head, tail, order, scale, offset, sqrt2_root,
                offset_root, lr, momentum, decay, coupled, grad_sign, with_buffer):
    """Pass 2 over elements ``[first, stop)`` of a range (``scaled`` and ``axis_roots`` sliced
    to the range's slices; for orders other than 1, 2 and 4, ``table_inverse`` holds 1 / table
    and ``largest_inverse`` its largest entry, infinite where the table holds a zero). The whole
    runs of an item with :data:`PAIR_MIN_RUNS` in each half are stepped a run from each half at a
    time (:func:`pair_update`, or one after the other where a general order's runs do not both take
    the near root)."""
    general = order != 1 and order != 2 and order != 4
    kind = table.dtype.type
    limit = NEAR if table.itemsize == 4 else NEAR_DOUBLE
    exponent = kind(-0.5 / order)
    aligned, half = whole_runs(start, first, stop, tail, 2)
    paired = half >= PAIR_MIN_RUNS * tail
    head_indices(index, dims, head, start, first, tail)
    k = first
    while k < stop:
        if paired and k == aligned:
            head_indices(other_index, dims, head, start, aligned + half, tail)
            for k in range(aligned, aligned + half, tail):
                outer, outer_root, head_root, near = run_factors(scaled, axis_roots, offsets, index, head, general,
                                                                 sqrt2_root, offset, largest_inverse, limit, kind)
                other_outer, other_outer_root, other_head_root, other_near = run_factors(
                    scaled, axis_roots, offsets, other_index, head, general, sqrt2_root, offset, largest_inverse, limit,
                    kind)
                other = k + half
                ratio = kind(offset / outer) if near else kind(0)
                other_ratio = kind(offset / other_outer) if other_near else kind(0)
                run_buffer = buffer[k:k + tail] if with_buffer else buffer
                other_buffer = buffer[other:other + tail] if with_buffer else buffer
                if not general or (near and other_near):
                    pair_update(weights[k:k + tail], grads[k:k + tail], run_buffer, weights[other:other + tail],
                                grads[other:other + tail], other_buffer, table[:tail], table_roots[:tail],
                                table_inverse[:tail], outer, other_outer, offset, exponent, order, head_root,
                                other_head_root, ratio, other_ratio, scale, lr, momentum, decay, coupled, grad_sign,
                                with_buffer)
                else:
                    run_update(weights[k:k + tail], grads[k:k + tail], run_buffer, table[:tail], table_roots[:tail],
                               table_inverse[:tail], outer, outer_root, offset, offset_root, exponent, order, near,
                               head_root, ratio, scale, lr, momentum, decay, coupled, grad_sign, with_buffer)
                    run_update(weights[other:other + tail], grads[other:other + tail], other_buffer, table[:tail],
                               table_roots[:tail], table_inverse[:tail], other_outer, other_outer_root, offset,
                               offset_root, exponent, order, other_near, other_head_root, other_ratio, scale, lr,
                               momentum, decay, coupled, grad_sign, with_buffer)
                next_run(index, dims, head)
                next_run(other_index, dims, head)
            k = aligned + 2 * half
            head_indices(index, dims, head, start, k, tail)
            continue
        col0 = (start + k) % tail
        end = min(stop, k + tail - col0)
        col1 = col0 + end - k
        outer, outer_root, head_root, near = run_factors(scaled, axis_roots, offsets, index, head, general, sqrt2_root,
                                                         offset, largest_inverse, limit, kind)
        run_update(weights[k:end], grads[k:end], buffer[k:end] if with_buffer else buffer, table[col0:col1],
                   table_roots[col0:col1], table_inverse[col0:col1], outer, outer_root, offset,
                   offset_root, exponent, order, near, head_root, kind(offset / outer) if near else kind(0),
                   scale, lr, momentum, decay, coupled, grad_sign, with_buffer)
        if col1 == tail:
            next_run(index, dims, head)
        k = end


@_serial_jit
def square_walk(ranges, axis_table, addresses, scalars, items, bounds, origins, partial, weights_like, scratch, low,
                high):
    """Pass 1 over the items of pieces ``low`` to ``high``; each piece's slice sums go to its own
    vectors in ``partial``, from ``origins[piece]`` (see :func:`memplan.kernels.jit.piece_origins`;
    zeroed here, per range: a piece meets a range in one item at most)."""
    weight_type = weights_like.dtype.type
    table_sums = np.empty(scratch[0])
    block_sums = np.zeros(scratch[0], dtype=np.float32)
    index = np.zeros(scratch[1], dtype=np.int64)
    quarter_index = np.zeros((4, scratch[1]), dtype=np.int64)
    for piece in range(low, high):
        for position in range(bounds[piece], bounds[piece + 1]):
            at = items[position, 0]
            start, length, first_axis, axes, head, tail, slot, width = ranges[at]
            dims = axis_table[first_axis:first_axis + axes, 0]
            offsets = axis_table[first_axis:first_axis + axes, 1]
            sums = partial[origins[piece] + slot:origins[piece] + slot + width]
            sums[:] = 0.0
            table_sums[:tail] = 0.0
            weights = carray(array_pointer(addresses[at, 0], weight_type), (length,))
            grads = carray(array_pointer(addresses[at, 1], weight_type), (length,))
            square_item(weights, grads, table_sums, block_sums, sums, dims, offsets, index, quarter_index, start,
                        items[position, 1], items[position, 2], head, tail, weight_type(scalars[at, _COUPLED]),
                        weight_type(scalars[at, _GRAD_SIGN]))
            fold(table_sums, sums, dims, offsets, head, axes, tail)


@_serial_jit
def update_walk(ranges, axis_table, addresses, scalars, corrections, scaled, axis_roots, items, bounds,
                weights_like, scratch, low, high):
    """Pass 2 over the items of pieces ``low`` to ``high``, from the ranges' scaled
    accumulators (and, for orders other than 1, 2 and 4, their roots) in ``scaled`` and
    ``axis_roots``."""
    weight_type = weights_like.dtype.type
    table = np.empty(scratch[0], dtype=scaled.dtype)
    table_roots = np.empty(scratch[0], dtype=scaled.dtype)
    table_inverse = np.empty(scratch[0], dtype=scaled.dtype)
    root_products = np.empty(scratch[0])
    index = np.zeros(scratch[1], dtype=np.int64)
    other_index = np.zeros(scratch[1], dtype=np.int64)
    for piece in range(low, high):
        for position in range(bounds[piece], bounds[piece + 1]):
            at = items[position, 0]
            start, length, first_axis, axes, head, tail, slot, width = ranges[at]
            dims = axis_table[first_axis:first_axis + axes, 0]
            offsets = axis_table[first_axis:first_axis + axes, 1]
            range_scaled = scaled[slot:slot + width]
            range_roots = axis_roots[slot:slot + width]
            spread(table, range_scaled, dims, offsets, head, axes)
            largest_inverse = np.inf
            if axes != 1 and axes != 2 and axes != 4:
                # the roots' products in float64, rounded once
                spread(root_products, range_roots, dims, offsets, head, axes)
                largest_inverse = 0.0
                for i in range(tail):
                    table_roots[i] = root_products[i]
                    table_inverse[i] = 1 / table[i] if table[i] > 0 else np.inf
                    largest_inverse = max(largest_inverse, np.float64(table_inverse[i]))
            weights = carray(array_pointer(addresses[at, 0], weight_type), (length,))
            grads = carray(array_pointer(addresses[at, 1], weight_type), (length,))
            with_buffer = addresses[at, 2] != 0
            buffer = carray(array_pointer(addresses[at, 2], np.float32), (length if with_buffer else 0,))
            values, correction = scalars[at], corrections[at]
            update_item(weights, grads, buffer, table, table_roots, table_inverse, largest_inverse, range_scaled,
                        range_roots, dims, offsets, index, other_index, start, items[position, 1], items[position, 2],
                        head, tail, axes, weight_type(correction[_SCALE]), weight_type(correction[_OFFSET]),
                        correction[_SQRT2_ROOT], weight_type(correction[_OFFSET_ROOT]),
                        weight_type(values[_LR]), np.float32(values[_MOMENTUM]), weight_type(values[_DECAY]),
                        weight_type(values[_COUPLED]), weight_type(values[_GRAD_SIGN]), with_buffer)


@_serial_jit
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


@_serial_jit
def finish_sums(ranges, axis_table, axis_addresses, scalars, touched, origins, partial, what, outputs_like, scaled,
                axis_roots, corrections):
    """Each range's slice sums, combined over the pieces that touched it in piece order: added
    to its output vectors (ADD_SUMS), or (STORE_ACCUMULATORS) folded into its fp32
    accumulators, S <- keep S + alpha sums, which are then scaled for pass 2 as
    :func:`memplan.optim.extreme._scaled_factors` does, in fp32 (into ``scaled`` and
    ``corrections``, with their roots: :func:`prepare_roots`)."""
    output_type = outputs_like.dtype.type
    totals = np.zeros(ranges[-1, 6] + ranges[-1, 7] if ranges.shape[0] else 0)
    for at in range(ranges.shape[0]):
        first_axis, axes, slot, width = ranges[at, 2], ranges[at, 3], ranges[at, 6], ranges[at, 7]
        sums = totals[slot:slot + width]
        sums[:] = 0.0
        if touched[at, 0] >= 0:
            for piece in range(touched[at, 0], touched[at, 1] + 1):
                at_piece = origins[piece] + slot
                for i in range(width):
                    sums[i] += partial[at_piece + i]
        if what == ADD_SUMS:
            for axis in range(first_axis, first_axis + axes):
                dim, offset = axis_table[axis, 0], axis_table[axis, 1]
                out = carray(array_pointer(axis_addresses[axis], output_type), (dim,))
                for i in range(dim):
                    out[i] += output_type(sums[offset + i])
            continue
        keep, alpha = np.float32(scalars[at, _KEEP]), np.float32(scalars[at, _ALPHA])
        log_scale = np.float32(0)
        for axis in range(first_axis, first_axis + axes):
            dim, offset = axis_table[axis, 0], axis_table[axis, 1]
            accumulator = carray(array_pointer(axis_addresses[axis], np.float32), (dim,))
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


@_jit
def infinity_run_squares(weights, grads, coupled, grad_sign):
    """ET-infinity's pass 1 over one item (arrays sliced to it): its sum of G^2, each square in
    the weights' dtype, summed in float64. The weights are read only for coupled weight decay."""
    total = 0.0
    if coupled == 0:
        for i in range(grads.shape[0]):
            gradient = grads[i]
            total += gradient * gradient
        return total
    for i in range(grads.shape[0]):
        gradient = grads[i] * grad_sign + coupled * weights[i]
        total += gradient * gradient
    return total


@_jit
def infinity_run_scale(weights, grads, inverse_root, lr, decay, coupled, grad_sign):
    """ET-infinity's pass 2 over one item: W <- W * decay - lr * G * inverse_root."""
    for i in range(weights.shape[0]):
        weight = weights[i]
        gradient = grads[i] * grad_sign + coupled * weight
        weights[i] = weight * decay - lr * (gradient * inverse_root)


@_serial_jit
def infinity_squared_norm(addresses, scalars, items, bounds, partial, touched, states, norms, inverse_roots,
                          weights_like, low, high, finish):
    """ET-infinity's pass 1. Without ``finish``: the items of pieces ``low`` to ``high``, each
    piece's sums of G^2 added to its row of ``partial`` (one column per tensor). With ``finish``,
    once the threads have joined: each tensor's squared norm, its partial sums combined in piece
    order, into ``norms``; then, for each tensor with a state (``states`` holds the addresses of
    the 0-d fp32 accumulators; none for a lone range), the accumulator updated as the eager step
    rounds it, s <- keep s + alpha ||G||^2 in fp32 with the squared norm rounded to fp32 first, and
    (eps + s)^(-1/2) in fp32 into ``inverse_roots``."""
    weight_type = weights_like.dtype.type
    if not finish:
        for piece in range(low, high):
            for position in range(bounds[piece], bounds[piece + 1]):
                at, first, stop = items[position, 0], items[position, 1], items[position, 2]
                weights = carray(array_pointer(addresses[at, 0], weight_type), (stop,))
                grads = carray(array_pointer(addresses[at, 1], weight_type), (stop,))
                partial[piece, at] += infinity_run_squares(weights[first:stop], grads[first:stop],
                                                            weight_type(scalars[at, _INF_COUPLED]),
                                                            weight_type(scalars[at, _INF_GRAD_SIGN]))
        return
    for at in range(norms.shape[0]):
        total = 0.0
        if touched[at, 0] >= 0:
            for piece in range(touched[at, 0], touched[at, 1] + 1):
                total += partial[piece, at]
        norms[at] = total
    for at in range(states.shape[0]):
        state = carray(array_pointer(states[at], np.float32), (1,))
        keep, alpha = np.float32(scalars[at, _INF_KEEP]), np.float32(scalars[at, _INF_ALPHA])
        # decayed in fp32, then the squared norm (an fp32 tensor's value) added as torch's fused multiply-add does
        decayed = state[0] * keep
        squared_norm = np.float64(np.float32(norms[at]))
        value = np.float32(np.float64(decayed) + np.float64(alpha) * squared_norm)
        state[0] = value
        inverse_roots[at] = np.float32(1) / np.sqrt(value + np.float32(scalars[at, _INF_EPS]))


@_serial_jit
def infinity_scale(addresses, scalars, inverse_roots, items, bounds, weights_like, low, high):
    """ET-infinity's pass 2 over the items of pieces ``low`` to ``high``, each tensor scaled by
    its ``inverse_roots`` entry."""
    weight_type = weights_like.dtype.type
    for piece in range(low, high):
        for position in range(bounds[piece], bounds[piece + 1]):
            at, first, stop = items[position, 0], items[position, 1], items[position, 2]
            weights = carray(array_pointer(addresses[at, 0], weight_type), (stop,))
            grads = carray(array_pointer(addresses[at, 1], weight_type), (stop,))
            values = scalars[at]
            infinity_run_scale(weights[first:stop], grads[first:stop], weight_type(inverse_roots[at]),
                               weight_type(values[_INF_LR]), weight_type(values[_INF_DECAY]),
                               weight_type(values[_INF_COUPLED]), weight_type(values[_INF_GRAD_SIGN]))


__all__ = ["finish_sums", "infinity_scale", "infinity_squared_norm", "prepare_roots", "square_walk",
           "update_walk"]
