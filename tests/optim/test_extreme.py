
import pytest
import torch

from memplan.methods.shapes import et_index
from memplan.optim import ETInfinity, ExtremeTensoring

from . import reference
from .helpers import assert_close_histories, assert_state_matches_byte_model, gradient_sequence, run, stepped

SHAPES = [(7,), (13,), (), (5, 7), (4, 3, 3, 3), (64, 48), (128, 64, 1, 1)]


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("preset", ["et1", "et2", "et3"])
@pytest.mark.parametrize("options", [{}, {"beta2": 0.9}, {"momentum": 0.9},
                                     {"weight_decay": 0.1, "weight_decay_mode": "adam", "maximize": True},
                                     {"weight_decay": 0.1}])
def test_matches_the_dense_reference(shape, preset, options):
    param0 = torch.randn(shape, generator=torch.Generator().manual_seed(2))
    grads = gradient_sequence(shape, steps=5)
    actual, _, _ = run(lambda p: ExtremeTensoring(p, lr=1e-2, index=preset, **options), param0, grads)
    index = et_index(shape, int(preset[-1]))
    assert_close_histories(actual, reference.extreme_tensoring(param0, grads, index, lr=1e-2, **options))


def test_a_single_axis_index_is_torch_adagrad():
    """ET puts eps under the root, torch.optim.Adagrad adds it to the root: with eps = 0 the two
    conventions coincide, and ET with the index (N,) is AdaGrad."""
    shape = (50, 20)
    param0, grads = torch.randn(shape), gradient_sequence(shape, steps=10)
    ours, _, _ = run(lambda p: ExtremeTensoring(p, lr=0.1, eps=0.0, index=lambda name, s: (1000,)), param0, grads)
    theirs, _, _ = run(lambda p: torch.optim.Adagrad(p, lr=0.1, eps=0.0), param0, grads)
    assert_close_histories(ours, theirs, rtol=1e-5, atol=1e-6)


def test_the_product_of_many_large_accumulators_stays_finite():
    """Eight axes of sums near 1e6 make a product near 1e48, beyond fp32; the result must still
    equal the formula (the reference computes it in float64)."""
    shape = (4,) * 8
    param0 = torch.zeros(shape)
    grads = gradient_sequence(shape, steps=3, scale=300.0)
    actual, _, _ = run(lambda p: ExtremeTensoring(p, lr=1.0, index=lambda name, s: shape), param0, grads)
    expected = reference.extreme_tensoring(param0, grads, shape, lr=1.0)
    assert all(torch.isfinite(a).all() for a in actual)
    assert_close_histories(actual, expected)


def test_mappings_by_name_and_by_tensor_and_errors_naming_the_parameter():
    model = torch.nn.Linear(6, 4)
    optimizer = ExtremeTensoring(model.named_parameters(), index={"weight": (2, 12)})
    for param in model.parameters():
        param.grad = torch.randn_like(param)
    optimizer.step()
    assert [optimizer.state[model.weight][f"acc_{i}"].shape[0] for i in range(2)] == [2, 12]
    assert optimizer.state[model.bias]["layout"] == (4,)
    by_tensor = ExtremeTensoring(model.parameters(), index={model.weight: (24,)})
    assert by_tensor.param_groups[0]["index"] == ((24,), None)
    with pytest.raises(ValueError, match=r"index of parameter 'weight' of shape \[4, 6\]: .*has 25 elements"):
        ExtremeTensoring(model.named_parameters(), index={"weight": (5, 5)})
    with pytest.raises(ValueError, match="Invalid index: 'et9'"):
        ExtremeTensoring(model.parameters(), index="et9")


@pytest.mark.parametrize("chunk_bytes", [16 * 2**20, 32 * 2**20])
@pytest.mark.parametrize("index", [(1200, 1000), (40, 30, 1000), (1200000,), (2, 600, 1000)])
def test_chunked_and_unchunked_steps_are_bit_identical(chunk_bytes, index):
    param0, grads = torch.randn(1200, 1000), gradient_sequence((1200, 1000), steps=3)
    chunked, _, _ = run(lambda p: ExtremeTensoring(p, index=lambda n, s: index, chunk_bytes=chunk_bytes), param0, grads)
    whole, _, _ = run(lambda p: ExtremeTensoring(p, index=lambda n, s: index, chunk_bytes=None), param0, grads)
    for a, b in zip(chunked, whole):
        assert torch.equal(a, b)


def test_et_infinity_matches_the_reference_and_keeps_one_scalar():
    param0, grads = torch.randn(9, 5), gradient_sequence((9, 5), steps=5)
    actual, optimizer, param = run(lambda p: ETInfinity(p, lr=1e-2), param0, grads)
    assert_close_histories(actual, reference.et_infinity(param0, grads, lr=1e-2))
    assert optimizer.state[param]["sum_sq"].shape == ()


@pytest.mark.parametrize("spec", ["et1", "et2", "et3", "et1:momentum=0.9", "et_inf", "et2:beta2=0.99"])
def test_state_is_exactly_what_the_byte_model_predicts(spec):
    shapes = [(30, 20), (7,), (), (4, 3, 3, 3), (512,)]
    optimizer, params = stepped(spec, shapes)
    assert_state_matches_byte_model(optimizer, params, spec)
