"""What each rank holds when a model's parameters are sharded (FSDP2, HSDP) or replicated (DDP, ZeRO-1).

FSDP2 shards every parameter along dim 0 with ``torch.chunk`` semantics: dim 0 is padded to a
multiple of the shard count, each rank owns ``ceil(d0 / N)`` rows of it (the last owners fewer,
possibly none), so a rank holds one contiguous flat range of the parameter's row-major order.
memplan's optimizers keep the state tensors that :mod:`memplan.methods` marks as per-element
(:data:`memplan.methods.base.SHARD_KINDS`) for that range only and every other state tensor whole,
so a rank's state bytes follow from the same state-tensor lists as the single-device ones.

Nothing here imports torch: planning per rank stays as fast as planning for one device.
"""

from __future__ import annotations

import math
from dataclasses import replace
from typing import Iterable

from memplan.methods.base import StateTensor
from memplan.methods.shapes import Shape, numel

SHARDINGS = ("fsdp2", "hsdp", "ddp", "zero1")
"""How a data-parallel job holds its parameters: sharded along dim 0 (fsdp2; hsdp within each
replica group), or whole on every rank (ddp; zero1, whose optimizer state is split by parameter)."""

SHARDED = ("fsdp2", "hsdp")
"""The shardings that split parameters (and their per-element state) into row ranges."""


def row_range(dim0: int, shards: int, rank: int) -> tuple[int, int]:
    """The rows ``[start, stop)`` of dim 0 that ``rank`` owns among ``shards`` (``torch.chunk``
    semantics, as FSDP2's Shard(0): chunks of ``ceil(dim0 / shards)`` rows, trailing ranks empty)."""
    chunk = math.ceil(dim0 / shards) if dim0 else 0
    start = min(rank * chunk, dim0)
    return start, min(start + chunk, dim0)


def local_shape(shape: Shape, rows: tuple[int, int]) -> Shape:
    """The shape of a parameter's shard holding ``rows`` of dim 0 (a 0-d parameter is never split)."""
    if not shape:
        return ()
    return (rows[1] - rows[0], *shape[1:])


def flat_range(shape: Shape, rows: tuple[int, int]) -> tuple[int, int]:
    """The row-major elements ``[start, stop)`` that ``rows`` of dim 0 cover."""
    if not shape:
        return 0, 1
    per_row = numel(shape[1:])
    return rows[0] * per_row, rows[1] * per_row


def local_state_tensors(tensors: Iterable[StateTensor], shape: Shape, rows: tuple[int, int],
                        shards: int) -> tuple[StateTensor, ...]:
    """The state tensors a rank keeps for ``rows`` of dim 0 of a parameter of ``shape`` sharded
    ``shards`` ways.

    Replicated tensors stay whole; per-element ones take the shard's own shape (so that they are
    shards of a tensor of the parameter's shape, as a checkpoint saves them); packed bits take
    ``ceil(chunk / 8)`` bytes on every rank, ``chunk`` being the elements of a full (padded) shard,
    so that they are equal shards of one byte vector too.
    """
    chunk_rows = math.ceil(shape[0] / shards) if shape else 1
    chunk_bytes = math.ceil(chunk_rows * numel(shape[1:]) / 8)
    local = []
    for tensor in tensors:
        if tensor.shard == "replicated":
            local.append(tensor)
        elif tensor.shard == "bits":
            local.append(replace(tensor, shape=(chunk_bytes,)))
        elif tensor.shard == "elements":
            local.append(replace(tensor, shape=local_shape(shape, rows)))
        else:
            raise ValueError(f"unknown shard kind {tensor.shard!r} of state tensor {tensor.key!r}")
    return tuple(local)


def rank_state_tensors(tensors: Iterable[StateTensor], shape: Shape, shards: int,
                       rank: int) -> tuple[StateTensor, ...]:
    """What rank ``rank`` of ``shards`` holds of a parameter's state tensors when FSDP2 shards the
    parameter along dim 0 (a 0-d parameter is never split: every rank holds it whole)."""
    if not shape or shards == 1:
        return tuple(tensors)
    return local_state_tensors(tensors, shape, row_range(shape[0], shards, rank), shards)


__all__ = ["rank_state_tensors", "SHARDED", "SHARDINGS", "flat_range", "local_shape", "local_state_tensors", "row_range"]
