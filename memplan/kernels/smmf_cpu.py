"""SMMF's step on a flat range of the n x m matricization, in one pass, compiled with numba.

Per element, with the scaled moments of :func:`memplan.optim.smmf._update_factored`
(``S = V_t / (1 - beta2_t)``, ``F = M_t / (1 - beta1_t)``)::

    S = G^2 + row_v'[i] col_v[j]        F = G + sign[i, j] row_m'[i] col_m[j]   (F = G without first moment)
    W <- W * decay + step_size * F / (sqrt(S) + eps)
    sign <- F > 0;   row and column sums of S and |F| added to the output vectors

where ``row_v'`` and ``row_m'`` are the previous row factors multiplied by ``beta / (1 - beta)``.

One kernel call steps a table of ranges, reached through their addresses: a rank's range of one
parameter (:func:`smmf_range`, whose caller reduces the sums across ranks and stores the factors),
or many whole parameters (:func:`smmf_many`, which also stores their new factors: one call per
step however many small tensors a model has). The ranges are cut into items that start at a
multiple of 8 elements (every packed sign byte belongs to one item), and the items into pieces,
contiguous runs of about equal size (:func:`memplan.kernels.jit.split_work`), a few per thread,
which the threads take as they finish one (:func:`memplan.kernels.jit.run_in_threads`). An item
with enough rows is stepped two row pieces at a time, one from each of its halves
(:func:`memplan.kernels.smmf_numba.paired_item`): a loop that reads one row at a time keeps too few
of memory's reads in flight (benchmarks/RESULTS.md). A piece's
row and column sums go into its own float64 partial vectors (with fp32 weights, through fp32 sums
of a row piece and of up to 16 row pieces per column: :data:`memplan.kernels.smmf_numba.BLOCK_ROWS`);
after the threads join, each range's partials are combined in piece order, so the result does not
depend on which thread ran what. The
threads are Python threads running ``nogil`` kernels: inside a numba ``prange`` body the same loops
ran about ten times slower.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache, lru_cache
from typing import Sequence

import numpy as np
import torch

from memplan.kernels.jit import (batch_dtype, compile_ahead, compile_in_child, dtype_like, gradient_addresses,
                                 kernel_pieces, piece_origins, run_in_threads, split_work)
from memplan.kernels.scalars import DecayScalars
from memplan.kernels.smmf_tables import (ADD_SUMS, ADDRESSES, BYTE_SIGNS, NO_SIGNS, PACKED_SIGNS, SCALARS,
                                         STORE_FACTORS)


@dataclass(frozen=True)
class SMMFScalars(DecayScalars):
    """The per-step scalars of the fused update (see the module docstring)."""

    step_size: float
    eps: float


@dataclass(frozen=True, slots=True)
class SMMFTensor:
    """One parameter of a multi-tensor step (:func:`smmf_many`), stepped whole: its contiguous
    weights and gradients (any shape, read in row-major order; fp32 or float64, the same dtype), its
    contiguous signs (packed uint8 or one bool per element; None without first moment) and its
    factors (the optimizer's state, read as the previous factors and overwritten by the new,
    normalised ones).

    ``prior_v`` and ``prior_m`` multiply the previous row factors (beta_t / (1 - beta_t), see
    :func:`memplan.optim.smmf._update_factored`); ``keep_v`` and ``keep_m`` (1 - beta_t) multiply the
    new row and column sums before normalisation; ``scalars`` are this tensor's step's.
    """

    weights: torch.Tensor
    grads: torch.Tensor
    signs: torch.Tensor | None
    cols: int
    row_v: torch.Tensor
    col_v: torch.Tensor
    row_m: torch.Tensor | None
    col_m: torch.Tensor | None
    scalars: SMMFScalars
    prior_v: float
    prior_m: float
    keep_v: float
    keep_m: float


@cache
def _kernel():
    """The numba kernels (walk, combine), imported on first use and loaded from numba's cache, each
    signature compiled into it by a child process first where it is missing (see
    :func:`~memplan.kernels.jit.compile_in_child`)."""
    from memplan.kernels import smmf_numba

    return compile_in_child(smmf_numba.walk), compile_in_child(smmf_numba.combine)


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
        _run_range(weights, grads, signs, start, cols, scaled_v, scaled_m, new_v, new_m, scalars, working)
        return
    piece = max(8, (chunk_elements or length) // 8 * 8)
    for offset in range(0, length, piece):
        stop = min(length, offset + piece)
        weight = weights[offset:stop].to(working)
        piece_signs = None if signs is None else _sign_slice(signs, offset, stop)
        _run_range(weight, grads[offset:stop].to(working), piece_signs, start + offset, cols, scaled_v, scaled_m,
                   new_v, new_m, scalars, working)
        weights[offset:stop].copy_(weight)


def smmf_many(tensors: list[SMMFTensor]) -> None:
    """Step every tensor whole and store its new factors, in one kernel call (see :class:`SMMFTensor`).

    All tensors share the weights' dtype (fp32 or float64) and whether they keep signs (and how:
    packed or one bool each); the factors are fp32 state.
    """
    if not tensors:
        return
    scalars: dict[tuple, int] = {}   # tensors at one step share their scalars
    which = [scalars.setdefault((tensor.scalars, tensor.prior_v, tensor.prior_m, tensor.keep_v, tensor.keep_m),
                                len(scalars)) for tensor in tensors]
    SMMFCall(tensors).run([tensor.grads for tensor in tensors], list(scalars), which)


class SMMFCall:
    """A multi-tensor call (:func:`smmf_many`) prepared once for its tensors and run every step
    with that step's gradients and scalars: the address table of the weights, signs and factors,
    and the ranges, are built and checked here, once. A training loop's step then costs the
    kernel, the gradients' addresses and one row of scalars per step count: on ResNet-50's 161
    tensors, building the call every step took 1.2 ms of Python.

    The call keeps its tensors (its table points into them); a caller that replaces any of them
    (the weights' storage, the state) prepares a new call.
    """

    def __init__(self, tensors: list[SMMFTensor]) -> None:
        if not tensors:
            raise ValueError("SMMFCall: no tensors")
        dtype, mode = batch_dtype("smmf_many", tensors), _sign_mode(tensors[0].signs)
        if any(_sign_mode(tensor.signs) != mode for tensor in tensors):
            raise ValueError("smmf_many: every tensor must share the first tensor's sign storage")
        with_moment = mode != NO_SIGNS
        pointers: list[int] = []
        for tensor in tensors:
            pointers += _addresses(tensor.weights, tensor.grads, tensor.signs, tensor.row_v, tensor.col_v, tensor.row_m,
                                   tensor.col_m, (tensor.row_v, tensor.col_v),
                                   (tensor.row_m, tensor.col_m) if with_moment else None)
        self._tensors = tensors   # kept: the table points into them
        self._weights = [tensor.weights for tensor in tensors]
        self._dtype = dtype
        self._mode = mode
        self._addresses = np.array(pointers, dtype=np.int64).reshape(len(tensors), len(ADDRESSES))
        self._layouts = tuple((0, tensor.weights.numel(), tensor.cols) for tensor in tensors)
        self._scalars = np.empty((len(tensors), len(SCALARS)), dtype=np.float64)

    def run(self, grads: Sequence[torch.Tensor],
            scalars: Sequence[tuple[SMMFScalars, float, float, float, float]], which: Sequence[int] | None = None,
            ) -> None:
        """Step every tensor with ``grads`` (one per tensor: contiguous, of its weights' dtype and
        size) and store the new factors. ``scalars`` are rows of (scalars, prior_v, prior_m,
        keep_v, keep_m) (see :class:`SMMFTensor`); tensor i takes row ``which[i]``, or row 0 for
        all when ``which`` is None."""
        self._addresses[:, 1] = gradient_addresses("smmf_many", grads, self._weights)
        rows = [_scalar_row(*row) for row in scalars]
        if which is None:
            self._scalars[:] = rows[0]
        else:
            self._scalars[:] = np.array(rows, dtype=np.float64)[np.asarray(which, dtype=np.int64)]
        _call(self._addresses, self._layouts, self._scalars, self._mode, _numpy_type(self._dtype), np.float32,
              np.float32, STORE_FACTORS)


def _run_range(weights, grads, signs, start, cols, scaled_v, scaled_m, new_v, new_m, scalars, working) -> None:
    if weights.numel() == 0:
        return
    factors_v = [vector.to(working).contiguous() for vector in scaled_v]
    factors_m = [vector.to(working).contiguous() for vector in scaled_m] if signs is not None else [None, None]
    sign_storage = None if signs is None else signs.view(-1)
    addresses = np.array([_addresses(weights, grads, sign_storage, *factors_v, *factors_m, new_v, new_m)],
                         dtype=np.int64)
    scalar_row = np.array([_scalar_row(scalars, 1.0, 1.0, 1.0, 1.0)], dtype=np.float64)
    _call(addresses, [(start, weights.numel(), cols)], scalar_row, _sign_mode(signs), _numpy_type(working),
          _numpy_type(working), _numpy_type(new_v[0].dtype), ADD_SUMS)


def _call(addresses: np.ndarray, layouts: list[tuple[int, int, int]], scalars: np.ndarray, mode: int, weight_type,
          factor_type, output_type, what: int) -> None:
    """One kernel call over ranges ``layouts`` (start, length, cols), then the combination."""
    lengths = tuple(length for _, length, _ in layouts)
    pieces = kernel_pieces(sum(lengths))
    items, bounds, touched = split_work(lengths, pieces)
    ranges = _ranges(tuple(layouts))
    origins, total = piece_origins(items, bounds, ranges[:, 3], ranges[:, 2] + ranges[:, 4])
    partial = np.empty((2 if mode != NO_SIGNS else 1, total), dtype=np.float64)
    walk, combine = _kernel()
    arguments = (addresses, ranges, scalars, items, bounds, origins, mode, partial, dtype_like(weight_type),
                 dtype_like(factor_type), touched, what, dtype_like(output_type))
    combine_arguments = (addresses, ranges, scalars, touched, origins, partial, what, dtype_like(output_type))
    compile_ahead(("smmf", mode, weight_type, factor_type, output_type, what),
                  lambda: [(walk, arguments + (0, pieces)), (combine, combine_arguments)])
    run_in_threads(lambda low, high: walk(*arguments, low, high), pieces)
    combine(*combine_arguments)


@lru_cache(maxsize=64)
def _ranges(layouts: tuple[tuple[int, int, int], ...]) -> np.ndarray:
    """Per range: its start and length, its matrix's cols, the offset of its sums in a thread's
    partial vectors (rows, then cols), and the rows it reaches (all of them for a whole tensor)."""
    table = np.zeros((len(layouts), 5), dtype=np.int64)
    slot = 0
    for index, (start, length, cols) in enumerate(layouts):
        rows = -(-(start + length) // cols) if length else 0
        table[index] = (start, length, cols, slot, rows)
        slot += rows + cols
    return table


def _addresses(weights, grads, signs, row_v, col_v, row_m, col_m, out_v, out_m) -> list[int]:
    """One row of a call's address table (:data:`ADDRESSES`); 0 for a tensor that is None (signs
    and the moment's factors without first moment). Written out, not looped: a multi-tensor call
    builds one row per tensor every step."""
    if out_m is None:
        return [weights.data_ptr(), grads.data_ptr(), 0, row_v.data_ptr(), col_v.data_ptr(), 0, 0,
                out_v[0].data_ptr(), out_v[1].data_ptr(), 0, 0]
    return [weights.data_ptr(), grads.data_ptr(), signs.data_ptr(), row_v.data_ptr(), col_v.data_ptr(),
            row_m.data_ptr(), col_m.data_ptr(), out_v[0].data_ptr(), out_v[1].data_ptr(), out_m[0].data_ptr(),
            out_m[1].data_ptr()]


def _scalar_row(scalars: SMMFScalars, prior_v: float, prior_m: float, keep_v: float, keep_m: float) -> list[float]:
    return [scalars.step_size, scalars.eps, scalars.decay, scalars.coupled_decay, scalars.grad_sign, prior_v, prior_m,
            keep_v, keep_m]


def _sign_mode(signs: torch.Tensor | None) -> int:
    if signs is None:
        return NO_SIGNS
    return PACKED_SIGNS if signs.dtype == torch.uint8 else BYTE_SIGNS


def _numpy_type(dtype: torch.dtype):
    return np.float32 if dtype == torch.float32 else np.float64


def _sign_slice(signs: torch.Tensor, offset: int, stop: int) -> torch.Tensor:
    """The signs of range elements ``[offset, stop)`` (``offset`` a multiple of 8)."""
    flat = signs.view(-1)
    return flat[offset // 8:(stop + 7) // 8] if flat.dtype == torch.uint8 else flat[offset:stop]


__all__ = ["SMMFCall", "SMMFScalars", "SMMFTensor", "smmf_many", "smmf_range"]
