"""Pieces the Triton kernels share: what the multi-tensor kernels read from their per-call tables
(see the table layouts in :mod:`memplan.kernels.smmf_triton`), and the maximum SM3's kernels
reduce. Imports Triton: only the kernel factories import it, once Triton is known to be there."""

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
def nan_max(values, AXIS: tl.constexpr):
    """The maximum of ``values`` along AXIS, NaN where any value is (as torch's amax, and as one
    atomic maximum per element kept it: a NaN is its slice's maximum)."""
    unordered = tl.max((values != values).to(tl.int32), AXIS) != 0
    return tl.where(unordered, float("nan"), tl.max(values, AXIS))
