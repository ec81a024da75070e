"""The byte model against ALGORITHMS.md's formulas (written out here independently) and against the
tensors that torch.optim and pytorch_optimizer really allocate."""

import functools
import math

import pytest
import torch
from hypothesis import given, settings, strategies as st

from memplan.errors import LayoutError
from memplan.methods import METHODS, param_state, state_bytes
from memplan.methods.shapes import et_index
from memplan.measure import plain_tensors, state_storage_bytes
from memplan.methods import build as build_baseline

special_shapes = [(), (1,), (7,), (7919,), (1, 1), (13, 1), (1, 13), (3, 5, 7), (64, 3, 3, 3), (128, 64, 1, 1),
                  (30522, 768), (0,), (0, 5), (2, 1, 3, 1), (4096,), (64, 96), (4224,)]
shapes = st.one_of(
    st.sampled_from(special_shapes),
    st.lists(st.integers(min_value=0, max_value=300), min_size=0, max_size=4).map(tuple),
)


@functools.lru_cache(maxsize=None)  # each shape's formulas ask for it four times (the smmf rows)
def square(count):
    if count == 0:
        return 0, 0
    m = max(d for d in range(1, math.isqrt(count) + 1) if count % d == 0)
    return count // m, m


def factored(shape):
    """4 * (n_1 ... n_{d-2}) * (n_{d-1} + n_d) for d >= 2, else None."""
    if len(shape) < 2:
        return None
    return 4 * math.prod(shape[:-2]) * (shape[-2] + shape[-1])


def expected_bytes(spec, shape):
    """ALGORITHMS.md's byte formulas, fp32 parameters."""
    n_el = math.prod(shape)
    natural_sum = sum(shape) if shape else 1
    formulas = {
        "adam": 8 * n_el,
        "adam:amsgrad=true": 12 * n_el,
        "adamw": 8 * n_el,
        "adagrad": 4 * n_el,
        "sgd": 0,
        "sgd:momentum=0.9": 4 * n_el,
        "adafactor": factored(shape) if factored(shape) is not None else 4 * n_el,
        "adafactor:beta1=0.9": (factored(shape) if factored(shape) is not None else 4 * n_el) + 4 * n_el,
        # CAME: see memplan/methods/came.py for why a vector costs 8N rather than ALGORITHMS.md's 12N,
        # and for the 4-byte RMS scalar pytorch_optimizer keeps per tensor
        "came": 4 * n_el + (2 * factored(shape) if factored(shape) is not None else 4 * n_el) + 4,
        "sm3": 4 * natural_sum + 4 * n_el,
        "sm3:momentum=0": 4 * natural_sum,
        "sm3:impl=pytorch_optimizer": 4 * n_el + 4 * natural_sum,
        "smmf": 8 * sum(square(n_el)) + math.ceil(n_el / 8),
        "smmf:sign_bits=8": 8 * sum(square(n_el)) + n_el,
        "smmf:beta1=none": 4 * sum(square(n_el)),
        "smmf:vector_reshape=false": (8 * n_el if len(shape) <= 1 else 8 * sum(square(n_el)) + math.ceil(n_el / 8)),
        "et": 4 * sum(et_index(shape, 1)),
        "et1": 4 * sum(et_index(shape, 1)),
        "et2": 4 * sum(et_index(shape, 2)),
        "et3": 4 * sum(et_index(shape, 3)),
        "et1:momentum=0.9": 4 * sum(et_index(shape, 1)) + 4 * n_el,
        "et_inf": 4,
        # torchao: 2 moments, each N uint8 codes (N / 2 for 4 bits), an fp32 scale per block and a 256- or
        # 16-entry fp32 map when N >= 4096 and the block divides N; else 2 plain fp32 moments
        "adamw8bit": 2 * (n_el + 4 * n_el // 256 + 4 * 256) if n_el >= 4096 and n_el % 256 == 0 else 8 * n_el,
        "adamw4bit": 2 * (n_el // 2 + 4 * n_el // 128 + 4 * 16) if n_el >= 4096 and n_el % 128 == 0 else 8 * n_el,
    }
    return formulas[spec]


FORMULA_SPECS = ["adam", "adam:amsgrad=true", "adamw", "adagrad", "sgd", "sgd:momentum=0.9", "adafactor",
                 "adafactor:beta1=0.9", "came", "sm3", "sm3:momentum=0", "sm3:impl=pytorch_optimizer", "smmf",
                 "smmf:sign_bits=8", "smmf:beta1=none", "smmf:vector_reshape=false", "et", "et1", "et2", "et3",
                 "et1:momentum=0.9", "et_inf", "adamw8bit", "adamw4bit"]


@settings(max_examples=150, deadline=None)
@given(shapes)
def test_state_bytes_equal_the_formulas_exactly(shape):
    for spec in FORMULA_SPECS:
        assert state_bytes(spec, shape) == expected_bytes(spec, shape), (spec, shape)


def test_every_registered_method_has_a_formula():
    assert {spec.split(":")[0] for spec in FORMULA_SPECS} == set(METHODS)


def test_worked_examples():
    assert param_state("smmf", (30522, 768)).layout == (5087, 4608)
    assert state_bytes("smmf", (30522, 768)) == 8 * (5087 + 4608) + 23440896 // 8
    assert state_bytes("adam", (10, 10), "bfloat16") == 400          # torch keeps state in the param dtype
    assert state_bytes("smmf", (10, 10), "bfloat16") == state_bytes("smmf", (10, 10))  # memplan: fp32 state


def test_a_given_layout_replaces_the_default_and_must_fit():
    assert state_bytes("et1", (64, 64, 3, 3), layout=(64, 576)) == 4 * (64 + 576)
    assert state_bytes("smmf:beta1=none", (768, 2304), layout=(768, 2304)) == 4 * (768 + 2304)
    assert state_bytes("sm3:momentum=0", (768, 2304), layout=(48, 16, 2304)) == 4 * (48 + 16 + 2304)
    with pytest.raises(LayoutError, match="has 10 elements"):
        param_state("et2", (3, 4), layout=(2, 5))
    with pytest.raises(LayoutError, match=r"matricization \[n, m\]"):
        param_state("smmf", (3, 4), layout=(2, 2, 3))
    with pytest.raises(LayoutError, match="takes no layout"):
        param_state("adam", (3, 4), layout=(12,))


def test_bytes_moved_counts_param_grad_and_state_traffic():
    shape = (100, 10)
    adam = param_state("adam", shape)
    assert adam.bytes_moved == 1000 * 4 * 3 + 2 * 8000
    et = param_state("et1", shape)
    assert et.bytes_moved == 1000 * 4 * 4 + 2 * 4 * 110   # two passes over the gradient


def test_momentum_kinds():
    assert param_state("smmf", (4, 4)).momentum == "sign_factored"
    assert param_state("smmf:vector_reshape=false", (4,)).momentum == "full"
    assert param_state("smmf:beta1=none", (4, 4)).momentum == "none"
    assert param_state("adam", (4,)).momentum == "full"
    assert param_state("sm3:momentum=0", (4,)).momentum == "none"


# --- against the real third-party allocations -------------------------------------------------

BASELINE_SPECS = ["adam", "adam:amsgrad=true", "adam:impl=forloop", "adamw", "adagrad", "sgd", "sgd:momentum=0.9",
                  "adafactor", "adafactor:beta1=0.9", "came", "sm3:impl=pytorch_optimizer",
                  "sm3:impl=pytorch_optimizer,momentum=0"]
REAL_SHAPES = [(), (1,), (7,), (5, 3), (1, 9), (4, 3, 2), (6, 2, 3, 3), (8, 4, 1, 1), (0, 3)]


def allocated_state(optimizer):
    """{key: (shape, dtype)} of every tensor in the optimizer state, step counters excluded."""
    states = list(optimizer.state.values())
    assert len(states) <= 1
    state = states[0] if states else {}
    return {name: (tuple(tensor.shape), str(tensor.dtype).removeprefix("torch."))
            for key, value in state.items() if key != "step" for name, tensor in plain_tensors(key, value)}


@pytest.mark.parametrize("spec", BASELINE_SPECS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_predicted_tensors_are_exactly_what_the_library_allocates(spec, dtype):
    pytest.importorskip("pytorch_optimizer")
    for shape in REAL_SHAPES:
        if spec.startswith(("came", "adafactor", "sm3")) and 0 in shape:
            continue  # these libraries divide by numel: they cannot step an empty tensor at all
        assert_allocation_is_predicted(spec, shape, dtype)


def assert_allocation_is_predicted(spec, shape, dtype):
    """One step of ``spec``'s library optimizer on one parameter allocates exactly the predicted
    tensors (key, shape, dtype), and their storages add up to the predicted bytes."""
    param = torch.nn.Parameter(torch.randn(shape, dtype=dtype))
    param.grad = torch.randn(shape, dtype=dtype)
    optimizer = build_baseline(spec, [param])
    optimizer.step()
    dtype_name = str(dtype).removeprefix("torch.")
    predicted = {t.key: (t.shape, t.dtype) for t in param_state(spec, shape, dtype_name).tensors}
    assert allocated_state(optimizer) == predicted, (spec, shape, dtype)
    assert state_storage_bytes(optimizer) == state_bytes(spec, shape, dtype_name), (spec, shape, dtype)


LOW_BIT_SPECS = ["adamw8bit", "adamw4bit", "adamw8bit:block_size=128", "adamw4bit:block_size=64"]
LOW_BIT_SHAPES = [(), (7,), (4095,), (4096,), (4100,), (64, 64), (4, 3, 512), (130, 128), (33, 129)]


@pytest.mark.parametrize("spec", LOW_BIT_SPECS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_low_bit_adam_tensors_are_exactly_what_torchao_allocates(spec, dtype, monkeypatch):
    pytest.importorskip("torchao")
    # torchao compiles each parameter's update; the allocation is the same without compiling
    monkeypatch.setattr(torch, "compile", lambda function, **options: function)
    for shape in LOW_BIT_SHAPES:
        assert_allocation_is_predicted(spec, shape, dtype)


def test_the_quantization_maps_have_the_lengths_the_byte_model_uses():
    pytest.importorskip("torchao")
    from torchao.optim import subclass_4bit, subclass_8bit

    from memplan.methods.lowbit import QMAP_ENTRIES

    assert len(subclass_8bit.get_qmap_signed()) == len(subclass_8bit.get_qmap_unsigned()) == QMAP_ENTRIES[8]
    assert len(subclass_4bit.get_qmap_signed()) == len(subclass_4bit.get_qmap_unsigned()) == QMAP_ENTRIES[4]
