"""Pieces the Triton kernels share: what the multi-tensor kernels read from their per-call tables
(see the table layouts in :mod:`memplan.kernels.smmf_triton`), SMMF's update of a tile, and the
maximum SM3's kernels reduce. Imports Triton: only the kernel factories import it, once Triton is known to be there."""

from __future__ import annotations

import triton
import triton.language as tl


@triton.jit
def smmf_shape(shapes, tensor, sums, SHAPE_FIELDS: tl.constexpr, INDEX: tl.constexpr):
    """Tensor ``tensor``'s row of smmf_many's shape table: its numel, columns, rows (INDEX) and tiles
    per band of rows, and where its row and column sums of v, then of m, lie in ``sums``."""
    shape = shapes + SHAPE_FIELDS * tensor
    length = tl.load(shape).to(INDEX)
    cols = tl.load(shape + 1).to(INDEX)
    rows = tl.load(shape + 2).to(INDEX)
    row_sums_v = sums + tl.load(shape + 3)
    col_sums_v = row_sums_v + rows
    row_sums_m = col_sums_v + cols
    col_sums_m = row_sums_m + rows
    return length, cols, rows, tl.load(shape + 4).to(tl.int32), row_sums_v, col_sums_v, row_sums_m, col_sums_m


@triton.jit
def smmf_entry(table, tensor, DTYPE: tl.constexpr, COMPUTE: tl.constexpr):
    """Tensor ``tensor``'s row of smmf_many's per-call table: the pointers to its weights, gradients
    (DTYPE), signs and four factors, then its step size, eps, decay, coupled decay and gradient sign
    in the math's dtype (COMPUTE), and its priors of v and m in fp32 (the previous row factor times
    its prior is rounded to fp32, as the optimizer's scaled factor is)."""
    entry = table + 16 * tensor
    weights = tl.load(entry).to(tl.pointer_type(DTYPE))
    grads = tl.load(entry + 1).to(tl.pointer_type(DTYPE))
    signs = tl.load(entry + 2).to(tl.pointer_type(tl.uint8))
    row_v = tl.load(entry + 3).to(tl.pointer_type(tl.float32))
    col_v = tl.load(entry + 4).to(tl.pointer_type(tl.float32))
    row_m = tl.load(entry + 5).to(tl.pointer_type(tl.float32))
    col_m = tl.load(entry + 6).to(tl.pointer_type(tl.float32))
    step_size = tl.load(entry + 7).to(tl.float64, bitcast=True).to(COMPUTE)
    eps = tl.load(entry + 8).to(tl.float64, bitcast=True).to(COMPUTE)
    decay = tl.load(entry + 9).to(tl.float64, bitcast=True).to(COMPUTE)
    coupled = tl.load(entry + 10).to(tl.float64, bitcast=True).to(COMPUTE)
    grad_sign = tl.load(entry + 11).to(tl.float64, bitcast=True).to(COMPUTE)
    prior_v = tl.load(entry + 12).to(tl.float64, bitcast=True).to(tl.float32)
    prior_m = tl.load(entry + 13).to(tl.float64, bitcast=True).to(tl.float32)
    return weights, grads, signs, row_v, col_v, row_m, col_m, step_size, eps, decay, coupled, grad_sign, prior_v, \
        prior_m


@triton.jit
def smmf_tile_update(weights, grads, signs, row_v, col_v, row_m, col_m, prior_v, prior_m, offsets, inside, row, row_in,
                     col, col_in, step_size, eps, decay, coupled, grad_sign, SIGN_MODE: tl.constexpr):
    """SMMF's update of a tile's elements ``offsets`` (those ``inside``, in rows ``row`` and columns
    ``col``) in place: the weights, and bytes signs (SIGN_MODE 8). The previous row factors are
    multiplied by their priors (``prior_v``, ``prior_m``: 1 where the caller's are scaled already);
    ``row_m`` and ``col_m`` are read only with signs. With 1-bit signs (SIGN_MODE 1) an element's
    bit is its column's low three bits. The math is fp32 (float64 for float64 weights). Returns the
    tile's S and |F| (0 outside) and its new signs, for the caller's sums and packing."""
    weight = tl.load(weights + offsets, mask=inside, other=0.0)
    compute = weight.dtype if weight.dtype == tl.float64 else tl.float32
    weight = weight.to(compute)
    gradient = tl.load(grads + offsets, mask=inside, other=0.0).to(compute) * grad_sign + coupled * weight
    scaled_row_v = (tl.load(row_v + row, mask=row_in, other=0.0) * prior_v).to(compute)
    col_v_now = tl.load(col_v + col, mask=col_in, other=0.0).to(compute)
    second = gradient * gradient + scaled_row_v[:, None] * col_v_now[None, :]
    if SIGN_MODE == 0:
        moment = gradient
    else:
        if SIGN_MODE == 1:
            packed = tl.load(signs + (offsets >> 3), mask=inside, other=0).to(tl.int32)
            positive = ((packed >> (col & 7).to(tl.int32)[None, :]) & 1) != 0
        else:
            positive = tl.load(signs + offsets, mask=inside, other=0).to(tl.int32) != 0
        scale = tl.load(row_m + row, mask=row_in, other=0.0) * prior_m
        signed = tl.where(positive, scale[:, None], -scale[:, None]).to(compute)
        moment = gradient + signed * tl.load(col_m + col, mask=col_in, other=0.0).to(compute)[None, :]
    updated = weight * decay + step_size * (moment / (tl.sqrt(second) + eps))
    tl.store(weights + offsets, updated.to(weights.dtype.element_ty), mask=inside)
    now_positive = (moment > 0) & inside
    if SIGN_MODE == 8:
        tl.store(signs + offsets, now_positive.to(tl.uint8), mask=inside)
    return tl.where(inside, second, 0.0), tl.where(inside, tl.abs(moment), 0.0), now_positive


@triton.jit
def packed_signs(now_positive, col, TILE_ROWS: tl.constexpr, TILE_COLS: tl.constexpr):
    """A tile's new signs, 8 to a byte (int32, TILE_ROWS x TILE_COLS / 8): bit j of a byte is the
    sign of its column 8 k + j (the tile's columns start on a byte)."""
    bits = now_positive.to(tl.int32) << (col & 7).to(tl.int32)[None, :]
    return tl.sum(tl.reshape(bits, (TILE_ROWS, TILE_COLS // 8, 8)), axis=2)


@triton.jit
def nan_max(values, AXIS: tl.constexpr):
    """The maximum of ``values`` along AXIS, NaN where any value is (as torch's amax, and as one
    atomic maximum per element kept it: a NaN is its slice's maximum)."""
    unordered = tl.max((values != values).to(tl.int32), AXIS) != 0
    return tl.where(unordered, float("nan"), tl.max(values, AXIS))
