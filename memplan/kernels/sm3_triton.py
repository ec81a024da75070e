"""SM3's one-pass step as Triton kernels (CUDA tensors; tested on CPU tensors under
``TRITON_INTERPRET=1``): on a flat range of one parameter's cover view, or on many whole
parameters at once (SM3-II).

The same update as :mod:`memplan.kernels.sm3_cpu`. Both see a cover (at most :data:`MAX_AXES`
axes) as a matrix and step it in tiles (below); :func:`sm3_range` masks each tile to its range
``[start, start + length)`` of the flat view (a rank's shard), whose positions are the tile's
matrix positions minus ``start``. The new slice maxima go to the output vectors by atomic max
(exact: max is order-free, and nu >= 0).

:func:`sm3_many` steps many whole parameters with SM3-II in one launch of the update kernel: the
new slice maxima of every tensor go to one flat fp32 buffer (zero-filled: nu >= 0), which one
launch of a finalize kernel then copies over the accumulators. Its programs each take a tile of
``TILE_ROWS`` x ``TILE_COLS`` elements of the tensor seen as a matrix: the rows are its cover's
leading axes, the columns its trailing ones (the fewest whose product reaches :data:`MIN_COLS`). A
tile reads one accumulator entry per row for each leading axis and one per column for each trailing
axis, reduces its maxima of nu over its columns and rows in registers, and adds one atomic per row
or column and axis, where a program over a flat block adds one per element and axis (on a GPU
atomics to one address serialise, and every element of a row hits its row's). The kernels reach the
tensors through a table uploaded once per call (without waiting for the device: through pinned
memory): per tensor, the ``data_ptr`` of its weights, gradients, momentum buffer and accumulators,
then its scalars (as the int64 bits of float64 values). Each tensor's cover (dims, strides and the
offsets of its maxima in the buffer, padded to :data:`MAX_AXES` axes) and which tensor and which
block of it each program steps depend only on the views; those tables are built with numpy and
cached, so a training loop that steps the same parameters every step reuses them. The optimizer
keeps a :class:`SM3TritonCall`, which makes its checks and the per-call table's addresses once.
"""

from __future__ import annotations

import math
from functools import cache, lru_cache
from typing import NamedTuple, Sequence

import numpy as np
import torch

from memplan.kernels.jit import gradient_addresses
from memplan.kernels.launch import TRITON_DTYPES, import_triton_helpers, program_table, upload
from memplan.kernels.sm3_cpu import SM3Scalars, SM3Tensor

TILE_ROWS = 8
TILE_COLS = 128
MIN_COLS = 32
"""A tile's columns are a cover's trailing axes, the fewest whose product is at least this (all of
them where the whole view is smaller): a 3 x 3 convolution's last axes alone would leave most of a
tile's columns empty."""
MAX_AXES = 8
_entries = None
"""memplan.kernels.triton_entries once a kernel factory has run (see :func:`import_triton_helpers`)."""
VECTOR_BLOCK = 1024
"""Accumulator elements that a finalize program of :func:`sm3_many` copies at a time."""


@cache
def _kernel():
    import triton
    import triton.language as tl

    import_triton_helpers(globals())

    @triton.jit
    def sm3_kernel(weights, grads, buffer, accumulators, maxima, dims, strides, offsets, start, length, cols,
                   first_row, band_tiles, head, lr, eps, momentum, dampening, decay, coupled, grad_sign,
                   AXES: tl.constexpr, MODE: tl.constexpr, WITH_BUFFER: tl.constexpr, TILE_ROWS: tl.constexpr,
                   TILE_COLS: tl.constexpr):
        """A tile of the cover seen as a (leading axes) x (trailing axes) matrix, those of its
        elements inside the range ``[start, start + length)``; MODE 0 is SM3-II's step, 1 SM3-I's
        update, 2 SM3-I's first pass (the slice maxima of G^2, no update)."""
        program = tl.program_id(0)
        row = first_row + (program // band_tiles) * TILE_ROWS + tl.arange(0, TILE_ROWS)
        col = (program % band_tiles) * TILE_COLS + tl.arange(0, TILE_COLS)
        positions = row[:, None] * cols + col[None, :] - start   # within the range
        inside = (col < cols)[None, :] & (positions >= 0) & (positions < length)
        row_in = tl.max(inside.to(tl.int32), 1) > 0
        col_in = tl.max(inside.to(tl.int32), 0) > 0
        weight = tl.load(weights + positions, mask=inside, other=0.0)
        compute = weight.dtype if weight.dtype == tl.float64 else tl.float32
        weight = weight.to(compute)
        gradient = tl.load(grads + positions, mask=inside, other=0.0).to(compute) * grad_sign + coupled * weight
        square = gradient * gradient
        if MODE != 2:
            # the minimum of the accumulators: over the leading axes per row, over the trailing per column
            row_nu = tl.full((TILE_ROWS,), float("inf"), compute)
            col_nu = tl.full((TILE_COLS,), float("inf"), compute)
            for axis in tl.static_range(AXES):
                dim = tl.load(dims + axis)
                stride = tl.load(strides + axis)
                slots = accumulators + tl.load(offsets + axis)
                if axis < head:   # (names of their own in each branch: the compiler yields a variable both assign)
                    row_at = (row // (stride // cols)) % dim
                    row_nu = tl.minimum(row_nu, tl.load(slots + row_at, mask=row_in, other=float("inf")).to(compute))
                else:
                    col_at = (col // stride) % dim
                    col_nu = tl.minimum(col_nu, tl.load(slots + col_at, mask=col_in, other=float("inf")).to(compute))
            nu = tl.minimum(row_nu[:, None], col_nu[None, :])
            if MODE == 0:
                nu = nu + square
        if MODE != 1:   # the slice maxima: of G^2 (SM3-I's first pass) or of nu (SM3-II), one atomic per row or column
            if MODE == 2:
                kept = tl.where(inside, square, 0.0).to(tl.float32)
            else:
                kept = tl.where(inside, nu, 0.0).to(tl.float32)   # 0 outside: nu >= 0 never falls below it
            row_maxima = _entries.nan_max(kept, 1)
            col_maxima = _entries.nan_max(kept, 0)
            for axis in tl.static_range(AXES):
                dim = tl.load(dims + axis)
                stride = tl.load(strides + axis)
                slots = maxima + tl.load(offsets + axis)
                if axis < head:
                    tl.atomic_max(slots + (row // (stride // cols)) % dim, row_maxima, mask=row_in)
                else:
                    tl.atomic_max(slots + (col // stride) % dim, col_maxima, mask=col_in)
        if MODE != 2:
            scaled = gradient * (1.0 / tl.sqrt(nu + eps))
            if WITH_BUFFER:
                moving = tl.load(buffer + positions, mask=inside, other=0.0) * momentum + dampening * scaled
                tl.store(buffer + positions, moving, mask=inside)
                updated = weight * decay - lr * moving
            else:
                updated = weight * decay - lr * scaled
            tl.store(weights + positions, updated.to(weights.dtype.element_ty), mask=inside)

    return sm3_kernel


def _launch(weights, grads, start, view, accumulators, outputs, buffer, scalars, mode) -> None:
    length = weights.numel()
    if length == 0:
        return
    if len(view) > MAX_AXES:
        raise ValueError(f"the Triton SM3 kernel takes covers of at most {MAX_AXES} axes, got {len(view)}")
    dims, strides, offsets = cover_tables(tuple(view), weights.device)
    head = leading_axes(tuple(view), MIN_COLS)
    cols = math.prod(view[head:])
    first_row = start // cols
    band_tiles = -(-cols // TILE_COLS)
    bands = -(-((start + length - 1) // cols - first_row + 1) // TILE_ROWS)
    stacked = torch.cat([accumulator.reshape(-1) for accumulator in accumulators])
    maxima = torch.cat([output.reshape(-1) for output in outputs]) if outputs is not None else stacked
    _kernel()[(bands * band_tiles,)](
        weights, grads, weights if buffer is None else buffer, stacked, maxima, dims, strides, offsets, start, length,
        cols, first_row, band_tiles, head, scalars.lr, scalars.eps, scalars.momentum, 1.0 - scalars.momentum,
        scalars.decay, scalars.coupled_decay, scalars.grad_sign, AXES=len(view), MODE=mode,
        WITH_BUFFER=buffer is not None, TILE_ROWS=TILE_ROWS, TILE_COLS=TILE_COLS)
    if outputs is not None:
        for output, piece in zip(outputs, maxima.split(list(view))):
            output.view(-1).copy_(piece)


@lru_cache(maxsize=256)
def cover_tables(view: tuple[int, ...], device: torch.device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The cover's dims, strides and the offsets of each axis's accumulator in the stacked ones
    (int64, on ``device``), made once per view and device: uploaded through pinned memory, so a
    step waits for no device work (a tensor built from a list on a GPU waits for the stream)."""
    dims = np.array(view, dtype=np.int64)
    strides = np.array([math.prod(view[axis + 1:]) for axis in range(len(view))], dtype=np.int64)
    offsets = np.array([sum(view[:axis]) for axis in range(len(view))], dtype=np.int64)
    return upload(dims, device), upload(strides, device), upload(offsets, device)


def sm3_range(weights: torch.Tensor, grads: torch.Tensor, start: int, view: tuple[int, ...],
              accumulators: list[torch.Tensor], new_maxima: list[torch.Tensor] | None,
              buffer: torch.Tensor | None, scalars: SM3Scalars) -> None:
    """The Triton counterpart of :func:`memplan.kernels.sm3_cpu.sm3_range` (same arguments)."""
    _launch(weights, grads, start, view, accumulators, new_maxima, buffer, scalars, 0 if new_maxima is not None else 1)


def sm3_square_maxima_range(weights: torch.Tensor, grads: torch.Tensor, start: int, view: tuple[int, ...],
                            maxima: list[torch.Tensor], scalars: SM3Scalars) -> None:
    """The Triton counterpart of :func:`memplan.kernels.sm3_cpu.sm3_square_maxima_range`."""
    _launch(weights, grads, start, view, maxima, maxima, None, scalars, 2)


# sm3_many's per-call table, one int64 row per tensor: the data pointers of its weights, grads and
# momentum buffer (0 without), the float64 bits of its lr, eps, momentum, dampening, decay, coupled
# decay and gradient sign, then the data pointers of its MAX_AXES accumulators (0 past its last
# axis). Its cached cover table: numel, axes, the leading axes that are a tile's rows, the columns
# (the trailing axes' product), tiles per band of TILE_ROWS rows, then per axis its dim, stride and
# the offset of its maxima in the flat maxima buffer (1, 1, 0 past the last axis). The kernels read
# both at these fixed offsets.
_TABLE_FIELDS = 10 + MAX_AXES
_COVER_FIELDS = 5 + 3 * MAX_AXES


@cache
def _many_kernels():
    import triton
    import triton.language as tl

    import_triton_helpers(globals())

    @triton.jit
    def sm3_many_kernel(table, covers, programs, maxima, FIELDS: tl.constexpr, COVER_FIELDS: tl.constexpr,
                        DTYPE: tl.constexpr, COMPUTE: tl.constexpr, AXES: tl.constexpr, WITH_BUFFER: tl.constexpr,
                        INDEX: tl.constexpr, TILE_ROWS: tl.constexpr, TILE_COLS: tl.constexpr):
        """A tile of one tensor seen as a (leading axes) x (trailing axes) matrix (see the module
        docstring)."""
        program = tl.program_id(0)
        tensor = tl.load(programs + 2 * program)
        tile = tl.load(programs + 2 * program + 1)
        cover = covers + COVER_FIELDS * tensor
        length = tl.load(cover).to(INDEX)
        axes = tl.load(cover + 1)
        head = tl.load(cover + 2)
        cols = tl.load(cover + 3).to(INDEX)
        band_tiles = tl.load(cover + 4).to(tl.int32)
        rows = length // cols
        row = (tile // band_tiles).to(INDEX) * TILE_ROWS + tl.arange(0, TILE_ROWS)
        col = (tile % band_tiles).to(INDEX) * TILE_COLS + tl.arange(0, TILE_COLS)
        row_in = row < rows
        col_in = col < cols
        inside = row_in[:, None] & col_in[None, :]
        offsets = row[:, None] * cols + col[None, :]
        entry = table + FIELDS * tensor
        weights = tl.load(entry).to(tl.pointer_type(DTYPE))
        grads = tl.load(entry + 1).to(tl.pointer_type(DTYPE))
        lr = tl.load(entry + 3).to(tl.float64, bitcast=True).to(COMPUTE)
        eps = tl.load(entry + 4).to(tl.float64, bitcast=True).to(COMPUTE)
        decay = tl.load(entry + 7).to(tl.float64, bitcast=True).to(COMPUTE)
        coupled = tl.load(entry + 8).to(tl.float64, bitcast=True).to(COMPUTE)
        grad_sign = tl.load(entry + 9).to(tl.float64, bitcast=True).to(COMPUTE)
        weight = tl.load(weights + offsets, mask=inside, other=0.0).to(COMPUTE)
        gradient = tl.load(grads + offsets, mask=inside, other=0.0).to(COMPUTE) * grad_sign + coupled * weight
        # the minimum of the accumulators: over the leading axes per row, over the trailing per column
        row_nu = tl.full((TILE_ROWS,), float("inf"), COMPUTE)
        col_nu = tl.full((TILE_COLS,), float("inf"), COMPUTE)
        for axis in tl.static_range(AXES):   # AXES is the batch's most; axes past a tensor's own are skipped
            dim = tl.load(cover + 5 + 3 * axis).to(INDEX)
            stride = tl.load(cover + 6 + 3 * axis).to(INDEX)
            accumulator = tl.load(entry + 10 + axis).to(tl.pointer_type(tl.float32))
            if axis < head:
                at = (row // (stride // cols)) % dim
                row_nu = tl.minimum(row_nu, tl.load(accumulator + at, mask=row_in, other=float("inf")).to(COMPUTE))
            elif axis < axes:
                at = (col // stride) % dim
                col_nu = tl.minimum(col_nu, tl.load(accumulator + at, mask=col_in, other=float("inf")).to(COMPUTE))
        nu = tl.minimum(row_nu[:, None], col_nu[None, :]) + gradient * gradient
        kept = tl.where(inside, nu, 0.0).to(tl.float32)   # 0 outside: nu >= 0 never falls below it
        row_maxima = _entries.nan_max(kept, 1)
        col_maxima = _entries.nan_max(kept, 0)
        for axis in tl.static_range(AXES):
            dim = tl.load(cover + 5 + 3 * axis).to(INDEX)
            stride = tl.load(cover + 6 + 3 * axis).to(INDEX)
            slots = maxima + tl.load(cover + 7 + 3 * axis)
            if axis < head:
                tl.atomic_max(slots + (row // (stride // cols)) % dim, row_maxima, mask=row_in)
            elif axis < axes:
                tl.atomic_max(slots + (col // stride) % dim, col_maxima, mask=col_in)
        scaled = gradient * (1.0 / tl.sqrt(nu + eps))
        if WITH_BUFFER:
            # a tensor without a buffer has momentum 0 and dampening 1 in the table: moving = scaled exactly
            address = tl.load(entry + 2)
            buffer = address.to(tl.pointer_type(tl.float32))
            buffered = inside & (offsets < tl.where(address != 0, length, 0))   # a block of booleans
            momentum = tl.load(entry + 5).to(tl.float64, bitcast=True).to(tl.float32)
            dampening = tl.load(entry + 6).to(tl.float64, bitcast=True).to(COMPUTE)
            moving = tl.load(buffer + offsets, mask=buffered, other=0.0) * momentum + dampening * scaled
            tl.store(buffer + offsets, moving.to(tl.float32), mask=buffered)
            updated = weight * decay - lr * moving
        else:
            updated = weight * decay - lr * scaled
        tl.store(weights + offsets, updated.to(DTYPE), mask=inside)

    @triton.jit
    def sm3_finalize_kernel(table, covers, maxima, FIELDS: tl.constexpr, COVER_FIELDS: tl.constexpr,
                            AXES: tl.constexpr, BLOCK: tl.constexpr):
        """One tensor's accumulators replaced by its slice maxima."""
        tensor = tl.program_id(0)
        cover = covers + COVER_FIELDS * tensor
        axes = tl.load(cover + 1)
        entry = table + FIELDS * tensor
        for axis in tl.static_range(AXES):
            length = tl.where(axis < axes, tl.load(cover + 5 + 3 * axis), 0)
            source = maxima + tl.load(cover + 7 + 3 * axis)
            accumulator = tl.load(entry + 10 + axis).to(tl.pointer_type(tl.float32))
            for first in range(0, length, BLOCK):
                at = first + tl.arange(0, BLOCK)
                tl.store(accumulator + at, tl.load(source + at, mask=at < length), mask=at < length)

    return sm3_many_kernel, sm3_finalize_kernel


class _Batch(NamedTuple):
    """The launch tables of one list of cover views (see :func:`_batch`)."""

    covers: torch.Tensor
    """int64 (tensors, 5 + 3 MAX_AXES): numel, axes, leading axes, columns, tiles per band, and per
    axis its dim, stride and maxima offset."""
    programs: torch.Tensor
    """int32 (programs, 2): the tensor each program steps, and which tile of it (row-band major)."""
    program_count: int
    maxima_length: int
    axes: int
    """The most axes of a view."""
    wide: bool
    """Whether element indices, padded to whole tiles, need int64 (int32 otherwise: cheaper division)."""


def leading_axes(view: tuple[int, ...], min_cols: int) -> int:
    """How many of the cover's leading axes are a tile's rows: all but the fewest trailing axes
    whose product reaches ``min_cols`` (0, every axis a column, where the whole view is smaller)."""
    cols = 1
    for axis in range(len(view) - 1, -1, -1):
        cols *= view[axis]
        if cols >= min_cols:
            return axis
    return 0


@lru_cache(maxsize=16)
def _batch(views: tuple[tuple[int, ...], ...], tile: tuple[int, int], min_cols: int, device: torch.device) -> _Batch:
    """The launch tables of tensors with these cover ``views``, stepped in tiles of ``tile`` (rows,
    columns), on ``device``; cached, as a training loop steps the same shapes every step."""
    tile_rows, tile_cols = tile
    covers = np.zeros((len(views), _COVER_FIELDS), dtype=np.int64)
    covers[:, 5:] = np.tile([1, 1, 0], MAX_AXES)
    offset = 0
    for tensor, view in enumerate(views):
        head = leading_axes(view, min_cols)
        cols = math.prod(view[head:])
        covers[tensor, :5] = (math.prod(view), len(view), head, cols, -(-cols // tile_cols))
        for axis, dim in enumerate(view):
            covers[tensor, 5 + 3 * axis:8 + 3 * axis] = (dim, math.prod(view[axis + 1:]), offset)
            offset += dim
    numel, cols, band_tiles = covers[:, 0], np.maximum(covers[:, 3], 1), covers[:, 4]
    bands = -(-(numel // cols) // tile_rows)
    programs = program_table(np.where(numel > 0, bands * band_tiles, 0))
    reach = bands * tile_rows * cols + band_tiles * tile_cols
    return _Batch(upload(covers, device), upload(programs, device), len(programs), offset,
                  max(len(view) for view in views), bool(reach.max() >= 2 ** 31))


def _check_batch(tensors: Sequence[SM3Tensor]) -> torch.dtype:
    """The batch's weights dtype; ValueError where a tensor does not fit the kernel."""
    dtype = tensors[0].weights.dtype
    device = tensors[0].weights.device
    if dtype not in TRITON_DTYPES:
        raise ValueError(f"sm3_many steps fp32, float64, bf16 or fp16 weights, got {dtype}")
    for index, tensor in enumerate(tensors):
        if tensor.weights.dtype != dtype or tensor.grads.dtype != dtype:
            raise ValueError(f"sm3_many: every weight and gradient must be {dtype} (the first tensor's); "
                             f"tensor {index} has {tensor.weights.dtype} weights and {tensor.grads.dtype} gradients")
        if not 1 <= len(tensor.view) <= MAX_AXES:
            raise ValueError(f"the Triton SM3 kernel takes covers of 1 to {MAX_AXES} axes, got {len(tensor.view)} "
                             f"(tensor {index})")
        length = tensor.weights.numel()
        if tensor.weights.device != device or not (tensor.weights.is_contiguous() and tensor.grads.is_contiguous()) \
                or tensor.grads.numel() != length or math.prod(tensor.view) != length:
            raise ValueError(f"sm3_many: tensor {index}'s weights and gradients must be contiguous, on {device}, "
                             f"with as many elements as its view {tensor.view}")
        if len(tensor.accumulators) != len(tensor.view) or any(
                accumulator.dtype != torch.float32 or accumulator.numel() != dim or not accumulator.is_contiguous()
                for accumulator, dim in zip(tensor.accumulators, tensor.view)):
            raise ValueError(f"sm3_many: tensor {index}'s accumulators must be contiguous fp32 vectors, one per axis "
                             f"of its view {tensor.view}")
        if tensor.buffer is not None and (tensor.buffer.dtype != torch.float32 or tensor.buffer.numel() != length
                                          or not tensor.buffer.is_contiguous()):
            raise ValueError(f"sm3_many: tensor {index}'s momentum buffer must be a contiguous fp32 tensor of its size")
    return dtype


class SM3TritonCall:
    """A multi-tensor SM3-II call (:func:`sm3_many`) prepared once for its tensors and run every
    step with that step's gradients and scalars: the checks, the cover tables and the addresses of
    the weights, momentum buffers and accumulators are made here, once (as
    :class:`memplan.kernels.sm3_cpu.SM3Call` does for the CPU kernel); a step writes the gradients'
    addresses and the scalars into the per-call table, uploads it and launches.

    The call keeps its tensors (its table points into them); a caller that replaces any of them
    prepares a new call.
    """

    def __init__(self, tensors: Sequence[SM3Tensor]) -> None:
        if not tensors:
            raise ValueError("SM3TritonCall: no tensors")
        self._dtype = _check_batch(tensors)
        self._device = tensors[0].weights.device
        self._tensors = list(tensors)   # kept: the table points into them
        self._weights = [tensor.weights for tensor in tensors]
        self._buffered = np.array([tensor.buffer is not None for tensor in tensors])
        self._batch = _batch(tuple(tuple(int(dim) for dim in tensor.view) for tensor in tensors),
                             (TILE_ROWS, TILE_COLS), MIN_COLS, self._device)
        self._blocks = (TILE_ROWS, TILE_COLS, VECTOR_BLOCK)
        self._table = np.zeros((len(tensors), _TABLE_FIELDS), dtype=np.int64)
        for row, tensor in enumerate(tensors):
            self._table[row, :3] = (tensor.weights.data_ptr(), tensor.grads.data_ptr(),
                                    0 if tensor.buffer is None else tensor.buffer.data_ptr())
            self._table[row, 10:10 + len(tensor.accumulators)] = [accumulator.data_ptr()
                                                                  for accumulator in tensor.accumulators]

    def run(self, grads: Sequence[torch.Tensor], scalars: SM3Scalars | Sequence[SM3Scalars]) -> None:
        """Step every tensor with ``grads`` (one per tensor: contiguous, on the weights' device, of
        their dtype and size) and ``scalars`` (one for all, or one per tensor), and replace the
        accumulators by the new slice maxima. No host synchronisation."""
        self._table[:, 1] = gradient_addresses("sm3_many", grads, self._weights, self._device)
        values = self._table[:, 3:10].view(np.float64)
        if isinstance(scalars, SM3Scalars):
            values[:] = _scalar_row(scalars, False)
            values[self._buffered] = _scalar_row(scalars, True)
        else:
            values[:] = [_scalar_row(row, buffered) for row, buffered in zip(scalars, self._buffered)]
        self._launch(upload(self._table, self._device))

    def _launch(self, table: torch.Tensor) -> None:
        import triton.language as tl

        batch = self._batch
        tile_rows, tile_cols, vector_block = self._blocks
        maxima = torch.zeros(batch.maxima_length, dtype=torch.float32, device=self._device)
        update, finalize = _many_kernels()
        if batch.program_count:
            update[(batch.program_count,)](table, batch.covers, batch.programs, maxima, FIELDS=_TABLE_FIELDS,
                                           COVER_FIELDS=_COVER_FIELDS,
                                           DTYPE=getattr(tl, TRITON_DTYPES[self._dtype]),
                                           COMPUTE=tl.float64 if self._dtype == torch.float64 else tl.float32,
                                           AXES=batch.axes, WITH_BUFFER=bool(self._buffered.any()),
                                           INDEX=tl.int64 if batch.wide else tl.int32, TILE_ROWS=tile_rows,
                                           TILE_COLS=tile_cols)
        finalize[(len(self._tensors),)](table, batch.covers, maxima, FIELDS=_TABLE_FIELDS, COVER_FIELDS=_COVER_FIELDS,
                                        AXES=batch.axes, BLOCK=vector_block)


def _scalar_row(scalars: SM3Scalars, buffered: bool) -> tuple[float, ...]:
    """A tensor's scalars in the per-call table's order: a tensor without a momentum buffer takes
    momentum 0 and dampening 1 (its update is the scaled gradient itself)."""
    momentum = scalars.momentum if buffered else 0.0
    return (scalars.lr, scalars.eps, momentum, 1.0 - momentum, scalars.decay, scalars.coupled_decay,
            scalars.grad_sign)


def sm3_many(tensors: Sequence[SM3Tensor]) -> None:
    """Step every tensor whole with SM3-II and replace its accumulators by the new slice maxima, in
    one launch of the update kernel.

    Per tensor, what :func:`sm3_range` does on ``[0, numel)`` of its view with new maxima (nu = the
    minimum of its accumulators + G^2; the update, through its momentum buffer when it has one),
    then its accumulators are overwritten by the slice maxima of nu, as the optimizer's SM3-II step
    does. The tensors share the weights dtype (fp32, float64, bf16 or fp16; the math is fp32, float64
    for float64), and their views have 1 to :data:`MAX_AXES` axes; ValueError otherwise. No host
    synchronisation; an empty list is a no-op. A training loop keeps a :class:`SM3TritonCall`
    instead, which checks and builds the tables once.
    """
    if not tensors:
        return
    SM3TritonCall(tensors).run([tensor.grads for tensor in tensors], [tensor.scalars for tensor in tensors])


__all__ = ["SM3TritonCall", "cover_tables", "sm3_many", "sm3_range", "sm3_square_maxima_range"]
