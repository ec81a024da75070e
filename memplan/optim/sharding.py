"""The mechanics of a sharded step: which flat range of a parameter this rank holds, and the one
packed reduction of every parameter's partial statistics.

Under FSDP2 a parameter is a DTensor sharded along dim 0 (``Shard(0)``, on a 1-D mesh, or on the
shard dim of HSDP's replicate x shard mesh): this rank holds rows ``[a, b)``, i.e. the contiguous
flat range ``[a * rest, b * rest)`` of the parameter's row-major order, which in a method's view
(SMMF's n x m matricization, ET's tensor index) generally starts and ends mid-row. memplan's
optimizers update that range, accumulating its partial slice statistics (row and column sums,
axis sums, SM3's maxima) into replicated vectors; :class:`PartialReductions` then reduces the
partial vectors of every parameter at once, in one collective per process group (an all-reduce of
one packed buffer, or an all-gather of it when sums and maxima mix), and every rank finishes the
replicated factors identically ("exact" sharding).

``sharding="local"`` instead treats each rank's shard as a tensor of its own: no communication,
but the factorization (and so the trajectory) depends on the world size.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable

import torch
import torch.distributed as dist

from memplan.methods.shapes import numel
from memplan.sharding import packed_chunk_bytes, row_range

SHARDING_MODES = ("exact", "local")
"""How memplan's optimizers treat a sharded parameter: as the whole tensor it is a shard of
(partial statistics reduced across ranks), or as a tensor of its own (no communication)."""

REDUCE_OPS = {"sum": dist.ReduceOp.SUM, "max": dist.ReduceOp.MAX}


@dataclass(frozen=True)
class Shard:
    """The part of one parameter this rank updates: elements ``[start, stop)`` (rows ``rows`` of
    dim 0) of a tensor of ``shape`` (the logical tensor the method factorizes), sharded
    ``shards`` ways over ``group`` (None: this rank holds the whole tensor, no reduction)."""

    start: int
    stop: int
    shape: tuple[int, ...]
    rows: tuple[int, int] = (0, 0)
    shards: int = 1
    group: Any = None

    @property
    def sharded(self) -> bool:
        """Whether other ranks hold other parts of the tensor (whose statistics are reduced)."""
        return self.group is not None

    @property
    def count(self) -> int:
        """Elements this rank holds."""
        return self.stop - self.start



def is_distributed(tensor: torch.Tensor) -> bool:
    """Whether ``tensor`` is a DTensor."""
    return hasattr(tensor, "device_mesh") and hasattr(tensor, "to_local")


def local_tensor(tensor: torch.Tensor) -> torch.Tensor:
    """This rank's part of a DTensor (a view that updates it in place), or the tensor itself."""
    return tensor.to_local() if is_distributed(tensor) else tensor


def shard_of(param: torch.Tensor, mode: str = "exact") -> Shard:
    """This rank's :class:`Shard` of ``param``: the whole tensor for a plain tensor; for a DTensor
    sharded along dim 0 on one mesh dimension (replicated on any others), its row range and the
    process group of that mesh dimension; for ``mode="local"`` the local shard as a tensor of its own.

    Other placements (a shard along another dim, a partial tensor, several shard dims) are refused
    in exact mode with a message naming ``sharding="local"``.
    """
    if not is_distributed(param):
        return Shard(0, param.numel(), tuple(param.shape))
    local = param.to_local()
    if mode == "local":
        return Shard(0, local.numel(), tuple(local.shape))
    from torch.distributed.tensor import Replicate, Shard as ShardPlacement

    placements = tuple(param.placements)
    shard_dims = [mesh_dim for mesh_dim, placement in enumerate(placements) if isinstance(placement, ShardPlacement)]
    allowed = all(isinstance(placement, (Replicate, ShardPlacement)) for placement in placements)
    if not allowed or len(shard_dims) > 1 or any(placements[mesh_dim].dim != 0 for mesh_dim in shard_dims):
        raise ValueError(f"memplan's exact sharded step needs parameters sharded along dim 0 on one mesh "
                         f"dimension (FSDP2 or HSDP), got placements {placements}; pass sharding='local' to "
                         f"factorize each rank's shard on its own")
    shape = tuple(param.shape)
    if not shard_dims:
        return Shard(0, numel(shape), shape)
    mesh, mesh_dim = param.device_mesh, shard_dims[0]
    shards = mesh.size(mesh_dim)
    # Shard(0) splits dim 0 as torch.chunk does (memplan.sharding.row_range; tested against DTensor)
    rows = row_range(shape[0], shards, mesh.get_local_rank(mesh_dim))
    if rows[1] - rows[0] != local.shape[0]:
        raise ValueError(f"a shard of {rows[1] - rows[0]} rows was expected, the local tensor has {local.shape[0]}: "
                         f"pass sharding='local' for this layout")
    per_row = numel(shape[1:])
    return Shard(rows[0] * per_row, rows[1] * per_row, shape, rows, shards, mesh.get_group(mesh_dim))


def distributed_like(local: torch.Tensor, param: torch.Tensor, shard_kind: str) -> torch.Tensor:
    """``local`` (a rank's part of a per-element state tensor) as a DTensor placed like ``param``:
    of the parameter's shape for "elements", of ``shards x len(local)`` bytes for packed "bits".
    Checkpoints (torch.distributed.checkpoint) then save and reshard it like the parameter."""
    from torch.distributed.tensor import DTensor

    if shard_kind == "elements":
        shape = tuple(param.shape)
    else:
        shards = math.prod(param.device_mesh.size(dim) for dim, placement in enumerate(param.placements)
                           if placement.is_shard())
        shape = (shards * local.numel(),)
    stride = torch.empty(shape, device="meta").stride()
    return DTensor.from_local(local, param.device_mesh, param.placements, run_check=False, shape=shape, stride=stride)


def portable_bits(packed: torch.Tensor, param: torch.Tensor) -> torch.Tensor:
    """Packed bits of a sharded parameter (a DTensor of ``shards x chunk`` bytes, whose layout
    depends on the world size: each rank packs its own range from a byte boundary) as one bool per
    element, a DTensor placed like ``param``: what a checkpoint saves, so that loading it on
    another world size reshards it like the parameter."""
    local = local_tensor(param)
    signs = unpack_bits(local_tensor(packed), local.numel()).view(local.shape)
    return distributed_like(signs, param, "elements")


def packed_bits(portable: torch.Tensor, param: torch.Tensor) -> torch.Tensor:
    """The inverse of :func:`portable_bits` on this world size: one bool per element of ``param``
    (a DTensor placed like it, or a whole tensor of its shape) packed as this rank's bits; a
    plain parameter's as one uint8 vector of ``ceil(numel / 8)``."""
    if tuple(portable.shape) != tuple(param.shape):
        raise ValueError(f"saved signs of shape {list(portable.shape)} do not fit a parameter of shape "
                         f"{list(param.shape)}")
    if not is_distributed(param):
        return pack_bits(full_tensor(portable).reshape(-1), math.ceil(param.numel() / 8))
    shard = shard_of(param)
    if is_distributed(portable) and tuple(portable.placements) == tuple(param.placements):
        local = portable.to_local()
    else:
        local = full_tensor(portable)[shard.rows[0]:shard.rows[1]]
    packed = pack_bits(local.reshape(-1), packed_chunk_bytes(shard.shape, shard.shards))
    return distributed_like(packed, param, "bits")


def is_packed_bits(value: Any, param: torch.Tensor) -> bool:
    """Whether ``value`` is a sharded parameter's packed bits as :func:`distributed_like` places
    them (uint8, ``shards x chunk`` bytes), rather than per-element or replicated state."""
    if not (is_distributed(value) and is_distributed(param)) or value.dtype != torch.uint8:
        return False
    shard = shard_of(param)
    return tuple(value.shape) == (shard.shards * packed_chunk_bytes(shard.shape, shard.shards),)


def full_tensor(tensor: torch.Tensor) -> torch.Tensor:
    """The whole of a DTensor (gathered from every rank), or the tensor itself."""
    return tensor.full_tensor() if is_distributed(tensor) else tensor


def unpack_bits(packed: torch.Tensor, count: int) -> torch.Tensor:
    """The first ``count`` bits of a uint8 vector as bools; bit k is bit k % 8 (little-endian) of
    byte k // 8, as memplan packs them."""
    shifts = torch.arange(8, dtype=torch.uint8, device=packed.device)
    return packed[:, None].bitwise_right_shift(shifts).bitwise_and_(1).view(-1)[:count].bool()


def pack_bits(bits: torch.Tensor, size: int) -> torch.Tensor:
    """A flat bool (or 0/1) vector packed 8 per byte, little-endian, into ``size`` bytes (zero padded)."""
    padded = torch.zeros(size * 8, dtype=torch.uint8, device=bits.device)
    padded[:bits.numel()] = bits.to(torch.uint8)
    weights = torch.bitwise_left_shift(torch.ones(8, dtype=torch.uint8, device=bits.device),
                                       torch.arange(8, dtype=torch.uint8, device=bits.device))
    return padded.view(size, 8).mul_(weights).sum(dim=1, dtype=torch.uint8)


def running_sharding(params: list[torch.Tensor]) -> tuple[int, tuple[str, ...]]:
    """The world size and the shardings (:data:`memplan.sharding.SHARDINGS`) that ``params`` and the
    process group can be: fsdp2 or hsdp (by the mesh) for DTensors, with the shard count; ddp or
    zero1 for plain tensors in a process group of several ranks; one process otherwise."""
    from torch.distributed.tensor import Replicate

    for param in params:
        if is_distributed(param):
            placements = tuple(param.placements)
            shards = math.prod(param.device_mesh.size(dim) for dim, placement in enumerate(placements)
                               if placement.is_shard())
            replicated = any(isinstance(placement, Replicate) for placement in placements)
            return shards, ("hsdp",) if replicated else ("fsdp2",)
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        return dist.get_world_size(), ("ddp", "zero1")
    return 1, ("ddp", "zero1", "fsdp2", "hsdp")


@dataclass
class PartialReductions:
    """Partial statistics of one step's sharded parameters, reduced together in one collective
    per process group.

    Optimizers :meth:`add` the replicated-size vectors their range filled (zeros where it touched
    nothing), each with its reduction (sums; SM3's maxima). When a group's vectors all share one
    reduction and dtype, they are packed into one buffer and all-reduced. Otherwise (a plan mixing
    SM3 with SMMF or ET, or state of several dtypes) their bytes are packed into one buffer and
    all-gathered (each rank receives the others' partial vectors: ``world`` times the bytes, which
    are O(sqrt numel) per parameter), and every rank reduces the gathered copies locally, in rank
    order, so the totals are identical on every rank.
    """

    pending: dict[Any, list[tuple[torch.Tensor, str]]] = field(default_factory=dict)
    collectives: int = 0
    """Collectives the last :meth:`all_reduce` issued."""
    bytes_reduced: int = 0
    """Bytes of the buffers the last :meth:`all_reduce` packed (each rank's contribution)."""

    def add(self, shard: Shard, tensors: list[torch.Tensor], op: str = "sum") -> None:
        """Reduce ``tensors`` (``op``: "sum" or "max") over the shard's group at :meth:`all_reduce`;
        nothing to do for a shard that needs no reduction."""
        if shard.group is None:
            return
        if op not in REDUCE_OPS:
            raise ValueError(f"unknown reduction {op!r} (valid: {', '.join(REDUCE_OPS)})")
        self.pending.setdefault(shard.group, []).extend((tensor, op) for tensor in tensors)

    def finish(self, finishers: list[Callable[[], None]]) -> tuple[int, int]:
        """All-reduce what was added, then run ``finishers`` (each sharded parameter's second half
        of the step); returns (collectives, bytes) for ``last_communication``."""
        self.all_reduce()
        for finish in finishers:
            finish()
        return self.collectives, self.bytes_reduced

    def all_reduce(self) -> None:
        """One collective per process group for everything added, totals written back in place;
        then empty."""
        self.collectives = 0
        self.bytes_reduced = 0
        for group, entries in self.pending.items():
            kinds = {(op, tensor.dtype) for tensor, op in entries}
            if len(kinds) == 1:
                self.bytes_reduced += _all_reduce(group, [tensor for tensor, _ in entries], entries[0][1])
            else:
                self.bytes_reduced += _gather_and_reduce(group, entries)
            self.collectives += 1
        self.pending = {}


def _all_reduce(group: Any, tensors: list[torch.Tensor], op: str) -> int:
    """All-reduce ``tensors`` (one dtype) as one packed buffer; the bytes of the buffer."""
    packed = torch.cat([tensor.reshape(-1) for tensor in tensors])
    dist.all_reduce(packed, op=REDUCE_OPS[op], group=group)
    offset = 0
    for tensor in tensors:
        tensor.copy_(packed[offset:offset + tensor.numel()].view(tensor.shape))
        offset += tensor.numel()
    return packed.numel() * packed.element_size()


def all_gather_function() -> Callable[..., Any]:
    """torch.distributed's all-gather into one tensor: ``all_gather_single`` where torch has it
    (2.13 deprecates ``all_gather_into_tensor`` for it), else ``all_gather_into_tensor``."""
    return getattr(dist, "all_gather_single", None) or dist.all_gather_into_tensor


def _gather_and_reduce(group: Any, entries: list[tuple[torch.Tensor, str]]) -> int:
    """All-gather the bytes of every tensor (any dtypes) as one buffer, then reduce each tensor's
    gathered copies locally with its own reduction; the bytes of this rank's buffer."""
    packed = torch.cat([tensor.reshape(-1).view(torch.uint8) for tensor, _ in entries])
    world = dist.get_world_size(group)
    gathered = packed.new_empty(world * packed.numel())
    all_gather_function()(gathered, packed, group=group)
    copies = gathered.view(world, packed.numel())
    offset = 0
    for tensor, op in entries:
        size = tensor.numel() * tensor.element_size()
        # contiguous() copies each rank's bytes out, so that they can be viewed as the tensor's dtype
        ranks = copies[:, offset:offset + size].contiguous().view(tensor.dtype)
        if op == "sum":
            total = ranks[0].clone()
            for rank in range(1, world):  # in rank order, as on every other rank
                total += ranks[rank]
        else:
            total = ranks.amax(dim=0)
        tensor.copy_(total.view(tensor.shape))
        offset += size
    return packed.numel()


__all__ = ["PartialReductions", "SHARDING_MODES", "Shard", "distributed_like", "full_tensor", "is_distributed",
           "is_packed_bits", "local_tensor", "pack_bits", "packed_bits", "portable_bits", "running_sharding",
           "shard_of",
           "unpack_bits"]
