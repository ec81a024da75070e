import io
import math

import pytest
import torch

from memplan.methods.shapes import square_matricization
from memplan.optim import SMMF
from memplan.optim.smmf import byte_signs, pack_signs, positive_signs, store_signs, unpack_signs

from . import reference
from .helpers import assert_close_histories, assert_state_matches_byte_model, gradient_sequence, run

SHAPES = [(7,), (13,), (1,), (), (5, 7), (4, 3, 3, 3), (64, 48), (31, 17)]


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("options", [
    {},
    {"beta1": None},
    {"weight_decay": 0.1, "weight_decay_mode": "adam"},
    {"weight_decay": 0.1, "weight_decay_mode": "adamw", "maximize": True},
    {"decay_rate": -0.8, "growth_rate": 0.99, "sign_bits": 8},
])
def test_matches_the_dense_reference(shape, options):
    param0 = torch.randn(shape, generator=torch.Generator().manual_seed(1))
    grads = gradient_sequence(shape, steps=6)
    actual, _, _ = run(lambda p: SMMF(p, lr=1e-2, **options), param0, grads)
    reference_options = {k: v for k, v in options.items() if k != "sign_bits"}
    expected = reference.smmf(param0, grads, square_matricization(math.prod(shape)), lr=1e-2, **reference_options)
    assert_close_histories(actual, expected)


def test_unfactored_vectors_match_the_reference():
    param0, grads = torch.randn(11), gradient_sequence((11,), steps=5)
    actual, optimizer, param = run(lambda p: SMMF(p, lr=1e-2, vector_reshape=False), param0, grads)
    assert_close_histories(actual, reference.smmf(param0, grads, None, lr=1e-2))
    assert set(optimizer.state[param]) == {"exp_avg", "exp_avg_sq", "step", "layout"}


def test_a_given_matricization_is_used_and_checked():
    param0, grads = torch.randn(6, 8), gradient_sequence((6, 8), steps=4)
    actual, optimizer, param = run(lambda p: SMMF(p, lr=1e-2, matricization=lambda name, shape: (3, 16)),
                                   param0, grads)
    assert optimizer.state[param]["row_v"].shape == (3,)
    assert_close_histories(actual, reference.smmf(param0, grads, (3, 16), lr=1e-2))
    with pytest.raises(ValueError, match=r"matricization of parameter #0 of shape \[6, 8\]: .*has 10 elements"):
        SMMF([torch.nn.Parameter(param0)], matricization=lambda name, shape: (2, 5))


def test_one_bit_and_eight_bit_signs_give_identical_trajectories():
    param0, grads = torch.randn(37, 29), gradient_sequence((37, 29), steps=8)
    one_bit, _, _ = run(lambda p: SMMF(p, lr=1e-2, sign_bits=1), param0, grads)
    eight_bit, _, _ = run(lambda p: SMMF(p, lr=1e-2, sign_bits=8), param0, grads)
    for a, b in zip(one_bit, eight_bit):
        assert torch.equal(a, b)


@pytest.mark.parametrize("chunk_bytes", [16 * 2**20, 32 * 2**20])
@pytest.mark.parametrize("options", [{}, {"beta1": None}, {"sign_bits": 8}])
def test_chunked_and_unchunked_steps_are_bit_identical(chunk_bytes, options):
    shape = (1200, 1000)  # 1.2 M elements: three blocks
    param0, grads = torch.randn(shape), gradient_sequence(shape, steps=4)
    chunked, _, _ = run(lambda p: SMMF(p, lr=1e-2, chunk_bytes=chunk_bytes, **options), param0, grads)
    whole, _, _ = run(lambda p: SMMF(p, lr=1e-2, chunk_bytes=None, **options), param0, grads)
    for a, b in zip(chunked, whole):
        assert torch.equal(a, b)


def test_tiny_chunks_still_follow_the_reference():
    shape = (300, 200)
    param0, grads = torch.randn(shape), gradient_sequence(shape, steps=3)
    actual, _, _ = run(lambda p: SMMF(p, lr=1e-2, chunk_bytes=64 * 2**10), param0, grads)
    assert_close_histories(actual, reference.smmf(param0, grads, square_matricization(60000), lr=1e-2))


@pytest.mark.parametrize("count", [1, 7, 8, 9, 64, 1001])
def test_sign_packing_round_trips_with_bit_j_of_byte_i_for_element_8i_plus_j(count):
    positive = torch.rand(count) > 0.5
    packed = torch.zeros(math.ceil(count / 8), dtype=torch.uint8)
    pack_signs(positive, packed)
    expected_bytes = [sum(int(positive[8 * i + j]) << j for j in range(8) if 8 * i + j < count)
                      for i in range(len(packed))]
    assert packed.tolist() == expected_bytes
    assert torch.equal(unpack_signs(packed, count), positive.float() * 2 - 1)
    assert torch.equal(byte_signs(positive.to(torch.uint8)), positive.float() * 2 - 1)


@pytest.mark.parametrize("cuts", [(0, 13, 16, 21, 40), (3, 5, 6, 30, 31, 37), (0, 8, 16), (7, 9)])
def test_signs_stored_piece_by_piece_from_any_offset_equal_signs_packed_at_once(cuts):
    """A rank's range, and the blocks of it, may start and end mid-byte: writing the pieces in
    order gives the bytes that packing the whole run gives, and each piece reads back."""
    generator = torch.Generator().manual_seed(len(cuts))
    start, stop = cuts[0], cuts[-1]
    positive = torch.randint(0, 2, (stop - start,), generator=generator, dtype=torch.uint8)
    expected = torch.zeros(math.ceil((stop - start) / 8), dtype=torch.uint8)
    pack_signs(positive, expected)
    packed = torch.full_like(expected, 0)
    for low, high in zip(cuts, cuts[1:]):
        store_signs(packed, low - start, positive[low - start:high - start], last=high == stop)
    assert torch.equal(packed, expected)
    for low, high in zip(cuts, cuts[1:]):
        signs = unpack_signs(packed, high - low, low - start)
        assert torch.equal(signs, positive[low - start:high - start].float() * 2 - 1)


def test_signs_of_floats_follow_greater_than_zero():
    values = torch.tensor([1.5, -2.0, 0.0, -0.0, 1e-45, -1e-45, float("inf"), float("-inf")])
    assert positive_signs(values).tolist() == [1, 0, 0, 0, 1, 0, 1, 0]



@pytest.mark.parametrize("spec, options", [("smmf", {}), ("smmf:sign_bits=8", {"sign_bits": 8}),
                                           ("smmf:beta1=none", {"beta1": None}),
                                           ("smmf:vector_reshape=false", {"vector_reshape": False})])
def test_state_is_exactly_what_the_byte_model_predicts(spec, options):
    shapes = [(30, 20), (7,), (), (4, 3, 3, 3)]
    params = [torch.nn.Parameter(torch.randn(shape)) for shape in shapes]
    optimizer = SMMF(params, **options)
    for param in params:
        param.grad = torch.randn_like(param)
    optimizer.step()
    assert_state_matches_byte_model(optimizer, params, spec)


def test_state_dict_round_trip_keeps_packed_signs_and_resumes_bit_identically():
    shape = (40, 30)
    param0, grads = torch.randn(shape), gradient_sequence(shape, steps=10)
    straight, _, _ = run(lambda p: SMMF(p, lr=1e-2), param0, grads)

    param = torch.nn.Parameter(param0.clone())
    optimizer = SMMF([param], lr=1e-2)
    for grad in grads[:5]:
        param.grad = grad.clone()
        optimizer.step()
    buffer = io.BytesIO()
    torch.save({"param": param.detach(), "optim": optimizer.state_dict()}, buffer)
    buffer.seek(0)
    saved = torch.load(buffer, weights_only=True)
    resumed_param = torch.nn.Parameter(saved["param"].clone())
    resumed = SMMF([resumed_param], lr=1e-2)
    resumed.load_state_dict(saved["optim"])
    assert resumed.state[resumed_param]["sign"].dtype == torch.uint8
    for grad, expected in zip(grads[5:], straight[5:]):
        resumed_param.grad = grad.clone()
        resumed.step()
        assert torch.equal(resumed_param.detach().double(), expected)


def test_bf16_parameters_keep_fp32_state_and_their_dtype():
    param = torch.nn.Parameter(torch.randn(16, 8).to(torch.bfloat16))
    optimizer = SMMF([param], lr=1e-2)
    param.grad = torch.randn(16, 8).to(torch.bfloat16)
    before = param.detach().clone()
    optimizer.step()
    assert param.dtype == torch.bfloat16 and not torch.equal(param, before)
    assert {v.dtype for k, v in optimizer.state[param].items() if k != "sign" and isinstance(v, torch.Tensor)} == {torch.float32}


def test_a_step_runs_on_meta_with_the_predicted_state_shapes():
    param = torch.nn.Parameter(torch.empty(32000, 4096, device="meta"))
    param.grad = torch.empty(32000, 4096, device="meta")
    optimizer = SMMF([param])
    optimizer.step()
    state = optimizer.state[param]
    assert state["row_m"].shape == (12800,) and state["col_m"].shape == (10240,)
    assert state["sign"].shape == (32000 * 4096 // 8,) and state["sign"].device.type == "meta"
