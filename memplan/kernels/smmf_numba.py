"""The numba kernels of :mod:`memplan.kernels.smmf_cpu` (the step, and how a call is cut into
items, are described there), imported by it on first use. Module-level functions, so that numba's
cache serves them to a new process (see :mod:`memplan.kernels.jit`).
"""

from __future__ import annotations

import math

import numpy as np

from memplan.kernels.jit import numba_module
from memplan.kernels.numba_pointer import array_pointer
from memplan.kernels.smmf_tables import ADD_SUMS, STORE_FACTORS

numba = numba_module()
carray = numba.carray

TILE = 4096
"""Elements a thread handles at a time (a multiple of 8): its sign and moment buffers stay in L1/L2."""


# the row loops are inlined into ``item`` (at numba's level): a call per row, with its array
# views, cost about as much as a short row's elements. Unlike SM3's and extreme tensoring's kernels
# (see sm3_numba.FAST_MATH), these keep exact division: the update divides by sqrt(S) + eps, not
# by a square root alone, and the two ways of trading the division for a reciprocal square root
# estimate (of (sqrt(S) + eps)^2, or sqrt(S) as S times one) made the step 5 to 15% slower; this
# loop is bound by its count of floating-point operations (the four sums), not by the divider
_row_loop = numba.njit(cache=True, nogil=True, fastmath={"reassoc"}, error_model="numpy", inline="always")


@_row_loop
def moment_element(weight, gradient, positive, factor_v, factor_m, rv, rm, step_size, eps, decay, coupled,
                   grad_sign):
    """One element's step with first moment: its new weight and sign, S and |F|."""
    gradient = gradient * grad_sign + coupled * weight
    second = gradient * gradient + rv * factor_v
    moment = gradient + (rm if positive else -rm) * factor_m
    return weight * decay + step_size * (moment / (np.sqrt(second) + eps)), moment > 0, second, abs(moment)


@_row_loop
def plain_element(weight, gradient, factor_v, rv, step_size, eps, decay, coupled, grad_sign):
    """One element's step without first moment (the gradient is the update's numerator): its new
    weight and S."""
    gradient = gradient * grad_sign + coupled * weight
    second = gradient * gradient + rv * factor_v
    return weight * decay + step_size * (gradient / (np.sqrt(second) + eps)), second


@_row_loop
def row_with_moment(weights, grads, flags, col_v, col_m, rv, rm, step_size, eps, decay, coupled, grad_sign,
                    col_sums_v, col_sums_m):
    """One row's piece (every array sliced to it): the update, the new sign flags (0/1, in
    place of the old ones) and the column sums; returns the row's sums, added up in the column
    sums' dtype (fp32 for fp32 weights: see :data:`BLOCK_ROWS`)."""
    sum_v = col_sums_v.dtype.type(0)
    sum_m = col_sums_v.dtype.type(0)
    for i in range(weights.shape[0]):
        weights[i], flags[i], second, magnitude = moment_element(weights[i], grads[i], flags[i], col_v[i], col_m[i],
                                                                 rv, rm, step_size, eps, decay, coupled, grad_sign)
        sum_v += second
        sum_m += magnitude
        col_sums_v[i] += second
        col_sums_m[i] += magnitude
    return sum_v, sum_m


@_row_loop
def row_without_moment(weights, grads, col_v, rv, step_size, eps, decay, coupled, grad_sign, col_sums_v):
    """The same without first moment."""
    sum_v = col_sums_v.dtype.type(0)
    for i in range(weights.shape[0]):
        weights[i], second = plain_element(weights[i], grads[i], col_v[i], rv, step_size, eps, decay, coupled,
                                           grad_sign)
        sum_v += second
        col_sums_v[i] += second
    return sum_v


@_row_loop
def pair_with_moment(weights, grads, flags, other_weights, other_grads, other_flags, col_v, col_m, rv, rm, other_rv,
                     other_rm, step_size, eps, decay, coupled, grad_sign, col_sums_v, col_sums_m):
    """:func:`row_with_moment` over two row pieces of the same columns at once (see
    :func:`paired_item`): each column's factors read, and its sums updated, once for both; returns
    both rows' sums."""
    sum_v = col_sums_v.dtype.type(0)
    sum_m = col_sums_v.dtype.type(0)
    other_v = col_sums_v.dtype.type(0)
    other_m = col_sums_v.dtype.type(0)
    for i in range(weights.shape[0]):
        factor_v = col_v[i]
        factor_m = col_m[i]
        weights[i], flags[i], second, magnitude = moment_element(weights[i], grads[i], flags[i], factor_v, factor_m,
                                                                 rv, rm, step_size, eps, decay, coupled, grad_sign)
        other_weights[i], other_flags[i], other_second, other_magnitude = moment_element(
            other_weights[i], other_grads[i], other_flags[i], factor_v, factor_m, other_rv, other_rm, step_size, eps,
            decay, coupled, grad_sign)
        sum_v += second
        sum_m += magnitude
        other_v += other_second
        other_m += other_magnitude
        col_sums_v[i] += second + other_second
        col_sums_m[i] += magnitude + other_magnitude
    return sum_v, sum_m, other_v, other_m


@_row_loop
def pair_without_moment(weights, grads, other_weights, other_grads, col_v, rv, other_rv, step_size, eps, decay,
                        coupled, grad_sign, col_sums_v):
    """:func:`row_without_moment` over two row pieces of the same columns at once."""
    sum_v = col_sums_v.dtype.type(0)
    other_v = col_sums_v.dtype.type(0)
    for i in range(weights.shape[0]):
        factor_v = col_v[i]
        weights[i], second = plain_element(weights[i], grads[i], factor_v, rv, step_size, eps, decay, coupled,
                                           grad_sign)
        other_weights[i], other_second = plain_element(other_weights[i], other_grads[i], factor_v, other_rv,
                                                       step_size, eps, decay, coupled, grad_sign)
        sum_v += second
        other_v += other_second
        col_sums_v[i] += second + other_second
    return sum_v, other_v


BLOCK_ROWS = 16
"""With fp32 weights, a row piece's sums are added up in fp32 (at most :data:`TILE` elements,
spread over the vector lanes) and each column's in fp32 over at most ``BLOCK_ROWS`` row pieces, then
added to the float64 partial sums: a column entry adds at most 16 values in fp32 (a relative error
of 16 ulp, 1e-6, at worst). Float64 sums per element had cost a conversion and a float64 read and
write of each column sum."""


@_row_loop
def flush_columns(sums, block):
    """The block's fp32 column sums added to the float64 ones, and zeroed."""
    for j in range(block.shape[0]):
        sums[j] += block[j]
        block[j] = 0


@_row_loop
def flush_block(sums_v, sums_m, block_v, block_m, rows, low, high, with_moment):
    """Columns ``[low, high)`` of the fp32 blocks added to the float64 column sums (after the
    ``rows`` row sums), and zeroed."""
    flush_columns(sums_v[rows + low:rows + high], block_v[low:high])
    if with_moment:
        flush_columns(sums_m[rows + low:rows + high], block_m[low:high])


@_row_loop
def row_piece(start, k, stop, cols):
    """The row piece that element ``k`` of a range starting at ``start`` begins: its row, first
    column, the element after it (at most ``stop``) and the column after it."""
    row = (start + k) // cols
    col0 = start + k - row * cols
    end = min(stop, k + cols - col0)
    return row, col0, end, col0 + end - k


@_row_loop
def unpack_signs(packed, words):
    """Bit j of each byte of ``packed`` to byte j of the same word of ``words`` (0 or 1). The loop
    indexes slices from 0: an index numba cannot prove non-negative gets a wraparound check that
    kept LLVM from vectorizing it (17% of the step on ResNet-50, one thread)."""
    for word in range(packed.shape[0]):
        # byte b's bit j to byte j of its word (0 or 1): bit j alone in byte j, then made 0 or 1
        alone = np.uint64(packed[word]) * np.uint64(0x0101010101010101) & np.uint64(0x8040201008040201)
        words[word] = ((alone + np.uint64(0x7F7F7F7F7F7F7F7F)) >> np.uint64(7)) & np.uint64(0x0101010101010101)


@_row_loop
def pack_signs(packed, words):
    """:func:`unpack_signs` undone: byte j of each word of ``words`` (0 or 1) to bit j of its byte."""
    gather = np.uint64(0x0102040810204080)  # bit j of the top byte of word * gather = byte j of word
    for word in range(packed.shape[0]):
        packed[word] = np.uint8((words[word] * gather) >> np.uint64(56))


@numba.njit(cache=True, nogil=True, error_model="numpy", fastmath={"reassoc"})
def item(weights, grads, signs, sign_mode, start, first, stop, cols, row_v, col_v, row_m, col_m, prior_v,
         prior_m, step_size, eps, decay, coupled, grad_sign, sums_v, sums_m, rows, unpacked, words, weight_type,
         block_v, block_m):
    """Elements ``[first, stop)`` of a range that starts at element ``start`` of its matrix (a
    function of its own: inside a loop body numba would type the index arithmetic as float64,
    and the loops would not vectorize): the update, the new signs, and the row sums
    (``sums[:rows]``) and column sums (after them). ``block_v`` and ``block_m`` are fp32 scratch
    of at least ``cols`` zeros, zeros again on return (:data:`BLOCK_ROWS`)."""
    with_moment = sign_mode != 0
    blocked = weights.itemsize == 4
    pieces, low, high = 0, cols, 0   # row pieces in the fp32 column block, and the columns they touched
    for tile_start in range(first, stop, TILE):
        tile_stop = min(stop, tile_start + TILE)
        byte_start = tile_start >> 3
        byte_count = (tile_stop - tile_start + 7) >> 3
        if sign_mode == 1:
            unpack_signs(signs[byte_start:byte_start + byte_count], words)
            flags = unpacked
        elif sign_mode == 8:
            flags = signs[tile_start:tile_stop]
        else:
            flags = unpacked
        k = tile_start
        while k < tile_stop:
            row, col0, end, col1 = row_piece(start, k, tile_stop, cols)
            # the row factor scaled in the factors' dtype (as the eager step does), then widened
            rv = weight_type(row_v[row] * prior_v)
            if with_moment:
                rm = weight_type(row_m[row] * prior_m)
                row_flags = flags[k - tile_start:end - tile_start]
                if blocked:
                    sum_v, sum_m = row_with_moment(weights[k:end], grads[k:end], row_flags, col_v[col0:col1],
                                                   col_m[col0:col1], rv, rm, step_size, eps, decay, coupled,
                                                   grad_sign, block_v[col0:col1], block_m[col0:col1])
                else:
                    sum_v, sum_m = row_with_moment(weights[k:end], grads[k:end], row_flags, col_v[col0:col1],
                                                   col_m[col0:col1], rv, rm, step_size, eps, decay, coupled,
                                                   grad_sign, sums_v[rows + col0:rows + col1],
                                                   sums_m[rows + col0:rows + col1])
                sums_m[row] += sum_m
            elif blocked:
                sum_v = row_without_moment(weights[k:end], grads[k:end], col_v[col0:col1], rv, step_size, eps,
                                           decay, coupled, grad_sign, block_v[col0:col1])
            else:
                sum_v = row_without_moment(weights[k:end], grads[k:end], col_v[col0:col1], rv, step_size, eps,
                                           decay, coupled, grad_sign, sums_v[rows + col0:rows + col1])
            sums_v[row] += sum_v
            if blocked:
                pieces, low, high = pieces + 1, min(low, col0), max(high, col1)
                if pieces == BLOCK_ROWS:
                    flush_block(sums_v, sums_m, block_v, block_m, rows, low, high, with_moment)
                    pieces, low, high = 0, cols, 0
            k = end
        if sign_mode == 1:
            unpacked[tile_stop - tile_start:byte_count * 8] = 0  # padding bits of the range's last byte
            pack_signs(signs[byte_start:byte_start + byte_count], words)
    if pieces:
        flush_block(sums_v, sums_m, block_v, block_m, rows, low, high, with_moment)


@_row_loop
def pair_piece(weights, grads, flags, other_weights, other_grads, other_flags, col_v, col_m, rv, rm, other_rv,
               other_rm, step_size, eps, decay, coupled, grad_sign, with_moment, col_sums_v, col_sums_m):
    """Two row pieces of the same columns, with or without first moment: both rows' sums of S and |F|
    (0 without first moment)."""
    if with_moment:
        return pair_with_moment(weights, grads, flags, other_weights, other_grads, other_flags, col_v, col_m, rv, rm,
                                other_rv, other_rm, step_size, eps, decay, coupled, grad_sign, col_sums_v, col_sums_m)
    sum_v, other_v = pair_without_moment(weights, grads, other_weights, other_grads, col_v, rv, other_rv, step_size,
                                         eps, decay, coupled, grad_sign, col_sums_v)
    return sum_v, col_sums_v.dtype.type(0), other_v, col_sums_v.dtype.type(0)


PAIR_MIN_ROWS = 4
"""The full rows an item needs in each half before :func:`paired_item` steps its halves together."""


@numba.njit(cache=True, nogil=True, error_model="numpy", fastmath={"reassoc"})
def paired_item(weights, grads, signs, sign_mode, start, first, stop, cols, row_v, col_v, row_m, col_m, prior_v,
                prior_m, step_size, eps, decay, coupled, grad_sign, sums_v, sums_m, rows, unpacked, words, weight_type,
                block_v, block_m, other_unpacked, other_words):
    """:func:`item` with two row pieces in each pass: elements ``[first, first + span)`` together with
    the ``span`` after them (``span`` a multiple of ``cols`` and of 8, so the second half's pieces
    have the first's columns and its tiles start on a sign byte), then the rest by :func:`item`.
    A loop reading twice the streams keeps more of memory's reads in flight (two rows' weights,
    gradients and signs at once), and reads each column's factors and adds to its sums once for
    both rows (benchmarks/RESULTS.md)."""
    step = 8 // math.gcd(cols, 8)
    span = ((stop - first) // 2 // cols // step * step) * cols
    if span < PAIR_MIN_ROWS * cols:
        item(weights, grads, signs, sign_mode, start, first, stop, cols, row_v, col_v, row_m, col_m, prior_v, prior_m,
             step_size, eps, decay, coupled, grad_sign, sums_v, sums_m, rows, unpacked, words, weight_type, block_v,
             block_m)
        return
    with_moment = sign_mode != 0
    blocked = weights.itemsize == 4
    apart = span // cols   # rows between a piece of the first half and its partner
    pieces, low, high = 0, cols, 0
    for tile_start in range(first, first + span, TILE):
        tile_stop = min(first + span, tile_start + TILE)
        other_start = tile_start + span
        byte_start = tile_start >> 3
        other_byte_start = other_start >> 3
        byte_count = (tile_stop - tile_start + 7) >> 3
        if sign_mode == 1:
            unpack_signs(signs[byte_start:byte_start + byte_count], words)
            unpack_signs(signs[other_byte_start:other_byte_start + byte_count], other_words)
            flags, other_flags = unpacked, other_unpacked
        elif sign_mode == 8:
            flags = signs[tile_start:tile_stop]
            other_flags = signs[other_start:other_start + tile_stop - tile_start]
        else:
            flags, other_flags = unpacked, other_unpacked
        k = tile_start
        while k < tile_stop:
            row, col0, end, col1 = row_piece(start, k, tile_stop, cols)
            other = k + span
            other_end = end + span
            rv = weight_type(row_v[row] * prior_v)
            other_rv = weight_type(row_v[row + apart] * prior_v)
            rm = weight_type(row_m[row] * prior_m)
            other_rm = weight_type(row_m[row + apart] * prior_m)
            row_flags = flags[k - tile_start:end - tile_start]
            other_row_flags = other_flags[k - tile_start:end - tile_start]
            if blocked:   # two calls: the fp32 block and the float64 sums are arrays of different types
                sum_v, sum_m, other_v, other_m = pair_piece(
                    weights[k:end], grads[k:end], row_flags, weights[other:other_end], grads[other:other_end],
                    other_row_flags, col_v[col0:col1], col_m[col0:col1], rv, rm, other_rv, other_rm, step_size, eps,
                    decay, coupled, grad_sign, with_moment, block_v[col0:col1], block_m[col0:col1])
            else:
                sum_v, sum_m, other_v, other_m = pair_piece(
                    weights[k:end], grads[k:end], row_flags, weights[other:other_end], grads[other:other_end],
                    other_row_flags, col_v[col0:col1], col_m[col0:col1], rv, rm, other_rv, other_rm, step_size, eps,
                    decay, coupled, grad_sign, with_moment, sums_v[rows + col0:rows + col1],
                    sums_m[rows + col0:rows + col1])
            if with_moment:
                sums_m[row] += sum_m
                sums_m[row + apart] += other_m
            sums_v[row] += sum_v
            sums_v[row + apart] += other_v
            if blocked:
                pieces, low, high = pieces + 2, min(low, col0), max(high, col1)
                if pieces >= BLOCK_ROWS:
                    flush_block(sums_v, sums_m, block_v, block_m, rows, low, high, with_moment)
                    pieces, low, high = 0, cols, 0
            k = end
        if sign_mode == 1:
            pack_signs(signs[byte_start:byte_start + byte_count], words)
            pack_signs(signs[other_byte_start:other_byte_start + byte_count], other_words)
    if pieces:
        flush_block(sums_v, sums_m, block_v, block_m, rows, low, high, with_moment)
    if first + 2 * span < stop:
        item(weights, grads, signs, sign_mode, start, first + 2 * span, stop, cols, row_v, col_v, row_m, col_m, prior_v,
             prior_m, step_size, eps, decay, coupled, grad_sign, sums_v, sums_m, rows, unpacked, words, weight_type,
             block_v, block_m)


@numba.njit(cache=True, nogil=True, error_model="numpy", inline="always")
def finished_in_walk(touched, index, what):
    """Whether :func:`walk` finishes range ``index`` (one piece alone touched it, and the call
    stores factors), so that :func:`combine` does not."""
    return what == STORE_FACTORS and touched[index, 0] == touched[index, 1]


@numba.njit(cache=True, nogil=True, error_model="numpy")
def walk(addresses, ranges, scalars, items, bounds, origins, sign_mode, partial, weights_like, factors_like,
         touched, what, outputs_like, low, high):
    """The items of pieces ``low`` to ``high``; each piece's sums go to its own vectors in
    ``partial``, from ``origins[piece]`` (see :func:`memplan.kernels.jit.piece_origins`; zeroed
    here, per range, where the piece first meets it). A range that this piece alone touches is
    finished here too when the call stores factors (``what``, see :func:`finish`): while its sums
    are in the cache, and on every thread, rather than in the serial :func:`combine` (0.4 ms a step
    for ResNet-50's 161 tensors)."""
    weight_type = weights_like.dtype.type
    factor_type = factors_like.dtype.type
    output_type = outputs_like.dtype.type
    unpacked = np.zeros(TILE, dtype=np.uint8)
    words = unpacked.view(np.uint64)
    other_unpacked = np.zeros(TILE, dtype=np.uint8)
    other_words = other_unpacked.view(np.uint64)
    widest = 0
    for index in range(ranges.shape[0]):
        widest = max(widest, ranges[index, 2])
    block_v = np.zeros(widest, dtype=np.float32)
    block_m = np.zeros(widest, dtype=np.float32)
    for piece in range(low, high):
        previous = -1
        for position in range(bounds[piece], bounds[piece + 1]):
            index = items[position, 0]
            start, length, cols, slot, rows = ranges[index]
            at = origins[piece] + slot
            sums_v = partial[0, at:at + rows + cols]
            sums_m = partial[partial.shape[0] - 1, at:at + rows + cols]  # = sums_v without signs
            if index != previous:
                if previous >= 0 and finished_in_walk(touched, previous, what):
                    finish(addresses, ranges, scalars, touched, origins, partial, what, output_type, previous)
                sums_v[:] = 0.0
                sums_m[:] = 0.0
                previous = index
            address = addresses[index]
            weights = carray(array_pointer(address[0], weight_type), (length,))
            grads = carray(array_pointer(address[1], weight_type), (length,))
            if sign_mode == 1:
                signs = carray(array_pointer(address[2], np.uint8), ((length + 7) >> 3,))
            elif sign_mode == 8:
                signs = carray(array_pointer(address[2], np.uint8), (length,))
            else:
                signs = unpacked
            row_v = carray(array_pointer(address[3], factor_type), (rows,))
            col_v = carray(array_pointer(address[4], factor_type), (cols,))
            if sign_mode != 0:
                row_m = carray(array_pointer(address[5], factor_type), (rows,))
                col_m = carray(array_pointer(address[6], factor_type), (cols,))
            else:
                row_m, col_m = row_v, col_v
            values = scalars[index]
            paired_item(weights, grads, signs, sign_mode, start, items[position, 1], items[position, 2], cols, row_v,
                        col_v, row_m, col_m, factor_type(values[5]), factor_type(values[6]), weight_type(values[0]),
                        weight_type(values[1]), weight_type(values[2]), weight_type(values[3]),
                        weight_type(values[4]), sums_v, sums_m, rows, unpacked, words, weight_type, block_v, block_m,
                        other_unpacked, other_words)
        if previous >= 0 and finished_in_walk(touched, previous, what):
            finish(addresses, ranges, scalars, touched, origins, partial, what, output_type, previous)


@numba.njit(cache=True, nogil=True, error_model="numpy")
def finish(addresses, ranges, scalars, touched, origins, partial, mode, output_type, index):
    """Range ``index``'s sums, combined over the pieces that touched it in piece order (into the
    first one's partial vectors, which are scratch; ``origins`` as for :func:`walk`), added to
    its output vectors (ADD_SUMS) or stored as its new factors (STORE_FACTORS): times keep, the
    shorter side divided by its total unless that is 0."""
    first = touched[index, 0]
    _, _, cols, slot, rows = ranges[index]
    for moment in range(partial.shape[0]):
        at = origins[first] + slot
        totals = partial[moment, at:at + rows + cols]
        for piece in range(first + 1, touched[index, 1] + 1):
            at = origins[piece] + slot
            totals += partial[moment, at:at + rows + cols]
        out_row = carray(array_pointer(addresses[index, 7 + 2 * moment], output_type), (rows,))
        out_col = carray(array_pointer(addresses[index, 8 + 2 * moment], output_type), (cols,))
        if mode == ADD_SUMS:
            for i in range(rows):
                out_row[i] += totals[i]
            for j in range(cols):
                out_col[j] += totals[rows + j]
            continue
        totals *= scalars[index, 7 + moment]
        side = totals[:rows] if rows < cols else totals[rows:]
        total = side.sum()
        if total > 0:
            side /= total
        for i in range(rows):
            out_row[i] = totals[i]
        for j in range(cols):
            out_col[j] = totals[rows + j]


@numba.njit(cache=True, nogil=True, error_model="numpy")
def combine(addresses, ranges, scalars, touched, origins, partial, mode, outputs_like):
    """After the threads join: :func:`finish` for every range that more than one piece touched, and,
    when the call adds its sums to output vectors (ADD_SUMS), for every range (:func:`walk`
    finished the others)."""
    output_type = outputs_like.dtype.type
    for index in range(ranges.shape[0]):
        if touched[index, 0] < 0 or finished_in_walk(touched, index, mode):
            continue
        finish(addresses, ranges, scalars, touched, origins, partial, mode, output_type, index)


__all__ = ["combine", "walk"]
