"""SMMF's one-pass step as Triton kernels (CUDA tensors; tested on CPU tensors under
``TRITON_INTERPRET=1``): on a flat range of one parameter, or on many whole parameters at once.

The same update as :mod:`memplan.kernels.smmf_cpu`. :func:`smmf_range` steps a range in tiles of
``TILE_ROWS`` x ``TILE_COLS`` elements of the matrix (masked to the range), each summing its rows
and columns in registers and adding one atomic per row and column to the output vectors, wherever
a tile owns whole packed sign bytes (:func:`range_tiles_own_their_signs`: with 1-bit signs, a
range and rows that start on a byte, as a rank's shard of a matrix with a column count that is a
multiple of 8 does). Otherwise each program takes ``BLOCK`` consecutive elements of the range (a
multiple of 8, so it owns whole packed sign bytes: it reads them, and writes the new ones packed
in registers, one bit position at a time, without a reduction) and adds one atomic per element to
its column's sums. The sums are fp32 atomic adds: their order, hence the last bits of the sums, is
not deterministic. No host synchronisation: every scalar of :func:`smmf_range` is a kernel
argument.

:func:`smmf_many` steps many whole parameters with one launch of the update kernel, the
zero-fill of one flat fp32 buffer for their row and column sums, and one launch of a finalize
kernel that turns the sums into the new factors. Its update programs each take a tile of
``TILE_ROWS`` x ``TILE_COLS`` elements of a tensor's matrix: they sum the tile's rows and columns in
registers and add one atomic per row and per column, where a program over a flat range adds one per
element to each (on a GPU, atomics to one address serialise: a row's elements all hit its sum). A
tensor whose packed signs would split a byte between tiles (1-bit signs and columns not a multiple
of 8: rare, as SMMF's matrices are near square and most sizes even) takes the flat programs, in a
second launch. The kernels reach the tensors through a table
uploaded once per call (without waiting for the device: through pinned memory): per tensor, the
``data_ptr`` of its weights, gradients, signs and factors, then its scalars (as the int64 bits of
float64 values). Which tensor and which block of it each program steps, and where each tensor's
sums lie in the buffer, depend only on the shapes; those tables are built with numpy and cached,
so a training loop that steps the same parameters every step reuses them. The optimizer keeps a
:class:`SMMFTritonCall`, which makes its checks and the per-call table's addresses once: a step then
costs the host a fifth of the Python that building them took (ResNet-50's 161 tensors). The finalize kernel
runs one program per tensor: it scales the sums by ``keep``, divides the shorter side by its total
(:func:`memplan.optim.smmf.normalize_factors_`) and writes the factors over the state.
"""

from __future__ import annotations

from functools import cache, lru_cache
from typing import NamedTuple, Sequence

import numpy as np
import torch

from memplan.kernels.jit import gradient_addresses
from memplan.kernels.launch import TRITON_DTYPES, import_triton_helpers, program_table, upload
from memplan.kernels.smmf_cpu import SMMFScalars, SMMFTensor

BLOCK = 1024
NEAR_ROWS = 4
"""The rows at the start of a flat block whose sums a program keeps in registers (one atomic per
row after its loop); a row further on adds per element (a block of 1024 spans at most 2 rows of
a matrix at least 1024 wide, 4 of one at least 342 wide)."""
TILE_ROWS = 16
TILE_COLS = 128
"""The tile a program of :func:`smmf_many` steps (TILE_COLS a multiple of 8: whole sign bytes)."""
VECTOR_BLOCK = 1024
"""Elements of a factor vector that a finalize program of :func:`smmf_many` handles at a time."""
SIGN_MODES = {None: 0, torch.uint8: 1, torch.bool: 8}


@cache
def _kernel():
    import triton
    import triton.language as tl

    @triton.jit
    def smmf_kernel(weights, grads, signs, row_v, col_v, row_m, col_m, new_row_v, new_col_v, new_row_m, new_col_m,
                    start, length, cols, step_size, eps, decay, coupled, grad_sign,
                    SIGN_MODE: tl.constexpr, BLOCK: tl.constexpr, NEAR_ROWS: tl.constexpr):
        program = tl.program_id(0)
        byte = program * (BLOCK // 8) + tl.arange(0, BLOCK // 8)
        if SIGN_MODE == 1:
            old_bytes = tl.load(signs + byte, mask=byte < (length + 7) // 8, other=0).to(tl.int32)
        new_bytes = tl.full((BLOCK // 8,), 0, tl.int32)  # tl.full: a builtin (tl.zeros is a jit function)
        # the block's first NEAR_ROWS rows: their sums in registers, one atomic each after the loop
        first_row = (start + program * BLOCK) // cols
        near = tl.arange(0, NEAR_ROWS)
        near_v = tl.full((NEAR_ROWS,), 0.0, new_row_v.dtype.element_ty)
        near_m = tl.full((NEAR_ROWS,), 0.0, new_row_m.dtype.element_ty)
        for bit in tl.static_range(8):  # element 8 b + bit of every byte b of the block: no reduction needed
            offsets = byte * 8 + bit
            inside = offsets < length
            element = start + offsets
            row = element // cols
            col = element % cols
            far = inside & (row - first_row >= NEAR_ROWS)
            picked = ((row - first_row)[None, :] == near[:, None]) & inside[None, :]
            weight = tl.load(weights + offsets, mask=inside, other=0.0)
            compute = weight.dtype if weight.dtype == tl.float64 else tl.float32
            weight = weight.to(compute)
            gradient = tl.load(grads + offsets, mask=inside, other=0.0).to(compute) * grad_sign + coupled * weight
            second = gradient * gradient + (tl.load(row_v + row, mask=inside, other=0.0)
                                            * tl.load(col_v + col, mask=inside, other=0.0))
            if SIGN_MODE == 0:
                moment = gradient
            else:
                if SIGN_MODE == 1:
                    positive = ((old_bytes >> bit) & 1) != 0
                else:
                    positive = tl.load(signs + offsets, mask=inside, other=0).to(tl.int32) != 0
                scale = tl.load(row_m + row, mask=inside, other=0.0)
                moment = gradient + tl.where(positive, scale, -scale) * tl.load(col_m + col, mask=inside, other=0.0)
            updated = weight * decay + step_size * (moment / (tl.sqrt(second) + eps))
            tl.store(weights + offsets, updated.to(weights.dtype.element_ty), mask=inside)
            near_v += tl.sum(tl.where(picked, second[None, :], 0.0), axis=1).to(near_v.dtype)
            tl.atomic_add(new_row_v + row, second, mask=far)
            tl.atomic_add(new_col_v + col, second, mask=inside)
            if SIGN_MODE != 0:
                now_positive = (moment > 0) & inside
                magnitude = tl.abs(moment)
                near_m += tl.sum(tl.where(picked, magnitude[None, :], 0.0), axis=1).to(near_m.dtype)
                tl.atomic_add(new_row_m + row, magnitude, mask=far)
                tl.atomic_add(new_col_m + col, magnitude, mask=inside)
                if SIGN_MODE == 1:
                    new_bytes = new_bytes | (now_positive.to(tl.int32) << bit)
                else:
                    tl.store(signs + offsets, now_positive.to(signs.dtype.element_ty), mask=inside)
        if SIGN_MODE == 1:
            tl.store(signs + byte, new_bytes.to(tl.uint8), mask=byte < (length + 7) // 8)
        last_row = (start + tl.minimum((program + 1) * BLOCK, length) - 1) // cols
        present = first_row + near <= last_row
        tl.atomic_add(new_row_v + first_row + near, near_v, mask=present)
        if SIGN_MODE != 0:
            tl.atomic_add(new_row_m + first_row + near, near_m, mask=present)

    return smmf_kernel


def smmf_range(weights: torch.Tensor, grads: torch.Tensor, signs: torch.Tensor | None, start: int, cols: int,
               scaled_v: tuple[torch.Tensor, torch.Tensor], scaled_m: tuple[torch.Tensor, torch.Tensor] | None,
               new_v: tuple[torch.Tensor, torch.Tensor], new_m: tuple[torch.Tensor, torch.Tensor] | None,
               scalars: SMMFScalars) -> None:
    """The Triton counterpart of :func:`memplan.kernels.smmf_cpu.smmf_range` (same arguments;
    bool signs are stored as one byte each, 0 or 1). fp32 math for fp32 and narrower weights,
    float64 for float64 (with fp32 scalars)."""
    length = weights.numel()
    if length == 0:
        return
    mode = SIGN_MODES[None if signs is None else signs.dtype]
    sign_storage = weights if signs is None else signs.view(-1)
    if mode == 8:
        sign_storage = sign_storage.view(torch.uint8)
    row_m, col_m = scaled_m if scaled_m is not None else scaled_v
    new_row_m, new_col_m = new_m if new_m is not None else new_v
    if range_tiles_own_their_signs(mode, start, cols):
        first_row = start // cols
        band_tiles = -(-cols // TILE_COLS)
        grid = (-(-((start + length - 1) // cols - first_row + 1) // TILE_ROWS) * band_tiles,)
        _range_tile_kernel()[grid](weights, grads, sign_storage, scaled_v[0], scaled_v[1], row_m, col_m, new_v[0],
                                   new_v[1], new_row_m, new_col_m, start, length, cols, first_row, band_tiles,
                                   scalars.step_size, scalars.eps, scalars.decay, scalars.coupled_decay,
                                   scalars.grad_sign, SIGN_MODE=mode, TILE_ROWS=TILE_ROWS, TILE_COLS=TILE_COLS)
        return
    grid = (-(-length // BLOCK),)
    _kernel()[grid](weights, grads, sign_storage, scaled_v[0], scaled_v[1], row_m, col_m, new_v[0], new_v[1],
                    new_row_m, new_col_m, start, length, cols, scalars.step_size, scalars.eps, scalars.decay,
                    scalars.coupled_decay, scalars.grad_sign, SIGN_MODE=mode, BLOCK=BLOCK, NEAR_ROWS=NEAR_ROWS)


def range_tiles_own_their_signs(sign_mode: int, start: int, cols: int) -> bool:
    """Whether :func:`smmf_range` steps its range in tiles: each tile must own whole packed sign
    bytes, so with 1-bit signs the range starts on a byte (``start % 8 == 0``) and every row does
    (``cols % 8 == 0``); bytes and no signs always fit."""
    return sign_mode != 1 or (start % 8 == 0 and cols % 8 == 0)


@cache
def _range_tile_kernel():
    import triton
    import triton.language as tl

    import_triton_helpers(globals())

    @triton.jit
    def smmf_range_tile_kernel(weights, grads, signs, row_v, col_v, row_m, col_m, new_row_v, new_col_v, new_row_m,
                               new_col_m, start, length, cols, first_row, band_tiles, step_size, eps, decay, coupled,
                               grad_sign, SIGN_MODE: tl.constexpr, TILE_ROWS: tl.constexpr,
                               TILE_COLS: tl.constexpr):
        """A tile of TILE_ROWS x TILE_COLS elements of the matrix, those of it inside the range
        ``[start, start + length)``: as smmf_kernel, with the tile's row and column sums reduced in
        registers, one atomic per row and column (not per element). With 1-bit signs the range
        and every row start on a sign byte (:func:`range_tiles_own_their_signs`), so the tile owns
        whole bytes and an element's bit is its column's low three bits."""
        program = tl.program_id(0)
        row = first_row + (program // band_tiles) * TILE_ROWS + tl.arange(0, TILE_ROWS)
        first_col = (program % band_tiles) * TILE_COLS
        col = first_col + tl.arange(0, TILE_COLS)
        col_in = col < cols
        offsets = row[:, None] * cols + col[None, :] - start   # within the range
        inside = col_in[None, :] & (offsets >= 0) & (offsets < length)
        row_in = tl.sum(inside.to(tl.int32), axis=1) > 0
        second, magnitude, now_positive = _entries.smmf_tile_update(
            weights, grads, signs, row_v, col_v, row_m, col_m, 1.0, 1.0, offsets, inside, row, row_in, col, col_in,
            step_size, eps, decay, coupled, grad_sign, SIGN_MODE)
        tl.atomic_add(new_row_v + row, tl.sum(second, axis=1).to(new_row_v.dtype.element_ty), mask=row_in)
        tl.atomic_add(new_col_v + col, tl.sum(second, axis=0).to(new_col_v.dtype.element_ty), mask=col_in)
        if SIGN_MODE != 0:
            tl.atomic_add(new_row_m + row, tl.sum(magnitude, axis=1).to(new_row_m.dtype.element_ty), mask=row_in)
            tl.atomic_add(new_col_m + col, tl.sum(magnitude, axis=0).to(new_col_m.dtype.element_ty), mask=col_in)
        if SIGN_MODE == 1:
            byte_col = first_col + 8 * tl.arange(0, TILE_COLS // 8)
            byte_offsets = row[:, None] * cols + byte_col[None, :] - start
            owned = (byte_col < cols)[None, :] & (byte_offsets >= 0) & (byte_offsets < length)
            tl.store(signs + (byte_offsets >> 3), _entries.packed_signs(now_positive, col, TILE_ROWS, TILE_COLS)
                     .to(tl.uint8), mask=owned)

    return smmf_range_tile_kernel


# smmf_many's per-call table, one int64 row of 16 per tensor: the data pointers of its weights,
# grads, signs, row_v, col_v, row_m and col_m (0 where absent), then the float64 bits of its
# step_size, eps, decay, coupled decay, gradient sign, prior_v, prior_m, keep_v and keep_m. Its
# cached shape table, a row of 5: numel, cols, rows, the offset of its sums (row_v's, col_v's, then
# row_m's and col_m's) in the flat sums buffer, and its tiles per band of TILE_ROWS rows. The
# kernels read both at these fixed offsets.
_SHAPE_FIELDS = 5
_TABLE_FIELDS = 16   # the kernels' literal 16
_entries = None
"""memplan.kernels.triton_entries once a kernel factory has run (see :func:`import_triton_helpers`)."""


@cache
def _many_kernels():
    import triton
    import triton.language as tl

    import_triton_helpers(globals())

    @triton.jit
    def smmf_many_kernel(table, shapes, programs, sums, SHAPE_FIELDS: tl.constexpr, SIGN_MODE: tl.constexpr,
                         DTYPE: tl.constexpr, COMPUTE: tl.constexpr, INDEX: tl.constexpr,
                         BLOCK: tl.constexpr, NEAR_ROWS: tl.constexpr):
        """A flat block of BLOCK elements of one tensor, as smmf_kernel: one atomic per element and
        column sum, per row for the block's first NEAR_ROWS rows."""
        program = tl.program_id(0)
        tensor = tl.load(programs + 2 * program)
        block = tl.load(programs + 2 * program + 1).to(INDEX)
        byte = block * (BLOCK // 8) + tl.arange(0, BLOCK // 8)
        length, cols, rows, band_tiles, row_sums_v, col_sums_v, row_sums_m, col_sums_m = _entries.smmf_shape(
            shapes, tensor, sums, SHAPE_FIELDS, INDEX)
        (weights, grads, signs, row_v, col_v, row_m, col_m, step_size, eps, decay, coupled, grad_sign, prior_v,
         prior_m) = _entries.smmf_entry(table, tensor, DTYPE, COMPUTE)
        if SIGN_MODE == 1:
            old_bytes = tl.load(signs + byte, mask=byte < (length + 7) // 8, other=0).to(tl.int32)
        new_bytes = tl.full((BLOCK // 8,), 0, tl.int32)
        first_row = block * BLOCK // cols
        near = tl.arange(0, NEAR_ROWS)
        near_v = tl.full((NEAR_ROWS,), 0.0, tl.float32)
        near_m = tl.full((NEAR_ROWS,), 0.0, tl.float32)
        for bit in tl.static_range(8):  # element 8 b + bit of every byte b of the block, as in smmf_kernel
            offsets = byte * 8 + bit
            inside = offsets < length
            row = offsets // cols
            col = offsets % cols
            far = inside & (row - first_row >= NEAR_ROWS)
            picked = ((row - first_row)[None, :] == near[:, None]) & inside[None, :]
            weight = tl.load(weights + offsets, mask=inside, other=0.0).to(COMPUTE)
            gradient = tl.load(grads + offsets, mask=inside, other=0.0).to(COMPUTE) * grad_sign + coupled * weight
            # the outer products in the math's dtype: float64 multiplies the fp32 factors exactly, as torch does
            second = gradient * gradient + ((tl.load(row_v + row, mask=inside, other=0.0) * prior_v).to(COMPUTE)
                                            * tl.load(col_v + col, mask=inside, other=0.0).to(COMPUTE))
            if SIGN_MODE == 0:
                moment = gradient
            else:
                if SIGN_MODE == 1:
                    positive = ((old_bytes >> bit) & 1) != 0
                else:
                    positive = tl.load(signs + offsets, mask=inside, other=0).to(tl.int32) != 0
                scale = tl.load(row_m + row, mask=inside, other=0.0) * prior_m
                moment = gradient + (tl.where(positive, scale, -scale).to(COMPUTE)
                                     * tl.load(col_m + col, mask=inside, other=0.0).to(COMPUTE))
            updated = weight * decay + step_size * (moment / (tl.sqrt(second) + eps))
            tl.store(weights + offsets, updated.to(DTYPE), mask=inside)
            near_v += tl.sum(tl.where(picked, second.to(tl.float32)[None, :], 0.0), axis=1)
            tl.atomic_add(row_sums_v + row, second.to(tl.float32), mask=far)
            tl.atomic_add(col_sums_v + col, second.to(tl.float32), mask=inside)
            if SIGN_MODE != 0:
                now_positive = (moment > 0) & inside
                magnitude = tl.abs(moment).to(tl.float32)
                near_m += tl.sum(tl.where(picked, magnitude[None, :], 0.0), axis=1)
                tl.atomic_add(row_sums_m + row, magnitude, mask=far)
                tl.atomic_add(col_sums_m + col, magnitude, mask=inside)
                if SIGN_MODE == 1:
                    new_bytes = new_bytes | (now_positive.to(tl.int32) << bit)
                else:
                    tl.store(signs + offsets, now_positive.to(tl.uint8), mask=inside)
        if SIGN_MODE == 1:
            tl.store(signs + byte, new_bytes.to(tl.uint8), mask=byte < (length + 7) // 8)
        present = first_row + near <= (tl.minimum((block + 1) * BLOCK, length) - 1) // cols
        tl.atomic_add(row_sums_v + first_row + near, near_v, mask=present)
        if SIGN_MODE != 0:
            tl.atomic_add(row_sums_m + first_row + near, near_m, mask=present)

    @triton.jit
    def smmf_tile_kernel(table, shapes, programs, sums, SHAPE_FIELDS: tl.constexpr, SIGN_MODE: tl.constexpr,
                         DTYPE: tl.constexpr, COMPUTE: tl.constexpr, INDEX: tl.constexpr, TILE_ROWS: tl.constexpr,
                         TILE_COLS: tl.constexpr):
        """A tile of TILE_ROWS x TILE_COLS elements of one tensor's matrix: its row and column sums
        reduced in registers, one atomic per row and column. With 1-bit signs, cols % 8 == 0, so
        the tile owns whole sign bytes and an element's bit is its column's low three bits."""
        program = tl.program_id(0)
        tensor = tl.load(programs + 2 * program)
        tile = tl.load(programs + 2 * program + 1)
        length, cols, rows, band_tiles, row_sums_v, col_sums_v, row_sums_m, col_sums_m = _entries.smmf_shape(
            shapes, tensor, sums, SHAPE_FIELDS, INDEX)
        row = (tile // band_tiles).to(INDEX) * TILE_ROWS + tl.arange(0, TILE_ROWS)
        first_col = (tile % band_tiles).to(INDEX) * TILE_COLS
        col = first_col + tl.arange(0, TILE_COLS)
        row_in = row < rows
        col_in = col < cols
        inside = row_in[:, None] & col_in[None, :]
        offsets = row[:, None] * cols + col[None, :]
        (weights, grads, signs, row_v, col_v, row_m, col_m, step_size, eps, decay, coupled, grad_sign, prior_v,
         prior_m) = _entries.smmf_entry(table, tensor, DTYPE, COMPUTE)
        # the previous row factors times their priors, rounded to fp32 as the optimizer's scaled factors are
        second, magnitude, now_positive = _entries.smmf_tile_update(
            weights, grads, signs, row_v, col_v, row_m, col_m, prior_v, prior_m, offsets, inside, row, row_in, col,
            col_in, step_size, eps, decay, coupled, grad_sign, SIGN_MODE)
        tl.atomic_add(row_sums_v + row, tl.sum(second, axis=1).to(tl.float32), mask=row_in)
        tl.atomic_add(col_sums_v + col, tl.sum(second, axis=0).to(tl.float32), mask=col_in)
        if SIGN_MODE != 0:
            tl.atomic_add(row_sums_m + row, tl.sum(magnitude, axis=1).to(tl.float32), mask=row_in)
            tl.atomic_add(col_sums_m + col, tl.sum(magnitude, axis=0).to(tl.float32), mask=col_in)
        if SIGN_MODE == 1:
            byte_col = first_col + 8 * tl.arange(0, TILE_COLS // 8)
            byte = (row[:, None] * cols + byte_col[None, :]) >> 3
            tl.store(signs + byte, _entries.packed_signs(now_positive, col, TILE_ROWS, TILE_COLS).to(tl.uint8),
                     mask=row_in[:, None] & (byte_col < cols)[None, :])

    @triton.jit
    def smmf_finalize_kernel(table, shapes, sums, SHAPE_FIELDS: tl.constexpr, MOMENTS: tl.constexpr,
                             BLOCK: tl.constexpr):
        """One tensor's new factors: row = keep * row sums, col = keep * column sums, then the shorter
        side divided by its own total unless that is 0 (fp32, as the optimizer's factor store)."""
        tensor = tl.program_id(0)
        shape = shapes + SHAPE_FIELDS * tensor
        cols = tl.load(shape + 1)
        rows = tl.load(shape + 2)
        entry = table + 16 * tensor
        row_is_shorter = rows < cols
        shorter = tl.where(row_is_shorter, rows, cols)
        for moment in tl.static_range(MOMENTS):  # v, then m: their pointers, keep and sums follow each other
            row_sums = sums + tl.load(shape + 3) + moment * (rows + cols)
            col_sums = row_sums + rows
            row = tl.load(entry + 3 + 2 * moment).to(tl.pointer_type(tl.float32))
            col = tl.load(entry + 4 + 2 * moment).to(tl.pointer_type(tl.float32))
            keep = tl.load(entry + 14 + moment).to(tl.float64, bitcast=True).to(tl.float32)
            shorter_sums = row_sums + tl.where(row_is_shorter, 0, rows)
            partial = tl.zeros((BLOCK,), tl.float32)
            for first in range(0, shorter, BLOCK):
                at = first + tl.arange(0, BLOCK)
                partial += tl.load(shorter_sums + at, mask=at < shorter, other=0.0) * keep
            total = tl.sum(partial)
            divisor = tl.where(total > 0, total, 1.0)
            row_divisor = tl.where(row_is_shorter, divisor, 1.0)
            col_divisor = tl.where(row_is_shorter, 1.0, divisor)
            for first in range(0, rows, BLOCK):
                at = first + tl.arange(0, BLOCK)
                tl.store(row + at, tl.load(row_sums + at, mask=at < rows) * keep / row_divisor, mask=at < rows)
            for first in range(0, cols, BLOCK):
                at = first + tl.arange(0, BLOCK)
                tl.store(col + at, tl.load(col_sums + at, mask=at < cols) * keep / col_divisor, mask=at < cols)

    return smmf_many_kernel, smmf_tile_kernel, smmf_finalize_kernel


class _Batch(NamedTuple):
    """The launch tables of one list of shapes (see :func:`_batch`)."""

    shapes: torch.Tensor
    """int64 (tensors, 5): numel, cols, rows, the offset of the tensor's sums in the sums buffer, and
    its tiles per band of ``TILE_ROWS`` rows."""
    tiles: torch.Tensor
    """int32 (programs, 2): the tensor each tile program steps, and which tile of it (row-band major)."""
    tile_count: int
    blocks: torch.Tensor
    """int32 (programs, 2): the tensor each flat program steps (those that cannot be tiled), and which
    block of it."""
    block_count: int
    sums_length: int
    wide: bool
    """Whether element indices, padded to whole blocks or tiles, need int64 (int32 otherwise: cheaper
    division)."""


def tileable(sign_mode: int, cols: int) -> bool:
    """Whether a tensor's matrix can be stepped in tiles: each tile must own whole sign bytes, so with
    1-bit signs its column count must be a multiple of 8."""
    return sign_mode != 1 or cols % 8 == 0


@lru_cache(maxsize=16)
def _batch(sizes: tuple[tuple[int, int], ...], sign_mode: int, block: int, tile: tuple[int, int],
           device: torch.device) -> _Batch:
    """The launch tables of tensors of ``(numel, cols)`` with signs stored as ``sign_mode`` (see
    :data:`SIGN_MODES`), on ``device``; cached, as a training loop steps the same shapes every step."""
    numel, cols = np.array(sizes, dtype=np.int64).reshape(-1, 2).T
    rows = numel // np.maximum(cols, 1)
    moments = 1 if sign_mode == 0 else 2
    vector_lengths = moments * (rows + cols)
    offsets = np.cumsum(vector_lengths) - vector_lengths
    tile_rows, tile_cols = tile
    band_tiles = -(-cols // tile_cols)
    tiled = np.array([tileable(sign_mode, int(count)) for count in cols], dtype=bool)
    tiles = np.where(tiled & (numel > 0), -(-rows // tile_rows) * band_tiles, 0)
    blocks = np.where(tiled, 0, -(-numel // block))
    shapes = np.stack([numel, cols, rows, offsets, band_tiles], axis=1)
    reach = np.maximum(blocks * block, -(-rows // tile_rows) * tile_rows * cols + band_tiles * tile_cols)
    tile_table, block_table = program_table(tiles), program_table(blocks)
    return _Batch(upload(shapes, device), upload(tile_table, device), len(tile_table), upload(block_table, device),
                  len(block_table), int(vector_lengths.sum()), bool(reach.max() >= 2 ** 31))


def _address(tensor: torch.Tensor | None) -> int:
    return 0 if tensor is None else tensor.data_ptr()


def _check_batch(tensors: Sequence[SMMFTensor]) -> tuple[torch.dtype, torch.dtype | None]:
    """The batch's weights dtype and sign dtype; ValueError where a tensor does not fit the kernel."""
    dtype = tensors[0].weights.dtype
    sign_dtype = None if tensors[0].signs is None else tensors[0].signs.dtype
    device = tensors[0].weights.device
    if dtype not in TRITON_DTYPES:
        raise ValueError(f"smmf_many steps fp32, float64, bf16 or fp16 weights, got {dtype}")
    if sign_dtype not in SIGN_MODES:
        raise ValueError(f"smmf_many takes packed uint8 or bool signs, got {sign_dtype}")
    for index, tensor in enumerate(tensors):
        length = tensor.weights.numel()
        rows = length // tensor.cols if tensor.cols > 0 else 0
        if tensor.weights.dtype != dtype or tensor.grads.dtype != dtype:
            raise ValueError(f"smmf_many: every weight and gradient must be {dtype} (the first tensor's); "
                             f"tensor {index} has {tensor.weights.dtype} weights and {tensor.grads.dtype} gradients")
        if (None if tensor.signs is None else tensor.signs.dtype) != sign_dtype:
            raise ValueError(f"smmf_many: every tensor must have {sign_dtype} signs (the first tensor's); "
                             f"tensor {index} differs")
        if tensor.weights.device != device or not (tensor.weights.is_contiguous() and tensor.grads.is_contiguous()) \
                or tensor.grads.numel() != length:
            raise ValueError(f"smmf_many: tensor {index}'s weights and gradients must be contiguous, of the same "
                             f"size, on {device}")
        if tensor.signs is not None and (not tensor.signs.is_contiguous() or tensor.signs.numel() != (
                -(-length // 8) if sign_dtype == torch.uint8 else length)):
            raise ValueError(f"smmf_many: tensor {index}'s signs must be contiguous, 8 per byte or one per element")
        factors = [(tensor.row_v, rows), (tensor.col_v, tensor.cols)]
        if sign_dtype is not None:
            factors += [(tensor.row_m, rows), (tensor.col_m, tensor.cols)]
        if any(factor is None or factor.dtype != torch.float32 or factor.numel() != size or not factor.is_contiguous()
               for factor, size in factors):
            raise ValueError(f"smmf_many: tensor {index}'s factors must be contiguous fp32 vectors of {rows} and "
                             f"{tensor.cols} elements")
    return dtype, sign_dtype


class SMMFTritonCall:
    """A multi-tensor call (:func:`smmf_many`) prepared once for its tensors and run every step with
    that step's gradients and scalars: the checks, the launch tables and the addresses of the
    weights, signs and factors are made here, once (as :class:`memplan.kernels.smmf_cpu.SMMFCall`
    does for the CPU kernel); a step writes the gradients' addresses and the scalars into the
    per-call table, uploads it and launches. The host's Python is what a GPU step cannot hide.

    The call keeps its tensors (its table points into them); a caller that replaces any of them
    (the weights' storage, the state) prepares a new call.
    """

    def __init__(self, tensors: Sequence[SMMFTensor]) -> None:
        if not tensors:
            raise ValueError("SMMFTritonCall: no tensors")
        self._dtype, sign_dtype = _check_batch(tensors)
        self._device = tensors[0].weights.device
        self._mode = SIGN_MODES[sign_dtype]
        self._tensors = list(tensors)   # kept: the table points into them
        self._weights = [tensor.weights for tensor in tensors]
        self._batch = _batch(tuple((tensor.weights.numel(), tensor.cols) for tensor in tensors), self._mode, BLOCK,
                             (TILE_ROWS, TILE_COLS), self._device)
        self._blocks = (BLOCK, TILE_ROWS, TILE_COLS, VECTOR_BLOCK)
        self._table = np.zeros((len(tensors), _TABLE_FIELDS), dtype=np.int64)
        self._table[:, :7] = [(tensor.weights.data_ptr(), tensor.grads.data_ptr(), _address(tensor.signs),
                               tensor.row_v.data_ptr(), tensor.col_v.data_ptr(), _address(tensor.row_m),
                               _address(tensor.col_m)) for tensor in tensors]

    def run(self, grads: Sequence[torch.Tensor],
            scalars: Sequence[tuple[SMMFScalars, float, float, float, float]], which: Sequence[int] | None = None,
            ) -> None:
        """Step every tensor with ``grads`` (one per tensor: contiguous, on the weights' device, of
        their dtype and size) and store the new factors. ``scalars`` are rows of (scalars, prior_v,
        prior_m, keep_v, keep_m) (see :class:`SMMFTensor`); tensor i takes row ``which[i]``, or
        row 0 for all when ``which`` is None. No host synchronisation."""
        self._table[:, 1] = gradient_addresses("smmf_many", grads, self._weights, self._device)
        rows = [_scalar_row(*row) for row in scalars]
        values = self._table[:, 7:].view(np.float64)
        if which is None:
            values[:] = rows[0]
        else:
            values[:] = np.array(rows, dtype=np.float64)[np.asarray(which, dtype=np.int64)]
        self._launch(upload(self._table, self._device))

    def _launch(self, table: torch.Tensor) -> None:
        import triton.language as tl

        batch = self._batch
        block, tile_rows, tile_cols, vector_block = self._blocks
        sums = torch.zeros(batch.sums_length, dtype=torch.float32, device=self._device)
        flat, tiled, finalize = _many_kernels()
        types = dict(SHAPE_FIELDS=_SHAPE_FIELDS, SIGN_MODE=self._mode,
                     DTYPE=getattr(tl, TRITON_DTYPES[self._dtype]),
                     COMPUTE=tl.float64 if self._dtype == torch.float64 else tl.float32,
                     INDEX=tl.int64 if batch.wide else tl.int32)
        if batch.tile_count:
            tiled[(batch.tile_count,)](table, batch.shapes, batch.tiles, sums, TILE_ROWS=tile_rows,
                                       TILE_COLS=tile_cols, **types)
        if batch.block_count:
            flat[(batch.block_count,)](table, batch.shapes, batch.blocks, sums, BLOCK=block, NEAR_ROWS=NEAR_ROWS,
                                       **types)
        finalize[(len(self._tensors),)](table, batch.shapes, sums, SHAPE_FIELDS=_SHAPE_FIELDS,
                                        MOMENTS=1 if self._mode == 0 else 2, BLOCK=vector_block)


def _scalar_row(scalars: SMMFScalars, prior_v: float, prior_m: float, keep_v: float,
                keep_m: float) -> tuple[float, ...]:
    """A tensor's scalars in the per-call table's order (see the layout above)."""
    return (scalars.step_size, scalars.eps, scalars.decay, scalars.coupled_decay, scalars.grad_sign, prior_v, prior_m,
            keep_v, keep_m)


def smmf_many(tensors: Sequence[SMMFTensor]) -> None:
    """Step every tensor whole and store its new factors, in one launch of the update kernel (two
    where some tensors cannot be tiled: see :func:`tileable`).

    Per tensor, what :func:`smmf_range` does on ``[0, numel)`` with the scaled factors
    ``(row_v * prior_v, col_v)`` and ``(row_m * prior_m, col_m)``, then what the optimizer's factor
    store does: ``row = keep * row sums``, ``col = keep * column sums``, the shorter side divided by
    its total, written over the state (v's factors, and m's with signs). The tensors share the
    weights dtype (fp32, float64, bf16 or fp16; the math is fp32, float64 for float64) and the sign
    storage; ValueError otherwise. No host
    synchronisation; an empty list is a no-op. A training loop keeps a :class:`SMMFTritonCall`
    instead, which checks and builds the tables once.
    """
    if not tensors:
        return
    SMMFTritonCall(tensors).run([tensor.grads for tensor in tensors],
                                [(tensor.scalars, tensor.prior_v, tensor.prior_m, tensor.keep_v, tensor.keep_m)
                                 for tensor in tensors], range(len(tensors)))


__all__ = ["SMMFTritonCall", "range_tiles_own_their_signs", "smmf_many", "smmf_range"]
