"""The census of one optimizer step: the bytes its kernels move and the kernels it launches.

The byte model's ``bytes_moved`` is only the compulsory traffic (each tensor read and written
once). Real implementations make more passes: torch's foreach AdamW runs seven full-size
kernels and allocates one full-size temporary, memplan's blocked optimizers make ten to twenty
passes over every 2 MiB block. Rather than keep a hand-written table of passes per method,
which would drift from the code, :func:`census_step` runs one step of the real optimizer on
the ``meta`` device (shapes only: no memory, no arithmetic) under a dispatch mode that sees
every ATen operator the step calls, and counts:

- the bytes each kernel reads and writes, split by a least-recently-used cache model: an
  access hits when fewer than ``cache_bytes`` of other data were touched since its region was
  last touched (memplan's block temporaries), and goes to memory otherwise (parameters,
  gradients, state, full-size foreach temporaries). A write that misses on a region the kernel
  did not read first fills the line on a write-allocating device (CPU caches);
- the kernels launched: view and bookkeeping operators launch none; a foreach operator
  launches one kernel per tensor on CPU and one per group of chunks on CUDA;
- which of the memory reads feed a reduction (sums, maxima, norms, dot products): on a CPU a
  reduction streams from memory at about two thirds of an elementwise kernel's rate;
- the bytes read by vector norms over a non-innermost axis, which torch's CPU kernel does not
  vectorise (about 1.3 GB/s on a 2-core Xeon, against 40 GB/s for a stream), and which
  torch.optim.Adafactor uses for its column statistics;
- the peak bytes of temporaries alive at once (for the fit check before a benchmark).
"""

from __future__ import annotations

import math
import weakref
from collections import OrderedDict
from dataclasses import dataclass, fields
from functools import lru_cache
from typing import Any, Callable, Mapping, Sequence


from memplan.dtypes import canonical_dtype


MULTI_TENSOR_CHUNK = 65536
MULTI_TENSOR_BLOCKS_PER_LAUNCH = 320
MULTI_TENSOR_TENSORS_PER_LAUNCH = 110
"""torch's CUDA foreach kernels (ATen/native/cuda/MultiTensorApply.cuh) cut tensors into chunks of
65536 elements and launch once per 320 chunks or 110 tensors, whichever fills first."""

_BOOKKEEPING_OPS = frozenset({"_record_function_enter_new", "_record_function_exit", "lift_fresh", "detach",
                              "alias", "_local_scalar_dense", "record_stream"})
_REDUCTION_OPS = frozenset({"sum", "mean", "amax", "amin", "max", "min", "dot", "vdot", "linalg_vector_norm",
                            "norm", "prod", "std", "var", "aminmax", "argmax", "argmin", "any", "all"})
_OVERWRITING_OPS = frozenset({"copy_", "fill_", "zero_", "normal_", "uniform_", "random_", "bernoulli_"})
"""In-place operators that write their destination without reading it."""


@dataclass(frozen=True)
class StepCensus:
    """What one optimizer step does, as counted by :func:`census_step` (bytes and kernels).

    Reads and writes are split by the cache model: ``read_hit`` and ``write_hit`` bytes stay in
    cache; ``read_miss`` and ``update_miss`` (in-place writes of regions the kernel read) go to
    memory once; ``reduction_miss`` are memory reads that feed a reduction; ``overwrite_miss``
    (writes of regions the kernel did not read) go to memory after a line fill on
    write-allocating devices.
    """

    read_hit: int = 0
    read_miss: int = 0
    reduction_miss: int = 0
    write_hit: int = 0
    update_miss: int = 0
    overwrite_miss: int = 0
    strided_norm_bytes: int = 0
    kernels: int = 0
    """Kernels launched, a foreach operator counting one per tensor (torch's CPU path)."""
    foreach_kernels: int = 0
    """The part of ``kernels`` that foreach operators launch."""
    foreach_launches: float = 0.0
    """Multi-tensor launches those foreach operators need on CUDA (see MULTI_TENSOR_*)."""
    peak_temporary_bytes: int = 0
    fused: tuple[tuple[str, int, int], ...] = ()
    """memplan's one-pass kernels in the step: (kernel key, elements, bytes), one entry per key
    (see :meth:`memplan.methods.Method.fused_kernel`); their bytes are also in the memory traffic."""

    def __add__(self, other: "StepCensus") -> "StepCensus":
        """Two parts of one step done one after the other: counts add, the peak is the larger."""
        summed = {item.name: getattr(self, item.name) + getattr(other, item.name) for item in fields(self)
                  if item.name != "fused"}
        summed["peak_temporary_bytes"] = max(self.peak_temporary_bytes, other.peak_temporary_bytes)
        return StepCensus(**summed, fused=_merged_fused(self.fused + other.fused))

    def repeated(self, count: int) -> "StepCensus":
        """The same work done ``count`` times in sequence (the peak does not grow)."""
        scaled = {item.name: getattr(self, item.name) * count for item in fields(self) if item.name != "fused"}
        scaled["peak_temporary_bytes"] = self.peak_temporary_bytes if count else 0
        fused = tuple((key, elements * count, moved * count) for key, elements, moved in self.fused) if count else ()
        return StepCensus(**scaled, fused=fused)

    def memory_traffic(self, write_allocate: bool) -> int:
        """Bytes that go to memory, with line fills for overwrites on a write-allocating device."""
        fills = self.overwrite_miss if write_allocate else 0
        return self.read_miss + self.update_miss + self.overwrite_miss + fills

    @property
    def cache_traffic(self) -> int:
        """Bytes the cache serves."""
        return self.read_hit + self.write_hit

    def launches(self, foreach_per_tensor: bool) -> float:
        """Kernels launched: foreach operators count one per tensor where ``foreach_per_tensor``
        (torch's CPU path, :attr:`memplan.devices.Device.foreach_kernel_per_tensor`), else one per
        group of chunks (CUDA)."""
        if foreach_per_tensor:
            return float(self.kernels)
        return self.kernels - self.foreach_kernels + self.foreach_launches


def _merged_fused(entries: tuple[tuple[str, int, int], ...]) -> tuple[tuple[str, int, int], ...]:
    """One (key, elements, bytes) entry per kernel key, summed, in key order."""
    merged: dict[str, tuple[int, int]] = {}
    for key, elements, moved in entries:
        known = merged.get(key, (0, 0))
        merged[key] = (known[0] + elements, known[1] + moved)
    return tuple((key, *merged[key]) for key in sorted(merged))


def distinct_bytes(tensor: Any) -> int:
    """Bytes of the distinct elements a view covers (an expanded axis counts once)."""
    count = math.prod(size for size, stride in zip(tensor.shape, tensor.stride()) if stride != 0)
    return count * tensor.element_size()


class LruCache:
    """A fully associative least-recently-used cache of ``capacity`` bytes over tensor regions."""

    MAX_REGIONS = 4096
    """Regions remembered; older ones count as misses (they are far beyond any cache anyway)."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.recent: OrderedDict[tuple, int] = OrderedDict()

    def touch(self, region: tuple, size: int) -> bool:
        """Touch ``region``; True when fewer than ``capacity`` bytes were touched since it last was."""
        hit = False
        if region in self.recent:
            distance = 0
            for other in reversed(self.recent):
                if other == region:
                    hit = distance + size <= self.capacity
                    break
                distance += self.recent[other]
                if distance > self.capacity:
                    break
            self.recent.move_to_end(region)
        else:
            self.recent[region] = size
            if len(self.recent) > self.MAX_REGIONS:
                self.recent.popitem(last=False)
        return hit


def _tensors_in(value: Any) -> list:
    """Every tensor in a nest of lists, tuples and dicts."""
    import torch
    from torch.utils._pytree import tree_flatten

    return [item for item in tree_flatten(value)[0] if isinstance(item, torch.Tensor)]


@lru_cache(maxsize=1)
def _census_mode_class() -> type:
    """The dispatch mode behind :func:`census_step` (defined lazily: importing torch takes seconds)."""
    from torch.utils._python_dispatch import TorchDispatchMode

    class CensusMode(TorchDispatchMode):
        """Counts traffic, kernels and live temporaries of every operator dispatched under it."""

        def __init__(self, cache_bytes: int) -> None:
            super().__init__()
            self.cache = LruCache(cache_bytes)
            self.counts: dict[str, Any] = {item.name: 0 for item in fields(StepCensus) if item.name != "fused"}
            self.temporaries = _Temporaries()

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            kwargs = kwargs or {}
            name = func._schema.name.split("::")[-1]
            if name == "_local_scalar_dense":
                return 1.0  # a meta tensor has no value; only step-size arithmetic reads one
            result = func(*args, **kwargs)
            inputs, outputs = _tensors_in((args, kwargs)), _tensors_in(result)
            self.temporaries.follow(inputs, outputs)
            if not func.is_view and name not in _BOOKKEEPING_OPS:
                self._count_kernels(name, args)
                if name == "linalg_vector_norm" and _reduces_outer_axis(args, kwargs):
                    self.counts["strided_norm_bytes"] += distinct_bytes(args[0])
                else:
                    self._count_traffic(func, name, args, kwargs, inputs, outputs)
            return result

        def _count_kernels(self, name: str, args: tuple) -> None:
            lists = [value for value in args if isinstance(value, (list, tuple)) and value
                     and all(hasattr(item, "numel") for item in value)]
            if not (name.startswith("_foreach_") or name.startswith("_fused_")) or not lists:
                self.counts["kernels"] += 1
                return
            tensors = lists[0]
            chunks = sum(math.ceil(tensor.numel() / MULTI_TENSOR_CHUNK) for tensor in tensors)
            self.counts["kernels"] += len(tensors)
            self.counts["foreach_kernels"] += len(tensors)
            self.counts["foreach_launches"] += max(chunks / MULTI_TENSOR_BLOCKS_PER_LAUNCH,
                                                   len(tensors) / MULTI_TENSOR_TENSORS_PER_LAUNCH)

        def _count_traffic(self, func, name: str, args: tuple, kwargs: dict, inputs: list, outputs: list) -> None:
            written = _written_tensors(func, name, args, kwargs, outputs)
            read_hits: dict[int, bool] = {}
            for tensor in {id(tensor): tensor for tensor in inputs}.values():
                if written.get(id(tensor), (None, False))[1]:
                    continue
                size = distinct_bytes(tensor)
                read_hits[id(tensor)] = self.cache.touch(self.temporaries.region(tensor), size)
                miss = "reduction_miss" if name in _REDUCTION_OPS else "read_miss"
                self.counts["read_hit" if read_hits[id(tensor)] else miss] += size
            for tensor, unread in written.values():
                size = distinct_bytes(tensor)
                # an updated region was just read by this kernel: it is written back where it was read from
                if id(tensor) in read_hits:
                    hit = read_hits[id(tensor)]
                else:
                    hit = self.cache.touch(self.temporaries.region(tensor), size)
                if hit:
                    self.counts["write_hit"] += size
                else:
                    self.counts["overwrite_miss" if unread else "update_miss"] += size

        def census(self) -> StepCensus:
            return StepCensus(**{**self.counts, "peak_temporary_bytes": self.temporaries.peak_bytes})

    return CensusMode


class _Temporaries:
    """The storages born during a step, as an allocator would hand them out.

    A storage lives while any tensor object (the fresh tensor or a view of it) refers to it.
    A new storage reuses the most recently freed block of the same size, as glibc's bins and
    torch's CUDA caching allocator do, so a block temporary written right after its
    predecessor died is written to memory that is still in cache.
    """

    def __init__(self) -> None:
        self.sizes: dict[int, int] = {}
        self.blocks: dict[int, int] = {}
        self.holders: dict[int, int] = {}
        self.freed: dict[int, list[int]] = {}
        self.followed: set[int] = set()
        self.block_count = 0
        self.live_bytes = 0
        self.peak_bytes = 0

    def follow(self, inputs: list, outputs: list) -> None:
        """Note fresh storages among ``outputs`` and every new tensor object that holds one."""
        input_storages = {tensor.untyped_storage()._cdata for tensor in inputs}
        for tensor in outputs:
            storage = tensor.untyped_storage()
            key = storage._cdata
            if key not in input_storages and key not in self.sizes and not tensor._is_view():
                self._allocate(key, storage.nbytes())
            if key in self.sizes and id(tensor) not in self.followed:
                self.followed.add(id(tensor))
                self.holders[key] = self.holders.get(key, 0) + 1
                weakref.finalize(tensor, self._release, id(tensor), key)

    def region(self, tensor: Any) -> tuple:
        """The memory a view covers, as a cache key: (block, byte offset, bytes)."""
        key = tensor.untyped_storage()._cdata
        block = self.blocks.get(key, ("persistent", key))
        return (block, tensor.storage_offset() * tensor.element_size(), distinct_bytes(tensor))

    def _allocate(self, key: int, size: int) -> None:
        reusable = self.freed.get(size)
        if reusable:
            self.blocks[key] = reusable.pop()
        else:
            self.block_count += 1
            self.blocks[key] = self.block_count
        self.sizes[key] = size
        self.live_bytes += size
        self.peak_bytes = max(self.peak_bytes, self.live_bytes)

    def _release(self, tensor_id: int, key: int) -> None:
        self.followed.discard(tensor_id)
        self.holders[key] -= 1
        if self.holders[key] == 0:
            size = self.sizes.pop(key)
            self.freed.setdefault(size, []).append(self.blocks.pop(key))
            self.live_bytes -= size
            del self.holders[key]


def _written_tensors(func: Any, name: str, args: tuple, kwargs: dict, outputs: list) -> dict[int, tuple[Any, bool]]:
    """The tensors an operator writes, by id, each with whether it writes them without reading
    them (``out=`` arguments, fresh outputs, the destination of copy_/fill_/zero_)."""
    written: dict[int, tuple[Any, bool]] = {}
    by_name = {argument.name: argument for argument in func._schema.arguments}
    pairs = list(zip(func._schema.arguments, args)) + [(by_name[key], value) for key, value in kwargs.items()]
    for argument, value in pairs:
        if argument.alias_info is not None and argument.alias_info.is_write:
            unread = argument.kwarg_only or name in _OVERWRITING_OPS
            for tensor in _tensors_in(value):
                written[id(tensor)] = (tensor, unread)
    for tensor in outputs:
        written.setdefault(id(tensor), (tensor, True))
    return written


def _reduces_outer_axis(args: Sequence[Any], kwargs: Mapping[str, Any]) -> bool:
    """Whether a ``linalg_vector_norm`` call reduces over an axis other than the last."""
    tensor = args[0]
    dims = args[2] if len(args) > 2 else kwargs.get("dim")
    if dims is None or tensor.dim() < 2:
        return False
    return any(dim % tensor.dim() != tensor.dim() - 1 for dim in dims)


@lru_cache(maxsize=1)
def _item_mode_class() -> type:
    """A function mode under which ``.item()`` of a meta tensor is 1.0 (Adafactor reads norms)."""
    import torch
    from torch.overrides import TorchFunctionMode

    class MetaItemMode(TorchFunctionMode):
        def __torch_function__(self, func, types, args=(), kwargs=None):
            if func in (torch.Tensor.item, torch.Tensor.__float__) and args and args[0].device.type == "meta":
                return 1.0
            return func(*args, **(kwargs or {}))

    return MetaItemMode


ShapeAndDtype = tuple[tuple[int, ...], str]
NamedParameters = list[tuple[str, Any]]
"""``(name, parameter)`` pairs, as ``model.named_parameters()`` gives them."""

OptimizerFactory = Callable[[NamedParameters], Any]


def census_step(make_optimizer: OptimizerFactory, params: Sequence[ShapeAndDtype], cache_bytes: int,
                names: Sequence[str] | None = None) -> StepCensus:
    """Count the second step (the first allocates the state) of the optimizer ``make_optimizer``
    builds over named meta parameters of these shapes and dtypes, with gradients (named
    ``names``, or ``param0``, ``param1``, ...)."""
    import torch

    named = []
    for position, (shape, dtype) in enumerate(params):
        param = torch.nn.Parameter(torch.zeros(shape, dtype=getattr(torch, canonical_dtype(dtype)), device="meta"))
        param.grad = torch.zeros_like(param)
        named.append((names[position] if names is not None else f"param{position}", param))
    optimizer = make_optimizer(named)
    with torch.no_grad(), _item_mode_class()():
        optimizer.step()
    mode = _census_mode_class()(cache_bytes)
    with torch.no_grad(), _item_mode_class()(), mode:
        optimizer.step()
    return mode.census()


def fused_census(spec: str, params: Sequence[ShapeAndDtype], device_kind: str = "cpu") -> StepCensus:
    """A fused kernel makes one pass over every tensor it touches, so its traffic is the byte
    model's compulsory ``bytes_moved``, all of it memory traffic (torch's fused optimizers
    cannot run on ``meta``, so this one is not counted but derived); memplan's kernels also
    record their elements under their key, for a device profile that measured their rate."""
    from memplan.methods import as_spec, get_method, param_state

    parsed = as_spec(spec)
    method = get_method(parsed.name)
    key = method.fused_kernel(method.resolve(parsed), device_kind)
    total = StepCensus()
    for shape, dtype in params:
        moved = param_state(spec, shape, dtype).bytes_moved
        chunks = math.ceil(math.prod(shape) / MULTI_TENSOR_CHUNK)
        total += StepCensus(read_miss=moved // 2, update_miss=moved - moved // 2, kernels=1, foreach_kernels=1,
                            foreach_launches=max(chunks / MULTI_TENSOR_BLOCKS_PER_LAUNCH,
                                                 1 / MULTI_TENSOR_TENSORS_PER_LAUNCH),
                            fused=((key, math.prod(shape), moved),) if key else ())
    return total


def method_census(spec: str, params: Sequence[ShapeAndDtype], cache_bytes: int,
                  device_kind: str = "cpu") -> StepCensus:
    """The census of one step of method ``spec`` over parameters of these shapes and dtypes, on a
    device of ``device_kind`` (``cpu`` or ``cuda``: it decides what ``impl=auto`` runs).

    How depends on the method's step structure (:meth:`memplan.methods.Method.step_structure`):
    memplan's optimizers step each parameter on its own, so each distinct shape is counted once
    and repeated; the baselines' foreach operators interleave all parameters, so they are
    counted over the whole list; fused implementations use :func:`fused_census`.
    """
    from memplan.methods import as_spec, get_method

    parsed = as_spec(spec)
    method = get_method(parsed.name)
    structure = method.step_structure(method.resolve(parsed), device_kind)
    key = tuple((tuple(shape), canonical_dtype(dtype)) for shape, dtype in params)
    if structure == "fused":
        return fused_census(str(parsed), key, device_kind)
    if structure == "whole":
        return _cached_census(str(parsed), key, cache_bytes)
    repeats: dict[ShapeAndDtype, int] = {}
    for item in key:
        repeats[item] = repeats.get(item, 0) + 1
    total = StepCensus()
    for item, count in repeats.items():
        total += _cached_census(str(parsed), (item,), cache_bytes).repeated(count)
    return total


@lru_cache(maxsize=256)
def _cached_census(spec: str, params: tuple[ShapeAndDtype, ...], cache_bytes: int) -> StepCensus:
    from memplan.methods import build

    return census_step(lambda named: build(spec, [param for _, param in named], lr=1e-3), params,
                       cache_bytes)
