import math

import torch
from hypothesis import given, settings, strategies as st

from memplan.optim.blocks import CACHE_BLOCK_ELEMENTS, partition, range_blocks, reduce_granules, tensor_blocks

views = st.lists(st.integers(min_value=1, max_value=40), min_size=1, max_size=4).map(tuple)
small_views = st.lists(st.integers(min_value=1, max_value=12), min_size=1, max_size=4).map(tuple)
"""Views whose 8-element granules stay few: every kind of mid-row cut, in a fraction of the time."""


@settings(deadline=None)
@given(views, st.integers(min_value=1, max_value=5000), st.sampled_from([1, 8]))
def test_blocks_tile_the_flat_tensor_in_order(view, max_elements, row_multiple):
    blocks = list(tensor_blocks(view, max_elements, row_multiple))
    assert blocks[0].flat_start == 0 and blocks[-1].flat_stop == math.prod(view)
    for before, after in zip(blocks, blocks[1:]):
        assert before.flat_stop == after.flat_start
    for block in blocks:
        assert math.prod(block.shape) == block.flat_stop - block.flat_start
        assert block.shape == (block.stop - block.start, *view[block.axis + 1:])
        if row_multiple == 1:
            assert math.prod(block.shape) <= max(max_elements, view[-1] if block.axis == len(view) - 1 else 0)


@settings(max_examples=50, deadline=None)
@given(views, st.integers(min_value=1, max_value=500))
def test_granule_sums_equal_the_dense_slice_sums(view, max_elements):
    values = torch.rand(view, dtype=torch.float64)
    sums = [torch.zeros(d, dtype=torch.float64) for d in view]
    for budget in (max_elements * 8, None):
        for target in sums:
            target.zero_()
        for block, granules in partition(view, budget, 8):
            part = values.reshape(-1)[block.flat_start:block.flat_stop].view(block.shape)
            reduce_granules(part, block, granules, sums, torch.sum, "add")
        for axis, target in enumerate(sums):
            others = tuple(a for a in range(len(view)) if a != axis)
            torch.testing.assert_close(target, values.sum(dim=others) if others else values)


def test_unchunked_is_one_block_of_cache_sized_granules():
    view = (3 * CACHE_BLOCK_ELEMENTS // 1000, 1000)
    plan = partition(view, None, 8)
    assert len(plan) == 1 and len(plan[0][1]) == 3
    assert [len(granules) for _, granules in partition(view, 2**30, 8)] == [1, 1, 1]
    assert list(tensor_blocks((0, 5), 10)) == []


@settings(max_examples=200, deadline=None)
@given(views, st.data(), st.integers(min_value=1, max_value=60))
def test_range_blocks_tile_a_flat_range_that_starts_and_ends_mid_row(view, data, max_elements):
    total = math.prod(view)
    start = data.draw(st.integers(min_value=0, max_value=total))
    stop = data.draw(st.integers(min_value=start, max_value=total))
    flat_index = torch.arange(total).view(view)
    position = start
    for block in range_blocks(view, start, stop, max_elements):
        assert block.flat_start == position
        covered = flat_index[block.prefix][block.start:block.stop] if block.prefix else flat_index[block.start:block.stop]
        assert covered.reshape(-1).tolist() == list(range(block.flat_start, block.flat_stop))
        assert math.prod(block.shape) <= max(max_elements, view[-1])
        position = block.flat_stop
    assert position == stop


@settings(max_examples=50, deadline=None)
@given(small_views, st.data())
def test_slice_sums_of_ranges_add_up_to_the_dense_ones(view, data):
    """Cut anywhere, the ranges' partial slice sums (as ranks compute them) total the dense sums."""
    total = math.prod(view)
    cut = data.draw(st.integers(min_value=0, max_value=total))
    values = torch.rand(view, dtype=torch.float64)
    sums = [torch.zeros(d, dtype=torch.float64) for d in view]
    for start, stop in ((0, cut), (cut, total)):
        for block, granules in partition(view, 64, 8, start=start, stop=stop):
            part = values.reshape(-1)[block.flat_start:block.flat_stop].view(block.shape)
            reduce_granules(part, block, granules, sums, torch.sum, "add")
    for axis, target in enumerate(sums):
        others = tuple(a for a in range(len(view)) if a != axis)
        torch.testing.assert_close(target, values.sum(dim=others) if others else values)
