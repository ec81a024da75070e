"""A group's prepared multi-tensor call (memplan.optim.batches): later steps rerun it while it
fits, and anything it points at that changes between steps sends the step down the general path.

Each case steps two optimizers alike: one keeps its prepared call, the other forgets it before
every step (so every step is prepared afresh, as the first one is). Their weights and states must
stay bit for bit equal, whatever changed between steps."""

from __future__ import annotations

from typing import Callable

import pytest
import torch
from torch.nn import Parameter

from memplan.optim import SM3, SMMF, ExtremeTensoring

pytest.importorskip("numba")

BUILDERS = {
    "smmf": lambda params: SMMF(params, lr=0.01, impl="compiled"),
    "smmf-no-moment": lambda params: SMMF(params, lr=0.01, beta1=None, impl="compiled"),
    "smmf-byte-signs": lambda params: SMMF(params, lr=0.01, sign_bits=8, weight_decay=0.1, impl="compiled"),
    "sm3": lambda params: SM3(params, lr=0.05, impl="compiled"),
    "sm3-momentum": lambda params: SM3(params, lr=0.05, momentum=0.9, impl="compiled"),
    "et2": lambda params: ExtremeTensoring(params, lr=0.05, index="et2", impl="compiled"),
    "et1-momentum-beta2": lambda params: ExtremeTensoring(params, lr=0.05, momentum=0.9, beta2=0.99,
                                                          impl="compiled"),
}
SHAPES = [(12, 10), (8, 3, 3, 3), (17,), (7, 7)]


def _params(seed: int = 0) -> list[Parameter]:
    generator = torch.Generator().manual_seed(seed)
    return [Parameter(torch.randn(shape, generator=generator)) for shape in SHAPES]


def _gradients(params: list[Parameter], seed: int) -> None:
    generator = torch.Generator().manual_seed(seed)
    for param in params:
        param.grad = torch.randn(param.shape, generator=generator, dtype=param.dtype)


def _forget(optimizer: torch.optim.Optimizer) -> None:
    optimizer.__dict__.pop("_batch_memos", None)


def _assert_same(first: list[Parameter], second: list[Parameter], one: torch.optim.Optimizer,
                 other: torch.optim.Optimizer) -> None:
    for a, b in zip(first, second):
        assert torch.equal(a, b)
        state_a, state_b = one.state[a], other.state[b]
        assert state_a.keys() == state_b.keys()
        for key, value in state_a.items():
            if isinstance(value, torch.Tensor):
                assert torch.equal(value, state_b[key]), key
            else:
                assert value == state_b[key], key


def _run(build: Callable, change: Callable[[list[Parameter], torch.optim.Optimizer], None] | None = None,
         steps: int = 5, changed_at: int = 2) -> tuple[torch.optim.Optimizer, list[Parameter]]:
    """Step a memo-keeping and a memo-forgetting optimizer alike, applying ``change`` to both before
    step ``changed_at``; assert they end equal and return the memo-keeping one."""
    kept_params, fresh_params = _params(), _params()
    kept, fresh = build(kept_params), build(fresh_params)
    for step in range(steps):
        if change is not None and step == changed_at:
            change(kept_params, kept)
            change(fresh_params, fresh)
        _gradients(kept_params, step)
        _gradients(fresh_params, step)
        _forget(fresh)
        kept.step()
        fresh.step()
    _assert_same(kept_params, fresh_params, kept, fresh)
    return kept, kept_params


@pytest.mark.parametrize("name", BUILDERS)
def test_later_steps_rerun_the_call_prepared_at_the_first(name, monkeypatch):
    optimizer_type = type(BUILDERS[name]([Parameter(torch.zeros(2, 2))]))
    prepared = []
    original = optimizer_type._prepare_batch

    def counting(self, group, batch):
        prepared.append(len(batch))
        return original(self, group, batch)

    monkeypatch.setattr(optimizer_type, "_prepare_batch", counting)
    optimizer, _ = _run(BUILDERS[name])
    assert prepared[0] == len(SHAPES)
    # the memo-keeping optimizer prepared once; the forgetting one, every step
    assert len(prepared) == 1 + 5
    assert all(state["step"] == 5 for state in optimizer.state.values())


def _scale_learning_rate(params, optimizer):
    for group in optimizer.param_groups:
        group["lr"] *= 0.3


def _reassign_data(params, optimizer):
    params[1].data = params[1].data * 0.5


def _transpose_in_place(params, optimizer):
    params[3].data = params[3].data.t()   # the same storage and shape, no longer contiguous


def _replace_state_entry(params, optimizer):
    state = optimizer.state[params[0]]
    key = next(key for key, value in state.items() if isinstance(value, torch.Tensor))
    state[key] = state[key].clone()


def _replace_state_dict_of_one(params, optimizer):
    state = optimizer.state[params[1]]
    optimizer.state[params[1]] = {key: value.clone() if isinstance(value, torch.Tensor) else value
                                  for key, value in state.items()}


def _change_an_option(params, optimizer):
    group = optimizer.param_groups[0]
    if "beta1" in group:
        group["beta1"] = None   # SMMF: no first moment from now on
    else:
        group["momentum"] = 0.5 if group["momentum"] == 0 else 0.0


def _load_state_dict(params, optimizer):
    optimizer.load_state_dict(optimizer.state_dict())


def _delete_state_entry(params, optimizer):
    state = optimizer.state[params[2]]
    key = next(key for key, value in state.items() if isinstance(value, torch.Tensor))
    del state[key]


@pytest.mark.parametrize("name", BUILDERS)
@pytest.mark.parametrize("change", [_scale_learning_rate, _reassign_data, _transpose_in_place, _replace_state_entry,
                                    _replace_state_dict_of_one, _load_state_dict, _delete_state_entry,
                                    _change_an_option],
                         ids=["lr-changed", "data-reassigned", "data-transposed", "state-entry-replaced", "state-replaced",
                              "state-dict-loaded", "state-entry-deleted", "option-changed"])
def test_a_change_between_steps_steps_as_a_freshly_prepared_call_would(name, change):
    _run(BUILDERS[name], change)


@pytest.mark.parametrize("name", BUILDERS)
def test_a_missing_gradient_leaves_its_parameter_and_step_count_alone(name):
    kept_params, fresh_params = _params(), _params()
    kept, fresh = BUILDERS[name](kept_params), BUILDERS[name](fresh_params)
    for step in range(4):
        _gradients(kept_params, step)
        _gradients(fresh_params, step)
        if step == 2:
            kept_params[3].grad = None
            fresh_params[3].grad = None
            before = kept_params[3].detach().clone()
        _forget(fresh)
        kept.step()
        fresh.step()
        if step == 2:
            assert torch.equal(kept_params[3], before)
    _assert_same(kept_params, fresh_params, kept, fresh)
    assert kept.state[kept_params[3]]["step"] == 3 and kept.state[kept_params[0]]["step"] == 4


def _transposed_strides(param: Parameter) -> None:
    param.grad = param.grad.t().contiguous().t()   # the same values, not contiguous
    assert not param.grad.is_contiguous()


def _float64(param: Parameter) -> None:
    param.grad.data = param.grad.data.double()   # .data skips the check that assigning .grad makes
    assert param.grad.dtype == torch.float64


@pytest.mark.parametrize("name", BUILDERS)
@pytest.mark.parametrize("odd", [_transposed_strides, _float64], ids=["non-contiguous", "float64"])
def test_a_gradient_the_batch_cannot_take_sends_the_step_down_the_general_path(name, odd):
    """The general path steps a non-contiguous gradient's parameter on its own, and refuses a
    gradient of another dtype as it does at any step; the prepared call takes neither."""
    kept_params, fresh_params = _params(), _params()
    kept, fresh = BUILDERS[name](kept_params), BUILDERS[name](fresh_params)
    outcomes = []
    for step in range(4):
        _gradients(kept_params, step)
        _gradients(fresh_params, step)
        if step == 2:
            for params in (kept_params, fresh_params):
                odd(params[0])
        _forget(fresh)
        for optimizer in (kept, fresh):
            try:
                optimizer.step()
                outcomes.append(None)
            except Exception as error:  # noqa: BLE001 - both must fail alike
                outcomes.append(type(error))
    assert outcomes[0::2] == outcomes[1::2]
    _assert_same(kept_params, fresh_params, kept, fresh)


def test_changing_impl_between_steps_steps_with_the_new_implementation():
    def to_eager(params, optimizer):
        optimizer.param_groups[0]["impl"] = "eager"

    optimizer, _ = _run(BUILDERS["smmf"], to_eager)
    assert not optimizer.__dict__.get("_batch_memos")


@pytest.mark.parametrize("name", ["smmf", "sm3", "et2"])
def test_a_loaded_state_dict_leaves_no_call_holding_the_old_state(name):
    """The memo of a group that a loaded state_dict replaced is dropped, with the state it points at."""
    import gc
    import weakref

    params = _params()
    optimizer = BUILDERS[name](params)
    for step in range(2):
        _gradients(params, step)
        optimizer.step()
    old_state = weakref.ref(next(value for value in optimizer.state[params[0]].values()
                                 if isinstance(value, torch.Tensor)))
    optimizer.load_state_dict(optimizer.state_dict())
    _gradients(params, 2)
    optimizer.step()
    gc.collect()
    assert old_state() is None
    assert [memo.group for memo in optimizer._batch_memos.values()] == optimizer.param_groups
