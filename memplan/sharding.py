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
from dataclasses import dataclass, replace
from typing import Any, Iterable, Sequence

from memplan.errors import SpecError
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


def packed_chunk_bytes(shape: Shape, shards: int) -> int:
    """Bytes of packed bits (8 per byte) every rank keeps for its range of a parameter of ``shape``
    split ``shards`` ways: enough for a full chunk of ``ceil(dim0 / shards)`` rows."""
    chunk_rows = math.ceil(shape[0] / shards) if shape else 1
    return math.ceil(chunk_rows * numel(shape[1:]) / 8)


def local_state_tensors(tensors: Iterable[StateTensor], shape: Shape, rows: tuple[int, int],
                        shards: int) -> tuple[StateTensor, ...]:
    """The state tensors a rank keeps for ``rows`` of dim 0 of a parameter of ``shape`` sharded
    ``shards`` ways.

    Replicated tensors stay whole; per-element ones take the shard's own shape (so that they are
    shards of a tensor of the parameter's shape, as a checkpoint saves them); packed bits take
    ``ceil(chunk / 8)`` bytes on every rank, ``chunk`` being the elements of a full (padded) shard,
    so that they are equal shards of one byte vector too.
    """
    chunk_bytes = packed_chunk_bytes(shape, shards)
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


@dataclass(frozen=True)
class StepCommunication:
    """The collective of one optimizer step on one rank, as memplan's exact sharded step issues it
    (:class:`memplan.optim.sharding.PartialReductions`): every parameter's partial vectors of its
    reduced replicated state packed in one buffer of ``packed_bytes``, in one collective, an
    all-reduce, or an all-gather when the step mixes reductions (sums and SM3's maxima) or dtypes."""

    collectives: int
    packed_bytes: int
    gathered: bool = False

    def bus_bytes(self, world_size: int) -> float:
        """Bytes each rank sends (and receives) in the step's collectives, as NCCL-tests counts a
        ring: ``2 (w - 1) / w`` times the buffer for an all-reduce, ``w - 1`` times it for an
        all-gather (each rank receives every other rank's buffer)."""
        if world_size <= 1 or not self.collectives:
            return 0.0
        factor = world_size - 1 if self.gathered else 2 * (world_size - 1) / world_size
        return factor * self.packed_bytes


@dataclass(frozen=True)
class Sharding:
    """How a data-parallel job of ``world_size`` ranks holds parameters and optimizer state.

    For ``hsdp``, ``world_size`` is the number of shards within one replica group (the ranks of
    one replica hold what fsdp2 over that many ranks would). ``zero1`` places each parameter's
    whole state on one rank, chosen as ``torch.distributed.optim.ZeroRedundancyOptimizer`` does.
    """

    kind: str
    world_size: int

    def __post_init__(self) -> None:
        if self.kind not in SHARDINGS:
            raise SpecError(f"unknown sharding {self.kind!r} (valid: {', '.join(SHARDINGS)})")
        if isinstance(self.world_size, bool) or not isinstance(self.world_size, int) or self.world_size < 1:
            raise SpecError(f"world size must be an integer >= 1, got {self.world_size!r}")

    @property
    def splits_parameters(self) -> bool:
        """Whether parameters are DTensors split into row ranges (fsdp2, hsdp)."""
        return self.kind in SHARDED

    @property
    def shards(self) -> int:
        """Into how many row ranges each parameter is split (1: whole on every rank that holds it)."""
        return self.world_size if self.kind in SHARDED else 1

    def rank_tensors(self, tensors: Iterable[StateTensor], shape: Shape, rank: int) -> tuple[StateTensor, ...]:
        """The state tensors rank ``rank`` holds of a parameter it steps (for zero1: the owner)."""
        return rank_state_tensors(tensors, shape, self.shards, rank)

    def budgeted_bytes(self, tensors: Iterable[StateTensor], shape: Shape) -> int:
        """A parameter's state bytes as the per-rank budget counts them: the most any rank holds
        (rank 0 for a sharded parameter: the first chunks are the full ones; everything on the
        owning rank for ddp and zero1)."""
        return sum(tensor.nbytes for tensor in self.rank_tensors(tensors, shape, 0))

    def rank_state_bytes(self, params: Sequence[tuple[Shape, Sequence[StateTensor]]]) -> list[int]:
        """Every rank's state bytes for ``params`` (shape and state tensors of each, in model order)."""
        if self.kind == "zero1":
            totals = [0] * self.world_size
            for rank, (_, tensors) in zip(zero1_owners([shape for shape, _ in params], self.world_size), params):
                totals[rank] += sum(tensor.nbytes for tensor in tensors)
            return totals
        return [sum(sum(tensor.nbytes for tensor in self.rank_tensors(tensors, shape, rank))
                    for shape, tensors in params) for rank in range(self.world_size)]

    def step_communication(self, params: Sequence[tuple[Shape, Sequence[StateTensor]]]) -> StepCommunication:
        """The collective of one step of memplan's optimizers over ``params`` (shape and state tensors
        of each): one per step when any split parameter has reduced state (each partial vector is
        the size of its state tensor), none under ddp and zero1 (whose ranks step whole parameters)."""
        if not self.splits_parameters:
            return StepCommunication(0, 0)
        reduced = [tensor for shape, tensors in params if shape for tensor in tensors
                   if tensor.shard == "replicated" and tensor.reduce is not None]
        if not reduced:
            return StepCommunication(0, 0)
        kinds = {(tensor.reduce, tensor.dtype) for tensor in reduced}
        return StepCommunication(1, sum(tensor.nbytes for tensor in reduced), len(kinds) > 1)

    def rank_param_elements(self, shape: Shape) -> int:
        """Elements of a parameter (and of its gradient) that each rank stores: FSDP2 pads dim 0
        to a multiple of the shard count, so every rank allocates a full chunk; ddp and zero1 keep
        the whole parameter on every rank."""
        if self.kind not in SHARDED or not shape:
            return numel(shape)
        return math.ceil(shape[0] / self.shards) * numel(shape[1:])

    def to_dict(self) -> dict[str, Any]:
        """The plan file's ``sharding`` mapping."""
        return {"kind": self.kind, "world_size": self.world_size}


def zero1_owners(shapes: Sequence[Shape], world_size: int) -> list[int]:
    """The rank that keeps each parameter's state under ZeroRedundancyOptimizer (one param group):
    parameters by decreasing size (stable), each to the rank holding the fewest elements so far."""
    owners = [0] * len(shapes)
    sizes = [0] * world_size
    for position in sorted(range(len(shapes)), key=lambda index: -numel(shapes[index])):
        rank = sizes.index(min(sizes))
        owners[position] = rank
        sizes[rank] += numel(shapes[position])
    return owners


__all__ = ["Sharding", "StepCommunication", "zero1_owners", "rank_state_tensors", "SHARDED", "SHARDINGS", "flat_range",
           "local_shape",
           "local_state_tensors", "packed_chunk_bytes", "row_range"]
