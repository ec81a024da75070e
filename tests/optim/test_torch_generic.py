"""torch's generic optimizer tests (``TestOptimRenewed`` in torch's test/test_optim.py), run over the
optimizer table's ``OptimizerInfo`` entries: memplan's optimizers and ``from_plan``.

Each test keeps the name of the torch test it ports, and runs once per (entry, input) pair. What
applies on CPU is ported; torch's foreach-versus-forloop parity becomes chunked-versus-unchunked
parity, and its complex and sparse tests become tests that memplan refuses both clearly (see the
README's optimizer contract). CUDA-only, fused and capturable tests have no memplan counterpart.
"""

from __future__ import annotations

import functools
import io
from copy import deepcopy
from typing import Any

import pytest
import torch
from torch.nn import Parameter
from torch.optim import SGD
from torch.optim.lr_scheduler import ReduceLROnPlateau, StepLR
from torch.optim.optimizer import register_optimizer_step_post_hook, register_optimizer_step_pre_hook
from torch.testing._internal.common_optimizers import OptimizerErrorEnum

from memplan.optim import MemplanOptimizer
from memplan.optim.base import MIN_CHUNK_BYTES

from .optimizer_table import CHUNKED, OPTIM_DB, OPTIM_INPUTS, input_id

PAIRS = OPTIM_INPUTS
GROUP_PAIRS = [pair for pair in PAIRS if pair[0].supports_param_groups]
CHUNKED_PAIRS = [pair for pair in PAIRS if CHUNKED in pair[0].supported_impls]
GROUP_INFOS = [info for info in OPTIM_DB if info.supports_param_groups]
MEMPLAN_INFOS = [info for info in OPTIM_DB if isinstance(info.optim_cls, type)
                 and issubclass(info.optim_cls, MemplanOptimizer)]


def each(pairs: list) -> Any:
    """Parametrize a test over (entry, input) pairs."""
    return pytest.mark.parametrize("pair", pairs, ids=[input_id(pair) for pair in pairs])


def each_info(infos: list) -> Any:
    """Parametrize a test over entries."""
    return pytest.mark.parametrize("info", infos, ids=[info.name for info in infos])


def build(pair: tuple, params: Any, **overrides: Any) -> torch.optim.Optimizer:
    """The pair's optimizer over ``params``, its input's arguments updated by ``overrides``."""
    info, optim_input = pair
    return info.optim_cls(params, **{**optim_input.kwargs, **overrides})


def maximizes(pair: tuple) -> bool:
    return bool(pair[1].kwargs.get("maximize", False))


def weight_and_bias(contiguous: bool = True, dtype: torch.dtype = torch.float32) -> tuple[Parameter, Parameter]:
    if contiguous:
        return Parameter(torch.randn(10, 5, dtype=dtype)), Parameter(torch.randn(10, dtype=dtype))
    return Parameter(torch.randn(10, 5, 2, dtype=dtype)[..., 0]), Parameter(torch.randn(10, 2, dtype=dtype)[..., 0])


def quadratic_loss(optimizer: torch.optim.Optimizer, weight: torch.Tensor, bias: torch.Tensor,
                   inputs: torch.Tensor) -> torch.Tensor:
    """(W x + b)^2 summed, with fresh gradients: the closure of torch's generic tests."""
    optimizer.zero_grad()
    loss = (weight.mv(inputs) + bias).pow(2).sum()
    loss.backward()
    return loss


def assert_same(actual: Any, expected: Any, path: str = "") -> None:
    """Equal nested state: tensors bit-identical with the same dtype, containers equal element-wise."""
    if isinstance(expected, torch.Tensor):
        assert isinstance(actual, torch.Tensor) and actual.dtype == expected.dtype, path
        assert torch.equal(actual, expected), path
    elif isinstance(expected, dict):
        assert isinstance(actual, dict) and actual.keys() == expected.keys(), path
        for key in expected:
            assert_same(actual[key], expected[key], f"{path}.{key}")
    elif isinstance(expected, (list, tuple)):
        assert type(actual) is type(expected) and len(actual) == len(expected), path
        for index, (left, right) in enumerate(zip(actual, expected)):
            assert_same(left, right, f"{path}[{index}]")
    else:
        assert actual == expected, path


def conv_and_norm() -> torch.nn.Module:
    torch.manual_seed(1)
    return torch.nn.Sequential(torch.nn.Conv2d(4, 2, 1, stride=2), torch.nn.BatchNorm2d(2, eps=1e-05, momentum=0.1))


def step_conv_and_norm(optimizer: torch.optim.Optimizer, model: torch.nn.Module, inputs: torch.Tensor) -> None:
    optimizer.zero_grad()
    model(inputs).sum().backward()
    optimizer.step()


@each_info(OPTIM_DB)
def test_optim_infos_do_not_specify_global_cliquey_kwargs(info):
    """The chunk bound is the tests' to toggle (as torch's foreach flag), never an input's."""
    assert all("chunk_bytes" not in optim_input.kwargs for optim_input in info.optim_inputs_func())


@each_info(OPTIM_DB)
def test_errors(info):
    for error_input in info.optim_error_inputs_func():
        optim_input = error_input.optimizer_error_input
        expect = (pytest.warns if issubclass(error_input.error_type, Warning) else pytest.raises)
        if error_input.error_on == OptimizerErrorEnum.CONSTRUCTION_ERROR:
            with expect(error_input.error_type, match=error_input.error_regex):
                info.optim_cls(optim_input.params, **optim_input.kwargs)
        else:
            optimizer = info.optim_cls(optim_input.params, **optim_input.kwargs)
            with expect(error_input.error_type, match=error_input.error_regex):
                optimizer.step()


@each(PAIRS)
@pytest.mark.parametrize("contiguous", [True, False], ids=["contiguous", "non-contiguous"])
@pytest.mark.parametrize("with_lrsched", [False, True], ids=["", "lrsched"])
def test_forloop_goes_right_direction(pair, contiguous, with_lrsched):
    info, _ = pair
    for scheduler_makers in (info.scheduler_inputs if with_lrsched else [()]):
        torch.manual_seed(0)
        weight, bias = weight_and_bias(contiguous)
        inputs = torch.randn(5)
        optimizer = build(pair, [weight, bias])
        schedulers = [make(optimizer) for make in scheduler_makers]
        closure = functools.partial(quadratic_loss, optimizer, weight, bias, inputs)
        initial = closure().item()
        for _ in range(20):
            loss = closure()
            optimizer.step()
            for scheduler in schedulers:
                scheduler.step(loss.item()) if isinstance(scheduler, ReduceLROnPlateau) else scheduler.step()
        final = closure().item()
        assert (final > initial) if maximizes(pair) else (final < initial)
        assert weight.is_contiguous() == contiguous


@each_info(GROUP_INFOS)
def test_param_group_with_lrscheduler_goes_right_direction(info):
    for scheduler_makers in info.scheduler_inputs:
        torch.manual_seed(0)
        weight, bias = weight_and_bias()
        inputs = torch.randn(5)
        optimizer = info.optim_cls([{"params": [weight]}, {"params": [bias], "lr": 0.01}])
        schedulers = [make(optimizer) for make in scheduler_makers]
        closure = functools.partial(quadratic_loss, optimizer, weight, bias, inputs)
        initial = closure().item()
        for _ in range(20):
            loss = optimizer.step(closure)
            for scheduler in schedulers:
                scheduler.step(loss.item()) if isinstance(scheduler, ReduceLROnPlateau) else scheduler.step()
        assert closure().item() < initial


@each(PAIRS)
def test_tensor_lr(pair):
    """A 0-d tensor learning rate, updated in place by a scheduler, steps like the same float."""
    torch.manual_seed(0)
    weight, bias = weight_and_bias()
    weight_c, bias_c = (Parameter(weight.detach().clone()), Parameter(bias.detach().clone()))
    inputs = torch.randn(5)
    optimizer_r = build(pair, [weight, bias], lr=1e-3)
    optimizer = build(pair, [weight_c, bias_c], lr=torch.tensor(1e-3))
    schedulers = [StepLR(optimizer_r, step_size=2, gamma=0.5), StepLR(optimizer, step_size=2, gamma=0.5)]
    for _ in range(5):
        quadratic_loss(optimizer_r, weight, bias, inputs)
        quadratic_loss(optimizer, weight_c, bias_c, inputs)
        optimizer_r.step()
        optimizer.step()
        for scheduler in schedulers:
            scheduler.step()
        torch.testing.assert_close(weight_c, weight)
        torch.testing.assert_close(bias_c, bias)
    assert all(isinstance(group["lr"], torch.Tensor) for group in optimizer.param_groups)


@each_info(MEMPLAN_INFOS)
def test_complex(info):
    """memplan refuses complex parameters (their layouts are of real tensors) and names the way out:
    the real view of the same parameter trains."""
    complex_param = torch.randn(10, 5, dtype=torch.complex64, requires_grad=True)
    with pytest.raises(ValueError, match=r"complex parameters .*torch\.view_as_real"):
        info.optim_cls([complex_param])
    real_view = Parameter(torch.view_as_real(complex_param.detach()).clone())
    optimizer = info.optim_cls([real_view])
    real_view.grad = torch.randn_like(real_view)
    before = real_view.detach().clone()
    optimizer.step()
    assert not torch.equal(real_view, before)


@each(PAIRS)
def test_rosenbrock_sparse(pair):
    """Sparse gradients are refused with a message saying so (memplan's layouts need dense ones)."""
    weight, bias = weight_and_bias()
    optimizer = build(pair, [weight, bias])
    weight.grad, bias.grad = torch.randn(10, 5).to_sparse(), torch.randn(10).to_sparse()
    with pytest.raises(RuntimeError, match="sparse"):
        optimizer.step()


def _tiny_model_trajectory(pair: tuple, chunk_bytes: int | None) -> tuple[list[torch.Tensor], list[dict]]:
    """torch's _test_derived_optimizers protocol in float64: a small model plus a 0-d parameter, no
    gradients at the third step, a layer frozen for two steps; here with one layer larger than
    the smallest chunk, so the chunked run cuts it into many blocks."""
    torch.manual_seed(1)
    model = torch.nn.Sequential(torch.nn.Linear(64, 300), torch.nn.Sigmoid(), torch.nn.Linear(300, 1),
                                torch.nn.Sigmoid()).to(torch.float64)
    inputs = torch.rand(3, 64, dtype=torch.float64)
    scalar = Parameter(torch.rand((), dtype=torch.float64))
    scalar.grad = torch.rand_like(scalar)
    params = [*model.parameters(), scalar]
    optimizer = build(pair, params, chunk_bytes=chunk_bytes)
    for iteration in range(7):
        optimizer.zero_grad()
        model[2].requires_grad_(iteration not in (3, 4))
        if iteration != 2:
            model(inputs).sum().backward()
        optimizer.step()
    return [param.detach() for param in params], [optimizer.state[param] for param in params]


@each(CHUNKED_PAIRS)
def test_foreach_matches_forloop(pair):
    """Chunked matches unchunked: the smallest chunk agrees with one block per tensor to rounding."""
    whole_params, whole_state = _tiny_model_trajectory(pair, None)
    chunked_params, chunked_state = _tiny_model_trajectory(pair, MIN_CHUNK_BYTES)
    for whole, chunked in zip(whole_params, chunked_params):
        torch.testing.assert_close(chunked, whole, rtol=1e-5, atol=1e-7)  # fp32 state, summed in other orders
    for whole, chunked in zip(whole_state, chunked_state):
        assert whole.keys() == chunked.keys()
        for key, value in whole.items():
            if isinstance(value, torch.Tensor) and value.is_floating_point():
                torch.testing.assert_close(chunked[key], value, rtol=1e-5, atol=1e-7)
            else:
                assert_same(chunked[key], value, key)


@each(GROUP_PAIRS)
def test_param_groups_weight_decay(pair):
    torch.manual_seed(0)
    weight, bias = weight_and_bias()
    inputs = torch.randn(5)
    kwargs = dict(pair[1].kwargs)
    optimizer = pair[0].optim_cls([dict(params=[weight], **kwargs), dict(params=[bias], **{**kwargs, "weight_decay": 0.0})])
    initial = (weight.mv(inputs) + bias).pow(2).sum().item()
    for _ in range(20):
        loss = quadratic_loss(optimizer, weight, bias, inputs)
        optimizer.step()
    assert (loss.item() > initial) if maximizes(pair) else (loss.item() < initial)


@each(GROUP_PAIRS)
def test_param_groups_lr(pair):
    torch.manual_seed(0)
    weight, bias = weight_and_bias()
    irrelevant = Parameter(torch.randn(2))
    irrelevant_clone = irrelevant.detach().clone()
    inputs = torch.randn(5)
    optimizer = pair[0].optim_cls([dict(params=[weight, bias], **pair[1].kwargs), dict(params=[irrelevant])], lr=1e-28)
    initial = (weight.mv(inputs) + bias).pow(2).sum().item()
    for _ in range(20):
        loss = quadratic_loss(optimizer, weight, bias, inputs)
        irrelevant.grad = torch.rand_like(irrelevant)
        optimizer.step()
    assert (loss.item() > initial) if maximizes(pair) else (loss.item() < initial)
    torch.testing.assert_close(irrelevant.detach(), irrelevant_clone)


@each(PAIRS)
def test_step_is_noop_when_params_have_no_grad(pair):
    params = [Parameter(torch.randn(2, 3)) for _ in range(2)]
    old = [param.detach().clone() for param in params]
    optimizer = build(pair, params)
    assert optimizer.step(lambda: torch.tensor([1.0])).item() == 1.0
    assert all(torch.equal(param, before) for param, before in zip(params, old))


@each(PAIRS)
def test_step_is_noop_for_zero_grads(pair):
    if pair[1].kwargs.get("weight_decay", 0) != 0:
        pytest.skip("weight decay moves parameters whatever their gradient")
    param = Parameter(torch.randn(5, 1))
    old = param.detach().clone()
    optimizer = build(pair, [param])
    param.grad = torch.zeros_like(param)
    optimizer.step(lambda: torch.tensor([1.0]))
    assert torch.equal(param, old)


@each(PAIRS)
def test_optimizer_can_be_printed(pair):
    """Printing works, and shows hyperparameters and layouts, never parameter values."""
    params = [Parameter(torch.randn(2, 3)) for _ in range(2)]
    text = repr(build(pair, params))
    assert "Parameter Group 0" in text and "tensor(" not in text


@each(PAIRS)
@pytest.mark.parametrize("is_named_optim0", [True, False], ids=["named0", "unnamed0"])
@pytest.mark.parametrize("is_named_optim1", [True, False], ids=["named1", "unnamed1"])
def test_state_dict_deterministic(pair, is_named_optim0, is_named_optim1):
    torch.manual_seed(0)
    weight, bias = weight_and_bias()
    inputs = torch.randn(5)

    def named(params: list, is_named: bool) -> list:
        return [(f"name{index}", param) for index, param in enumerate(params)] if is_named else params

    def without_param_names(state_dict: dict) -> dict:
        state_dict = deepcopy(state_dict)
        for group in state_dict["param_groups"]:
            group.pop("param_names", None)
        return state_dict

    optimizer = build(pair, named([weight, bias], is_named_optim0))
    for _ in range(10):
        quadratic_loss(optimizer, weight, bias, inputs)
        optimizer.step()
    weight_c, bias_c = Parameter(weight.detach().clone()), Parameter(bias.detach().clone())
    optimizer_c = build(pair, named([weight_c, bias_c], is_named_optim1))
    optimizer_c.load_state_dict(deepcopy(optimizer.state_dict()))
    for _ in range(10):
        quadratic_loss(optimizer, weight, bias, inputs)
        quadratic_loss(optimizer_c, weight_c, bias_c, inputs)
        optimizer.step()
        optimizer_c.step()
        assert torch.equal(weight, weight_c) and torch.equal(bias, bias_c)
    assert_same(without_param_names(optimizer_c.state_dict()), without_param_names(optimizer.state_dict()))
    optimizer_c.param_groups.extend(optimizer_c.param_groups)
    assert_same(without_param_names(optimizer_c.state_dict())["param_groups"][-1],
                without_param_names(optimizer.state_dict())["param_groups"][-1])


@each(PAIRS)
def test_can_load_older_state_dict(pair):
    """A state_dict from before a flag existed loads: the flag keeps the optimizer's current value."""
    model = conv_and_norm()
    inputs = torch.rand(1, 4, 16, 16)
    optimizer = build(pair, model.parameters())
    for _ in range(3):
        step_conv_and_norm(optimizer, model, inputs)
    old_state_dict = deepcopy(optimizer.state_dict())
    for group in old_state_dict["param_groups"]:
        for flag in pair[0].not_og_supported_flags:
            group.pop(flag, None)
    optimizer.load_state_dict(old_state_dict)
    step_conv_and_norm(optimizer, model, inputs)


@each(PAIRS)
@pytest.mark.parametrize("is_named_optim0", [True, False], ids=["named0", "unnamed0"])
@pytest.mark.parametrize("is_named_optim1", [True, False], ids=["named1", "unnamed1"])
def test_can_load_from_to_named_state_dict(pair, is_named_optim0, is_named_optim1):
    model = conv_and_norm()
    inputs = torch.rand(1, 4, 16, 16)
    optimizer = build(pair, model.named_parameters() if is_named_optim0 else model.parameters())
    for _ in range(3):
        step_conv_and_norm(optimizer, model, inputs)
    old_state_dict = deepcopy(optimizer.state_dict())
    optimizer2 = build(pair, model.named_parameters() if is_named_optim1 else model.parameters())
    optimizer2.load_state_dict(old_state_dict)
    step_conv_and_norm(optimizer2, model, inputs)
    names = [name for group in optimizer2.state_dict()["param_groups"] for name in group.get("param_names", [])]
    if is_named_optim0 or (is_named_optim1 and pair[0].supports_param_groups):
        # (from_plan names unnamed parameters p0, p1, ...: a state_dict's names replace the current ones)
        assert sorted(names) == ["0.bias", "0.weight", "1.bias", "1.weight"]


@each(PAIRS)
@pytest.mark.parametrize("is_named_optim", [True, False], ids=["named", "unnamed"])
def test_save_load_equality_with_weights_only(pair, is_named_optim):
    torch.manual_seed(0)
    weight, bias = weight_and_bias()
    inputs = torch.randn(5)
    params = [("name0", weight), ("name1", bias)] if is_named_optim else [weight, bias]
    optimizer = build(pair, params)
    for _ in range(3):
        optimizer.step(functools.partial(quadratic_loss, optimizer, weight, bias, inputs))
    state_dict = optimizer.state_dict()
    buffer = io.BytesIO()
    torch.save(state_dict, buffer)
    for weights_only in (False, True):
        buffer.seek(0)
        assert_same(torch.load(buffer, weights_only=weights_only), state_dict)


@each(PAIRS)
def test_load_nontensor_step(pair):
    params = [Parameter(torch.randn(2, 3)) for _ in range(2)]
    for param in params:
        param.grad = torch.rand_like(param)
    optimizer = build(pair, params)
    for _ in range(3):
        optimizer.step()
    state_dict = deepcopy(optimizer.state_dict())
    for param_state in state_dict["state"].values():
        if torch.is_tensor(param_state.get("step")):
            param_state["step"] = param_state["step"].item()
    optimizer.load_state_dict(state_dict)
    optimizer.step()


def _state_dict_pre_hook(optimizer: torch.optim.Optimizer) -> None:
    optimizer.state["test"] = 1


def _state_dict_post_hook(optimizer: torch.optim.Optimizer, state_dict: dict) -> dict:
    state_dict["ran_state_dict_pre_hook"] = "test" in state_dict["state"]
    state_dict["state"].pop("test", None)
    return state_dict


@each(PAIRS)
def test_state_dict_pre_hook(pair):
    optimizer = build(pair, [Parameter(torch.rand(2, 3))])
    optimizer.register_state_dict_pre_hook(_state_dict_pre_hook)
    assert optimizer.state_dict()["state"]["test"] == 1


@each(PAIRS)
def test_state_dict_post_hook(pair):
    optimizer = build(pair, [Parameter(torch.rand(2, 3))])
    optimizer.register_state_dict_post_hook(_state_dict_post_hook)
    assert optimizer.state_dict()["ran_state_dict_pre_hook"] is False


@each(PAIRS)
def test_state_dict_pre_post_hook(pair):
    optimizer = build(pair, [Parameter(torch.rand(2, 3))])
    optimizer.register_state_dict_pre_hook(_state_dict_pre_hook)
    optimizer.register_state_dict_post_hook(_state_dict_post_hook)
    state_dict = optimizer.state_dict()
    assert "test" not in state_dict["state"] and state_dict["ran_state_dict_pre_hook"] is True


def _load_state_dict_pre_hook1(optimizer: torch.optim.Optimizer, state_dict: dict) -> None:
    state_dict["param_groups"][0]["lr"] = 0.002


def _load_state_dict_pre_hook2(optimizer: torch.optim.Optimizer, state_dict: dict) -> dict:
    # returning a new dict (a deep copy, as a real hook rewriting a checkpoint would) must load it
    my_state_dict = deepcopy(state_dict)
    my_state_dict["param_groups"][0]["lr"] = 0.003
    return my_state_dict


def _load_state_dict_post_hook(optimizer: torch.optim.Optimizer) -> None:
    optimizer.state["ran_load_state_dict_pre_hook2"] = optimizer.param_groups[0]["lr"] == 0.003
    optimizer.state["ran_load_state_dict_post_hook"] = True


@each(PAIRS)
def test_load_state_dict_pre_hook_and_prepend(pair):
    optimizer = build(pair, [Parameter(torch.rand(2, 3))])
    state_dict = optimizer.state_dict()
    optimizer.register_load_state_dict_pre_hook(_load_state_dict_pre_hook1)
    optimizer.load_state_dict(state_dict)
    assert optimizer.param_groups[0]["lr"] == 0.002
    optimizer.register_load_state_dict_pre_hook(_load_state_dict_pre_hook2, prepend=True)
    optimizer.load_state_dict(state_dict)
    assert optimizer.param_groups[0]["lr"] == 0.002  # the prepended hook ran first, the other overrode it


@each(PAIRS)
def test_load_state_dict_post_hook(pair):
    optimizer = build(pair, [Parameter(torch.rand(2, 3))])
    optimizer.register_load_state_dict_post_hook(_load_state_dict_post_hook)
    optimizer.load_state_dict(optimizer.state_dict())
    assert optimizer.state["ran_load_state_dict_pre_hook2"] is False
    assert optimizer.state["ran_load_state_dict_post_hook"] is True


@each(PAIRS)
def test_load_state_dict_pre_post_hook(pair):
    optimizer = build(pair, [Parameter(torch.rand(2, 3))])
    optimizer.register_load_state_dict_pre_hook(_load_state_dict_pre_hook2)
    optimizer.register_load_state_dict_post_hook(_load_state_dict_post_hook)
    optimizer.load_state_dict(optimizer.state_dict())
    assert optimizer.state["ran_load_state_dict_pre_hook2"] is True
    assert optimizer.state["ran_load_state_dict_post_hook"] is True


@each(PAIRS)
def test_step_post_hook(pair):
    data = [2]
    optimizer = build(pair, [Parameter(torch.ones(2))])
    handle = optimizer.register_step_post_hook(lambda opt, args, kwargs: data.append(data[-1] + 2))
    optimizer.step()
    optimizer.step()
    assert data[-1] == 6
    handle.remove()
    optimizer.step()
    assert data[-1] == 6


@each(PAIRS)
def test_step_pre_hook(pair):
    data = [5]
    optimizer = build(pair, [Parameter(torch.ones(2))])
    handle = optimizer.register_step_pre_hook(lambda opt, args, kwargs: data.append(data[-1] + 2))
    optimizer.step()
    optimizer.step()
    assert data[-1] == 9
    handle.remove()
    optimizer.step()
    assert data[-1] == 9


@each(PAIRS)
def test_step_all_hooks(pair):
    """Global and local hooks fire once per step, in torch's order (from_plan's inner optimizers
    add no calls)."""
    data: list[int] = []
    params = [Parameter(torch.ones(2))]
    optimizer, optimizer2 = build(pair, params), SGD(params)
    handles = [register_optimizer_step_pre_hook(lambda opt, args, kwargs: data.append(0)),
               register_optimizer_step_post_hook(lambda opt, args, kwargs: data.append(5))]
    try:
        for opt in (optimizer, optimizer2):
            handles += [opt.register_step_pre_hook(lambda opt, args, kwargs: data.append(1)),
                        opt.register_step_post_hook(lambda opt, args, kwargs: data.append(2))]
        optimizer.step()
        assert data == [0, 1, 2, 5]
        optimizer2.step()
        assert data == [0, 1, 2, 5] * 2
        optimizer.step()
        assert data == [0, 1, 2, 5] * 3
    finally:
        for handle in handles:
            handle.remove()
    optimizer.step()
    optimizer2.step()
    assert data == [0, 1, 2, 5] * 3


@each(PAIRS)
def test_deepcopy_copies_all_public_attrs(pair):
    params = [Parameter(torch.randn(2, 3)) for _ in range(2)]
    for param in params:
        param.grad = torch.rand_like(param)
    optimizer = build(pair, params)
    for _ in range(3):
        optimizer.step()

    def public_attributes(obj: Any) -> set[str]:
        return {key for key in obj.__dict__ if not key.startswith("_")}

    assert public_attributes(deepcopy(optimizer)) == public_attributes(optimizer)


@each(PAIRS)
def test_non_empty_state(pair):
    model = torch.nn.Linear(5, 5)
    optimizer = build(pair, model.parameters())
    model(torch.rand(2, 5)).sum().backward()
    optimizer.step()
    assert optimizer.state and all(len(state) > 0 for state in optimizer.state.values())
