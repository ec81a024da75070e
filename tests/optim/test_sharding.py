"""The single-process parts of memplan.optim.sharding: packing bits for checkpoints that load on
another world size (the distributed paths run in test_distributed.py)."""

from __future__ import annotations

import math

import pytest
import torch

from memplan.optim import SMMF
from memplan.optim.sharding import pack_bits, packed_bits, unpack_bits
from memplan.optim.smmf import pack_signs, unpack_signs


@pytest.mark.parametrize("count", (1, 7, 8, 18, 37, 64))
def test_unpacked_bits_are_the_signs_smmf_reads(count):
    generator = torch.Generator().manual_seed(count)
    packed = torch.randint(0, 256, (math.ceil(count / 8),), dtype=torch.uint8, generator=generator)
    assert torch.equal(unpack_bits(packed, count).float() * 2 - 1, unpack_signs(packed, count))


@pytest.mark.parametrize("count", (1, 7, 8, 18, 37, 64))
def test_packed_bits_are_what_smmf_packs(count):
    bits = torch.rand(count, generator=torch.Generator().manual_seed(count)) > 0.5
    expected = torch.empty(math.ceil(count / 8), dtype=torch.uint8)
    pack_signs(bits.to(torch.uint8), expected)
    assert torch.equal(pack_bits(bits, math.ceil(count / 8)), expected)
    assert torch.equal(pack_bits(bits, math.ceil(count / 8) + 2)[-2:], torch.zeros(2, dtype=torch.uint8))


def test_signs_saved_one_bool_per_element_load_into_a_single_process_optimizer():
    """A checkpoint's portable signs (one bool per element, as a sharded state_dict saves them) load
    into an unsharded SMMF as its packed bits, and it steps on exactly as the original."""
    torch.manual_seed(0)
    original_param = torch.nn.Parameter(torch.randn(5, 6))
    copy_param = torch.nn.Parameter(original_param.detach().clone())
    original, copy = SMMF([original_param], lr=0.01), SMMF([copy_param], lr=0.01)
    for _ in range(3):
        original_param.grad = torch.randn(5, 6)
        original.step()
    saved = original.state_dict()
    packed = saved["state"][0]["sign"]
    assert packed.dtype == torch.uint8 and packed.shape == (4,)   # unsharded: kept packed
    saved["state"][0] = {**saved["state"][0], "sign": unpack_bits(packed, 30).view(5, 6)}
    copy.load_state_dict(saved)
    assert torch.equal(unpack_bits(copy.state[copy_param]["sign"], 30), unpack_bits(packed, 30))
    copy_param.data.copy_(original_param.detach())
    gradient = torch.randn(5, 6)
    original_param.grad, copy_param.grad = gradient, gradient.clone()
    original.step()
    copy.step()
    assert torch.equal(original_param, copy_param)


def test_portable_signs_of_another_shape_are_refused():
    with pytest.raises(ValueError, match=r"saved signs of shape \[4, 6\] do not fit a parameter of shape \[5, 6\]"):
        packed_bits(torch.zeros(4, 6, dtype=torch.bool), torch.zeros(5, 6))
