import pytest
import torch

from memplan.methods.shapes import natural_view
from memplan.optim import SM3

from . import reference
from .helpers import assert_close_histories, assert_state_matches_byte_model, gradient_sequence, run, stepped

SHAPES = [(7,), (), (5, 7), (4, 3, 3, 3), (64, 48), (1, 9)]


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("options", [{}, {"momentum": 0.9}, {"variant": "I"}, {"variant": "I", "momentum": 0.5}])
def test_matches_the_dense_reference(shape, options):
    param0 = torch.randn(shape, generator=torch.Generator().manual_seed(3))
    grads = gradient_sequence(shape, steps=5)
    actual, _, _ = run(lambda p: SM3(p, lr=0.1, **options), param0, grads)
    assert_close_histories(actual, reference.sm3(param0, grads, natural_view(shape), lr=0.1, **options))


def test_a_cover_on_a_reshaped_view():
    param0, grads = torch.randn(8, 9), gradient_sequence((8, 9), steps=4)
    actual, optimizer, param = run(lambda p: SM3(p, lr=0.1, cover=lambda n, s: (4, 2, 9)), param0, grads)
    assert_close_histories(actual, reference.sm3(param0, grads, (4, 2, 9), lr=0.1))
    assert sum(optimizer.state[param][f"acc_{i}"].numel() for i in range(3)) == 15


@pytest.mark.parametrize("momentum", [0.0, 0.9])
def test_sm3_ii_agrees_with_pytorch_optimizer(momentum):
    pytorch_optimizer = pytest.importorskip("pytorch_optimizer")
    for shape in [(5, 7), (4, 3, 3, 3), (11,)]:
        param0, grads = torch.randn(shape), gradient_sequence(shape, steps=6)
        ours, _, _ = run(lambda p: SM3(p, lr=0.1, momentum=momentum), param0, grads)
        theirs, _, _ = run(lambda p: pytorch_optimizer.SM3(p, lr=0.1, momentum=momentum), param0, grads)
        assert_close_histories(ours, theirs, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("chunk_bytes", [16 * 2**20, 32 * 2**20])
@pytest.mark.parametrize("variant", ["I", "II"])
def test_chunked_and_unchunked_steps_are_bit_identical(chunk_bytes, variant):
    param0, grads = torch.randn(1200, 1000), gradient_sequence((1200, 1000), steps=3)
    chunked, _, _ = run(lambda p: SM3(p, variant=variant, momentum=0.9, chunk_bytes=chunk_bytes), param0, grads)
    whole, _, _ = run(lambda p: SM3(p, variant=variant, momentum=0.9, chunk_bytes=None), param0, grads)
    for a, b in zip(chunked, whole):
        assert torch.equal(a, b)


@pytest.mark.parametrize("spec", ["sm3", "sm3:momentum=0", "sm3:variant=I"])
def test_state_is_exactly_what_the_byte_model_predicts(spec):
    shapes = [(30, 20), (7,), (), (4, 3, 3, 3)]
    optimizer, params = stepped(spec, shapes)
    assert_state_matches_byte_model(optimizer, params, spec)
