"""Cut a tensor's row-major view into contiguous blocks so that a step's temporaries stay bounded.

Two levels: *granules*, the units every reduction (slice sums, maxima, norms) is computed on,
and *blocks*, the units elementwise math runs on. Normally a block is one granule. With
``chunk_bytes=None`` (unchunked) the whole tensor is one block, but its reductions still run
granule by granule, in the same order, on the same shapes: so chunked and unchunked steps give
bit-identical results, as long as the chunk is large enough for full-size granules (every
chunk of at least :data:`CACHE_BLOCK_ELEMENTS` times a method's bytes per element, a few MiB).

A block fixes the indices of the leading axes (its ``prefix``) and covers a range of the next
axis (``axis``, ``start:stop``) together with every trailing axis in full. Its elements are one
contiguous run ``flat_start:flat_stop`` of the flattened tensor, so a block of a contiguous
parameter, gradient or state buffer is a view, never a copy. Slice statistics of a block follow
from its shape: the prefix axes see one index each, ``axis`` sees ``start:stop``, the trailing
axes see everything.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Iterator

import torch

CACHE_BLOCK_ELEMENTS = 1 << 19
"""Upper bound on a block's elements when memory allows more: 512 Ki elements (2 MiB per fp32
temporary) keep a block's temporaries in cache while amortising the per-op dispatch cost over
enough elements; 128 Ki and 1 Mi were slower in benchmarks/optim_speed.py on a 2-core CPU."""


@dataclass(frozen=True)
class Block:
    """One contiguous block of a row-major view ``view``."""

    prefix: tuple[int, ...]
    axis: int
    start: int
    stop: int
    flat_start: int
    flat_stop: int
    shape: tuple[int, ...]
    """The block's own shape: ``(stop - start, *view[axis + 1:])``."""


def granule_elements(budget_bytes: int | None, bytes_per_element: int) -> int:
    """Elements per granule: the cache-sized default, or fewer when the memory budget demands."""
    if budget_bytes is None:
        return CACHE_BLOCK_ELEMENTS
    return max(1, min(budget_bytes // max(1, bytes_per_element), CACHE_BLOCK_ELEMENTS))


def partition(view: tuple[int, ...], budget_bytes: int | None, bytes_per_element: int,
              row_multiple: int = 1, start: int = 0, stop: int | None = None) -> list[tuple[Block, list[Block]]]:
    """The (block, granules) pairs covering ``view``: one block per granule, or one whole-tensor
    block holding every granule when ``budget_bytes`` is None (unchunked).

    Given ``start`` and ``stop``, only the flat range ``[start, stop)`` of the view is covered (a
    rank's shard, which may start and end mid-row): always one block per granule then, and
    ``row_multiple`` does not apply.
    """
    total = math.prod(view)
    stop = total if stop is None else stop
    if (start, stop) != (0, total):
        return [(granule, [granule]) for granule in
                range_blocks(view, start, stop, granule_elements(budget_bytes, bytes_per_element))]
    granules = list(tensor_blocks(view, granule_elements(budget_bytes, bytes_per_element), row_multiple))
    if budget_bytes is not None or not granules:
        return [(granule, [granule]) for granule in granules]
    whole = Block((), 0, 0, view[0], 0, total, tuple(view))
    return [(whole, granules)]


def granule_of(values: torch.Tensor, block: Block, granule: Block) -> torch.Tensor:
    """The part of a block-shaped tensor that one of its granules covers, in the granule's shape."""
    if granule is block:
        return values
    flat = values.reshape(-1)
    return flat[granule.flat_start - block.flat_start:granule.flat_stop - block.flat_start].view(granule.shape)


def reduce_granules(values: torch.Tensor, block: Block, granules: list[Block], targets: list[torch.Tensor],
                    reduce: Callable, combine: str, alpha: float = 1.0) -> None:
    """Fold the slice reductions of every granule of ``values`` into per-axis ``targets``, in order."""
    for granule in granules:
        part = granule_of(values, block, granule)
        accumulate(targets, granule, slice_reductions(part, granule, reduce), combine, alpha)


def tensor_blocks(view: tuple[int, ...], max_elements: int, row_multiple: int = 1) -> Iterator[Block]:
    """Blocks of ``view`` with at most ``max_elements`` elements each, covering it in order.

    The blocks take as many whole leading slices as fit; a slice too large is split along the
    next axis, recursively. ``row_multiple`` makes every block but the last start at a multiple
    of that many elements of axis 0 (SMMF's packed signs need byte-aligned blocks), even when
    that exceeds ``max_elements``.
    """
    if math.prod(view) == 0:
        return
    yield from _blocks(view, (), 0, 0, max(1, max_elements), row_multiple)


def range_blocks(view: tuple[int, ...], start: int, stop: int, max_elements: int) -> Iterator[Block]:
    """Blocks covering the flat range ``[start, stop)`` of ``view`` in order, at most ``max_elements``
    each (or one run of the last axis).

    A range that starts mid-slice first finishes that slice (recursively, from the innermost
    axis out), then takes whole slices, then the leading part of the slice where it stops.
    """
    if start < stop:
        yield from _range(view, (), 0, 0, start, stop, max(1, max_elements))


def _range(view: tuple[int, ...], prefix: tuple[int, ...], axis: int, flat_offset: int, low: int, high: int,
           max_elements: int) -> Iterator[Block]:
    """Blocks of elements ``[low, high)`` (relative to ``flat_offset``) of the slice ``prefix``."""
    slice_elements = math.prod(view[axis + 1:])
    first, last = low // slice_elements, (high - 1) // slice_elements
    if low % slice_elements:
        inner_offset = flat_offset + first * slice_elements
        inner_high = min(high, (first + 1) * slice_elements) - first * slice_elements
        yield from _range(view, (*prefix, first), axis + 1, inner_offset, low - first * slice_elements, inner_high,
                          max_elements)
        if first == last:
            return
    whole_start, whole_stop = -(-low // slice_elements), high // slice_elements
    if whole_stop > whole_start:
        yield from _blocks(view, prefix, axis, flat_offset, max_elements, 1, whole_start, whole_stop)
    if high % slice_elements and high // slice_elements >= whole_start:
        index = high // slice_elements
        yield from _range(view, (*prefix, index), axis + 1, flat_offset + index * slice_elements, 0,
                          high - index * slice_elements, max_elements)


def _blocks(view: tuple[int, ...], prefix: tuple[int, ...], axis: int, flat_offset: int,
            max_elements: int, row_multiple: int, first: int = 0, last: int | None = None) -> Iterator[Block]:
    """Blocks of the slices ``first:last`` (all by default) along ``axis`` of the slice ``prefix``."""
    slice_elements = math.prod(view[axis + 1:])
    last = view[axis] if last is None else last
    per_block = max_elements // slice_elements
    if axis == 0 and row_multiple > 1:
        per_block = max(row_multiple, per_block // row_multiple * row_multiple)
    if per_block >= 1 or axis == len(view) - 1:
        per_block = max(1, per_block)
        for start in range(first, last, per_block):
            stop = min(last, start + per_block)
            yield Block(prefix, axis, start, stop, flat_offset + start * slice_elements,
                        flat_offset + stop * slice_elements, (stop - start, *view[axis + 1:]))
        return
    for index in range(first, last):
        yield from _blocks(view, (*prefix, index), axis + 1, flat_offset + index * slice_elements,
                           max_elements, row_multiple)


def axis_pieces(vectors: list[torch.Tensor], block: Block) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Each axis's per-index vector restricted to ``block``: 0-d tensors for the prefix axes, and
    views that broadcast against the block's shape for the block axis and the trailing axes."""
    prefix = [vectors[axis][index] for axis, index in enumerate(block.prefix)]
    rank = len(block.shape)
    views = []
    for offset, axis in enumerate(range(block.axis, len(vectors))):
        vector = vectors[axis][block.start:block.stop] if offset == 0 else vectors[axis]
        shape = [1] * rank
        shape[offset] = vector.shape[0]
        views.append(vector.view(shape))
    return prefix, views


def combine_pieces(prefix: list[torch.Tensor], views: list[torch.Tensor], op: Callable) -> torch.Tensor:
    """``op``-combine the pieces into one tensor of the block's shape, smallest pieces first, so
    only the last combination is block-sized."""
    result = views[0]
    for scalar in prefix:
        result = op(result, scalar)
    for view in views[1:]:
        result = op(result, view)
    return result


def slice_reductions(values: torch.Tensor, block: Block, reduce: Callable) -> list[torch.Tensor]:
    """For every axis of the view, ``values`` (block-shaped) reduced over all the other axes.

    Prefix axes get the 0-d reduction of the whole block; the block axis a vector of its
    range; each trailing axis a vector of its full length. Two block-sized passes at most.
    """
    trailing_dims = tuple(range(1, values.dim()))
    along_axis = reduce(values, dim=trailing_dims) if trailing_dims else values
    results = ([reduce(along_axis, dim=0)] * len(block.prefix) if block.prefix else []) + [along_axis]
    if trailing_dims:
        rest = reduce(values, dim=0)
        for dim in range(rest.dim()):
            others = tuple(d for d in range(rest.dim()) if d != dim)
            results.append(reduce(rest, dim=others) if others else rest)
    return results


def accumulate(targets: list[torch.Tensor], block: Block, values: list[torch.Tensor], combine: str,
               alpha: float = 1.0) -> None:
    """Fold :func:`slice_reductions` output into per-axis vectors, in place.

    ``combine`` is ``"add"`` (``target += alpha * value``) or ``"max"`` (``target = max(target,
    value)``).
    """
    for axis, value in enumerate(values):
        if axis < len(block.prefix):
            target = targets[axis][block.prefix[axis]:block.prefix[axis] + 1]
        elif axis == block.axis:
            target = targets[axis][block.start:block.stop]
        else:
            target = targets[axis]
        if combine == "add":
            target.add_(value, alpha=alpha)
        else:
            torch.maximum(target, value, out=target)
