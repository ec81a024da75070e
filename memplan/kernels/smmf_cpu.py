"""SMMF's step on a flat range of the n x m matricization, in one pass, compiled with numba.

Per element, with the scaled moments of :func:`memplan.optim.smmf._update_factored`
(``S = V_t / (1 - beta2_t)``, ``F = M_t / (1 - beta1_t)``)::

    S = G^2 + row_v'[i] col_v[j]        F = G + sign[i, j] row_m'[i] col_m[j]   (F = G without first moment)
    W <- W * decay + step_size * F / (sqrt(S) + eps)
    sign <- F > 0;   row and column sums of S and |F| added to the output vectors

where ``row_v'`` and ``row_m'`` are the previous row factors already multiplied by
``beta / (1 - beta)``. The range is split into one contiguous piece per thread (a multiple of 8
elements, so every packed sign byte belongs to one thread); a thread owns the row sums of the
rows inside its piece, keeps the partial sums of its first and last row apart, and accumulates
column sums in its own vector; both are combined after the parallel loop, in a fixed order.
Sums accumulate in float64. The pieces run on Python threads (the kernels release the GIL):
inside a numba ``prange`` body the same loops ran about ten times slower.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache

import numpy as np
import torch

from memplan.kernels.jit import kernel_threads, numba_module, run_in_threads
from memplan.kernels.scalars import DecayScalars

NO_SIGNS, PACKED_SIGNS, BYTE_SIGNS = 0, 1, 8
"""How the range's signs are stored: none (no first moment), 8 per byte, one byte each."""


@dataclass(frozen=True)
class SMMFScalars(DecayScalars):
    """The per-step scalars of the fused update (see the module docstring)."""

    step_size: float
    eps: float


TILE = 4096
"""Elements a thread handles at a time (a multiple of 8): its sign and moment buffers stay in L1/L2."""


def _build_kernel():
    numba = numba_module()

    fast = numba.njit(cache=True, nogil=True, fastmath={"reassoc"}, error_model="numpy")

    @fast
    def row_with_moment(weights, grads, flags, col_v, col_m, rv, rm, step_size, eps, decay, coupled, grad_sign,
                        col_sums_v, col_sums_m):
        """One row's piece (every array sliced to it): the update, the new sign flags (0/1, in
        place of the old ones) and the column sums; returns the row's sums."""
        sum_v = 0.0
        sum_m = 0.0
        for i in range(weights.shape[0]):
            weight = weights[i]
            gradient = grads[i] * grad_sign + coupled * weight
            second = gradient * gradient + rv * col_v[i]
            moment = gradient + (rm if flags[i] else -rm) * col_m[i]
            flags[i] = moment > 0
            magnitude = abs(moment)
            weights[i] = weight * decay + step_size * (moment / (np.sqrt(second) + eps))
            sum_v += second
            sum_m += magnitude
            col_sums_v[i] += second
            col_sums_m[i] += magnitude
        return sum_v, sum_m

    @fast
    def row_without_moment(weights, grads, col_v, rv, step_size, eps, decay, coupled, grad_sign, col_sums_v):
        """The same without first moment: the gradient is the update's numerator."""
        sum_v = 0.0
        for i in range(weights.shape[0]):
            weight = weights[i]
            gradient = grads[i] * grad_sign + coupled * weight
            second = gradient * gradient + rv * col_v[i]
            weights[i] = weight * decay + step_size * (gradient / (np.sqrt(second) + eps))
            sum_v += second
            col_sums_v[i] += second
        return sum_v

    @numba.njit(cache=True, nogil=True, error_model="numpy")
    def thread_piece(thread, per_thread, weights, grads, signs, sign_mode, start, cols, row_v, col_v, row_m, col_m,
                     step_size, eps, decay, coupled, grad_sign, new_row_v, new_row_m, col_partial, edge_rows, edge_sums,
                     spread, gather):
        """One thread's piece of the range (a function of its own: inside a prange body numba
        would type the index arithmetic as float64, and the loops would not vectorize)."""
        length = weights.shape[0]
        with_moment = sign_mode != 0
        first = thread * per_thread
        stop = min(length, first + per_thread)
        if first >= stop:
            return
        unpacked = np.zeros(TILE, dtype=np.uint8)
        words = unpacked.view(np.uint64)
        first_row = (start + first) // cols
        last_row = (start + stop - 1) // cols
        edge_rows[thread, 0] = first_row
        edge_rows[thread, 1] = last_row
        for tile_start in range(first, stop, TILE):
            tile_stop = min(stop, tile_start + TILE)
            byte_start = tile_start >> 3
            byte_count = (tile_stop - tile_start + 7) >> 3
            if sign_mode == 1:
                for word in range(byte_count):
                    words[word] = spread[signs[byte_start + word]]
                flags = unpacked
            elif sign_mode == 8:
                flags = signs[tile_start:tile_stop]
            else:
                flags = unpacked
            k = tile_start
            while k < tile_stop:
                row = (start + k) // cols
                col0 = start + k - row * cols
                end = min(tile_stop, k + cols - col0)
                col1 = col0 + end - k
                if with_moment:
                    sum_v, sum_m = row_with_moment(
                        weights[k:end], grads[k:end], flags[k - tile_start:end - tile_start], col_v[col0:col1],
                        col_m[col0:col1], row_v[row], row_m[row], step_size, eps, decay, coupled, grad_sign,
                        col_partial[thread, 0, col0:col1], col_partial[thread, 1, col0:col1])
                else:
                    sum_m = 0.0
                    sum_v = row_without_moment(weights[k:end], grads[k:end], col_v[col0:col1], row_v[row],
                                               step_size, eps, decay, coupled, grad_sign,
                                               col_partial[thread, 0, col0:col1])
                if row == first_row:
                    edge_sums[thread, 0, 0] += sum_v
                    edge_sums[thread, 0, 1] += sum_m
                elif row == last_row:
                    edge_sums[thread, 1, 0] += sum_v
                    edge_sums[thread, 1, 1] += sum_m
                else:
                    new_row_v[row] += sum_v
                    if with_moment:
                        new_row_m[row] += sum_m
                k = end
            if sign_mode == 1:
                unpacked[tile_stop - tile_start:byte_count * 8] = 0  # padding bits of the range's last byte
                for word in range(byte_count):
                    signs[byte_start + word] = np.uint8((words[word] * gather) >> np.uint64(56))

    @numba.njit(cache=True, nogil=True, error_model="numpy")
    def pieces(weights, grads, signs, sign_mode, start, cols, row_v, col_v, row_m, col_m, step_size, eps, decay,
               coupled, grad_sign, new_row_v, new_row_m, per_thread, col_partial, edge_rows, edge_sums, spread, low,
               high):
        """The pieces ``low`` to ``high`` of the range (one per thread), one after the other."""
        gather = np.uint64(0x0102040810204080)  # bit j of the top byte of word * gather = byte j of word
        for thread in range(low, high):
            thread_piece(thread, per_thread, weights, grads, signs, sign_mode, start, cols, row_v, col_v, row_m,
                         col_m, step_size, eps, decay, coupled, grad_sign, new_row_v, new_row_m, col_partial,
                         edge_rows, edge_sums, spread, gather)

    @numba.njit(cache=True, nogil=True, error_model="numpy")
    def combine(new_row_v, new_col_v, new_row_m, new_col_m, col_partial, edge_rows, edge_sums, with_moment):
        """Add the pieces' edge rows and column partial sums to the outputs, in a fixed order."""
        threads, _, cols = col_partial.shape
        for thread in range(threads):
            for edge in range(2):
                row = edge_rows[thread, edge]
                if row < 0 or (edge == 1 and row == edge_rows[thread, 0]):
                    continue
                new_row_v[row] += edge_sums[thread, edge, 0]
                if with_moment:
                    new_row_m[row] += edge_sums[thread, edge, 1]
        for col in range(cols):
            total_v = 0.0
            total_m = 0.0
            for thread in range(threads):
                total_v += col_partial[thread, 0, col]
                total_m += col_partial[thread, 1, col]
            new_col_v[col] += total_v
            if with_moment:
                new_col_m[col] += total_m

    return pieces, combine


@cache
def _kernel():
    """The compiled kernels, built (or read from numba's cache) on first use."""
    return _build_kernel()


def smmf_range(weights: torch.Tensor, grads: torch.Tensor, signs: torch.Tensor | None, start: int, cols: int,
               scaled_v: tuple[torch.Tensor, torch.Tensor], scaled_m: tuple[torch.Tensor, torch.Tensor] | None,
               new_v: tuple[torch.Tensor, torch.Tensor], new_m: tuple[torch.Tensor, torch.Tensor] | None,
               scalars: SMMFScalars, chunk_elements: int | None = None) -> None:
    """Step the elements ``[start, start + weights.numel())`` of an n x ``cols`` matricization.

    ``weights`` and ``grads`` are the range's flat, contiguous CPU tensors (updated in place);
    ``signs`` the range's signs (uint8: packed, bit j of byte i is element 8 i + j of the range;
    bool: one per element), None without first moment; ``scaled_v`` and ``scaled_m`` the
    previous (row', col) factors (see the module docstring), full length and read-only; the
    range's row and column sums of S and |F| are added into ``new_v`` and ``new_m``. fp32 and
    float64 run as they are; narrower floats are stepped through fp32 copies of at most
    ``chunk_elements`` elements (a multiple of 8) at a time.
    """
    working = weights.dtype if weights.dtype.itemsize >= 4 else torch.float32
    length = weights.numel()
    if working == weights.dtype and grads.dtype == working:
        _run(weights, grads, signs, start, cols, scaled_v, scaled_m, new_v, new_m, scalars, working)
        return
    piece = max(8, (chunk_elements or length) // 8 * 8)
    for offset in range(0, length, piece):
        stop = min(length, offset + piece)
        weight = weights[offset:stop].to(working)
        piece_signs = None if signs is None else _sign_slice(signs, offset, stop)
        _run(weight, grads[offset:stop].to(working), piece_signs, start + offset, cols, scaled_v, scaled_m,
             new_v, new_m, scalars, working)
        weights[offset:stop].copy_(weight)


def _sign_slice(signs: torch.Tensor, offset: int, stop: int) -> torch.Tensor:
    """The signs of range elements ``[offset, stop)`` (``offset`` a multiple of 8)."""
    flat = signs.view(-1)
    return flat[offset // 8:(stop + 7) // 8] if flat.dtype == torch.uint8 else flat[offset:stop]


def _run(weights, grads, signs, start, cols, scaled_v, scaled_m, new_v, new_m, scalars, working) -> None:
    numpy_float = np.float32 if working == torch.float32 else np.float64
    length = weights.numel()
    if signs is None:
        mode, sign_array = NO_SIGNS, np.zeros(0, dtype=np.uint8)
        row_m = col_m = np.zeros(0, dtype=numpy_float)
        new_row_m = new_col_m = np.zeros(0, dtype=np.float32)
    else:
        flat = signs.view(-1)
        mode = PACKED_SIGNS if flat.dtype == torch.uint8 else BYTE_SIGNS
        sign_array = flat.view(torch.uint8).numpy()
        row_m, col_m = (_array(vector, working) for vector in scaled_m)
        new_row_m, new_col_m = (vector.numpy() for vector in new_m)
    row_v, col_v = (_array(vector, working) for vector in scaled_v)
    threads = kernel_threads(length)
    per_thread = ((length + threads - 1) // threads + 7) // 8 * 8
    col_partial = np.zeros((threads, 2, cols), dtype=np.float64)
    edge_rows = np.full((threads, 2), -1, dtype=np.int64)
    edge_sums = np.zeros((threads, 2, 2), dtype=np.float64)
    new_row_v, new_col_v = (vector.numpy() for vector in new_v)
    pieces, combine = _kernel()
    arguments = (weights.numpy(), grads.numpy(), sign_array, mode, start, cols, row_v, col_v, row_m, col_m,
                 numpy_float(scalars.step_size), numpy_float(scalars.eps), numpy_float(scalars.decay),
                 numpy_float(scalars.coupled_decay), numpy_float(scalars.grad_sign), new_row_v, new_row_m,
                 per_thread, col_partial, edge_rows, edge_sums, _spread_table())
    run_in_threads(lambda low, high: pieces(*arguments, low, high), threads)
    combine(new_row_v, new_col_v, new_row_m, new_col_m, col_partial, edge_rows, edge_sums, mode != NO_SIGNS)


@cache
def _spread_table() -> np.ndarray:
    """Byte b spread over a uint64's 8 bytes: byte j is bit j of b."""
    bits = (np.arange(256, dtype=np.uint64)[:, None] >> np.arange(8, dtype=np.uint64)) & np.uint64(1)
    return (bits << (np.arange(8, dtype=np.uint64) * np.uint64(8))).sum(axis=1).astype(np.uint64)


def _array(vector: torch.Tensor, dtype: torch.dtype) -> np.ndarray:
    return vector.to(dtype).contiguous().numpy()


__all__ = ["SMMFScalars", "smmf_range"]
