"""What users of any torch optimizer rely on, over the optimizer table: copies, dtypes, memory
formats, options changed mid-training, and layouts given as functions."""

from __future__ import annotations

import io
import pickle
from copy import deepcopy

import pytest
import torch
from torch.nn import Parameter

from memplan.measure import state_storage_bytes
from memplan.methods import param_state
from memplan.optim import SM3, SMMF, ExtremeTensoring

from .optimizer_table import IDS, OPTIMIZER_CASES


def quadratic_step(optimizer: torch.optim.Optimizer, weight: torch.Tensor, bias: torch.Tensor,
                   inputs: torch.Tensor) -> float:
    optimizer.zero_grad()
    loss = (weight.mv(inputs) + bias).pow(2).sum()
    loss.backward()
    optimizer.step()
    return loss.item()


def random_gradients(params: list[torch.Tensor], seed: int) -> None:
    generator = torch.Generator().manual_seed(seed)
    for param in params:
        param.grad = torch.randn(param.shape, generator=generator).to(param.dtype)


def _deepcopied(objects):
    return deepcopy(objects)


def _pickled(objects):
    return pickle.loads(pickle.dumps(objects))


def _saved(objects):
    buffer = io.BytesIO()
    torch.save(objects, buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=False)


@pytest.mark.parametrize("case", OPTIMIZER_CASES, ids=IDS)
@pytest.mark.parametrize("copy", [_deepcopied, _pickled, _saved], ids=["deepcopy", "pickle", "torch.save"])
def test_copies_step_exactly_like_the_original(case, copy):
    torch.manual_seed(0)
    params = [Parameter(torch.randn(6, 4)), Parameter(torch.randn(6))]
    optimizer = case.build(params, lr=case.lr)
    for seed in range(2):
        random_gradients(params, seed)
        optimizer.step()
    copied_params, copied = copy((params, optimizer))
    for seed in range(2, 4):
        random_gradients(params, seed)
        random_gradients(copied_params, seed)
        optimizer.step()
        copied.step()
    assert all(torch.equal(a, b) for a, b in zip(params, copied_params))
    assert state_storage_bytes(copied) == state_storage_bytes(optimizer)


@pytest.mark.parametrize("case", OPTIMIZER_CASES, ids=IDS)
def test_a_state_dict_loaded_between_steps_is_the_state_the_next_step_uses(case):
    """Loading into an optimizer that has stepped replaces what its steps had checked and kept."""
    torch.manual_seed(0)
    source_params = [Parameter(torch.randn(6, 4)), Parameter(torch.randn(6))]
    params = [Parameter(param.detach().clone()) for param in source_params]
    source, loaded = case.build(source_params, lr=case.lr), case.build(params, lr=case.lr)
    for seed in range(2):
        random_gradients(source_params, seed)
        source.step()
    random_gradients(params, 7)
    loaded.step()
    loaded.load_state_dict(_saved(source.state_dict()))  # as from a file: torch's Adam would share its step tensors
    with torch.no_grad():
        for param, reference in zip(params, source_params):
            param.copy_(reference)
    random_gradients(source_params, 2)
    random_gradients(params, 2)
    source.step()
    loaded.step()
    assert all(torch.equal(a, b) for a, b in zip(params, source_params))


@pytest.mark.parametrize("optim_cls, key", [(SMMF, "row_v"), (ExtremeTensoring, "acc_0"), (SM3, "acc_0")])
def test_a_state_entry_deleted_between_steps_is_allocated_again(optim_cls, key):
    weight = Parameter(torch.randn(6, 4))
    optimizer = optim_cls([weight], lr=0.01)
    random_gradients([weight], 0)
    optimizer.step()
    bytes_after_one_step = state_storage_bytes(optimizer)
    del optimizer.state[weight][key]
    random_gradients([weight], 1)
    optimizer.step()
    assert key in optimizer.state[weight] and state_storage_bytes(optimizer) == bytes_after_one_step


@pytest.mark.parametrize("case", OPTIMIZER_CASES, ids=IDS)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16, torch.float16],
                         ids=["float64", "float32", "bfloat16", "float16"])
def test_every_floating_dtype_trains_in_place_with_the_byte_models_state(case, dtype):
    torch.manual_seed(0)
    weight, bias = Parameter(torch.randn(12, 8, dtype=dtype)), Parameter(torch.randn(12, dtype=dtype))
    inputs = torch.randn(8, dtype=dtype)
    optimizer = case.build([weight, bias], lr=case.lr / 3)
    losses = [quadratic_step(optimizer, weight, bias, inputs) for _ in range(15)]
    assert losses[-1] < losses[0]
    assert weight.dtype == bias.dtype == dtype
    predicted = case.predicted_states(optimizer, [weight, bias])
    assert state_storage_bytes(optimizer) == sum(state.state_bytes for state in predicted)


@pytest.mark.parametrize("case", OPTIMIZER_CASES, ids=IDS)
def test_float64_parameters_are_computed_in_float64(case):
    """A step with lr = 0 leaves float64 parameters bit-identical, and real steps give values that
    no float32 holds (the fp32 working copy is for bf16 and fp16 only)."""
    param = Parameter(torch.randn(6, 5, dtype=torch.float64))
    before = param.detach().clone()
    optimizer = case.build([param], lr=0.0)
    random_gradients([param], 0)
    optimizer.step()
    assert torch.equal(param, before)
    for group in optimizer.param_groups:
        group["lr"] = case.lr
    random_gradients([param], 1)
    optimizer.step()
    moved = param != before
    assert moved.any() and (param[moved] != param[moved].float().double()).float().mean() > 0.9


def _with_transposed_strides(tensor: torch.Tensor) -> torch.Tensor:
    """The same values, laid out with reversed strides (a non-contiguous tensor)."""
    order = tuple(reversed(range(tensor.dim())))
    return tensor.permute(order).contiguous().permute(order)


@pytest.mark.parametrize("case", OPTIMIZER_CASES, ids=IDS)
def test_channels_last_and_non_contiguous_gradients_follow_the_contiguous_trajectory(case):
    """Layouts are of the row-major (logical) order: a channels_last convolution, or a gradient with
    other strides, gets exactly the state and trajectory of the contiguous parameter."""
    torch.manual_seed(0)
    weight0 = torch.randn(8, 4, 3, 3)
    grads = [torch.randn(8, 4, 3, 3) for _ in range(3)]
    contiguous = Parameter(weight0.clone())
    channels_last = Parameter(weight0.clone().to(memory_format=torch.channels_last))
    strided_grads = Parameter(weight0.clone())
    params = (contiguous, channels_last, strided_grads)
    optimizers = [case.build([param], lr=case.lr) for param in params]
    for grad in grads:
        contiguous.grad = grad.clone()
        channels_last.grad = grad.clone().to(memory_format=torch.channels_last)
        strided_grads.grad = _with_transposed_strides(grad)
        for optimizer in optimizers:
            optimizer.step()
    assert channels_last.is_contiguous(memory_format=torch.channels_last) and not channels_last.is_contiguous()
    for param, optimizer in zip(params[1:], optimizers[1:]):
        assert torch.equal(param, contiguous)
        reference = optimizers[0].state[contiguous]
        state = optimizer.state[param]
        assert state.keys() == reference.keys()
        for key, value in reference.items():
            assert torch.equal(state[key], value) if isinstance(value, torch.Tensor) else state[key] == value


# (optimizer class, options at the start, the same options turned on later, spec of the state then)
OPTIONS_TURNED_ON_LATER = [
    (SMMF, {"beta1": None}, {"beta1": 0.9}, "smmf"),
    (ExtremeTensoring, {"momentum": 0.0}, {"momentum": 0.9}, "et1:momentum=0.9"),
    (SM3, {"momentum": 0.0}, {"momentum": 0.9}, "sm3:momentum=0.9"),
]


@pytest.mark.parametrize("optim_cls, before, after, spec", OPTIONS_TURNED_ON_LATER,
                         ids=[row[0].__name__ for row in OPTIONS_TURNED_ON_LATER])
def test_momentum_turned_on_after_the_first_step_allocates_its_state_then(optim_cls, before, after, spec):
    """State follows the current options: the byte model's bytes for the new spec, from that step on."""
    params = [Parameter(torch.randn(6, 4)), Parameter(torch.randn(6))]
    optimizer = optim_cls(params, lr=0.01, **before)
    random_gradients(params, 0)
    optimizer.step()
    without = state_storage_bytes(optimizer)
    optimizer.param_groups[0].update(after)
    random_gradients(params, 1)
    optimizer.step()
    predicted = sum(param_state(spec, tuple(param.shape)).state_bytes for param in params)
    assert without < state_storage_bytes(optimizer) == predicted


@pytest.mark.parametrize("optim_cls", [ExtremeTensoring, SM3])
def test_cyclic_momentum_attached_on_resume(optim_cls):
    torch.manual_seed(0)
    weight, bias = Parameter(torch.randn(10, 5)), Parameter(torch.randn(10))
    inputs = torch.randn(5)
    optimizer = optim_cls([weight, bias], lr=0.1, momentum=0.0)
    quadratic_step(optimizer, weight, bias, inputs)
    resumed = optim_cls([weight, bias], lr=0.1, momentum=0.0)
    resumed.load_state_dict(optimizer.state_dict())
    scheduler = torch.optim.lr_scheduler.CyclicLR(resumed, base_lr=0.01, max_lr=0.1, step_size_up=2,
                                                  cycle_momentum=True, base_momentum=0.8, max_momentum=0.9)
    losses = []
    for _ in range(4):
        losses.append(quadratic_step(resumed, weight, bias, inputs))
        scheduler.step()
    assert losses[-1] < losses[0] and "momentum_buffer" in resumed.state[weight]


@pytest.mark.parametrize("optim_cls, key", [(SMMF, "matricization"), (ExtremeTensoring, "index"), (SM3, "cover")])
def test_layouts_given_as_lambdas_or_by_tensor_save_print_and_resume(optim_cls, key):
    """Groups keep one layout tuple per parameter: a lambda or a mapping keyed by tensors never
    reaches the state_dict, which loads with weights_only and resumes every layout."""
    weight, bias = Parameter(torch.randn(6, 8)), Parameter(torch.randn(6))
    layout = (48, 1) if optim_cls is SMMF else (3, 16)
    for source in (lambda name, shape: layout if len(shape) == 2 else None, {weight: layout}):
        optimizer = optim_cls([weight, bias], lr=0.01, **{key: source})
        assert optimizer.param_groups[0][key] == (layout, None)
        buffer = io.BytesIO()
        torch.save(optimizer.state_dict(), buffer)  # nothing was stepped: no state holds the layout yet
        buffer.seek(0)
        resumed = optim_cls([weight, bias], lr=0.01)
        resumed.load_state_dict(torch.load(buffer, weights_only=True))
        random_gradients([weight, bias], 0)
        resumed.step()
        assert resumed.state[weight]["layout"] == layout and "tensor(" not in repr(resumed)
