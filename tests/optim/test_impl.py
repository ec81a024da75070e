"""The ``impl`` option: compiled steps follow the eager reference, plans carry the choice, and a
missing JIT falls back to eager with one warning."""

import warnings

import pytest
import torch

from memplan.kernels import select
from memplan.methods import parse_spec
from memplan.optim import SM3, SMMF, ETInfinity, ExtremeTensoring, from_plan

from .optimizer_table import mixed_plan

CASES = [
    (SMMF, dict(sign_bits=1)), (SMMF, dict(sign_bits=8, weight_decay=0.1)), (SMMF, dict(beta1=None, maximize=True)),
    (SMMF, dict(weight_decay=0.1, weight_decay_mode="adam")), (SM3, dict(momentum=0.9)),
    (SM3, dict(momentum=0.0, variant="I", weight_decay=0.1)), (ExtremeTensoring, dict(index="et2")),
    (ExtremeTensoring, dict(index="et3", momentum=0.9, beta2=0.99, weight_decay=0.1)), (ETInfinity, dict(maximize=True)),
]
SHAPES = [(13, 7), (31,), (4, 3, 5), (1,)]


def trajectory(cls, options, impl, dtype, steps=3):
    generator = torch.Generator().manual_seed(0)
    params = [torch.nn.Parameter(torch.randn(shape, generator=generator).to(dtype)) for shape in SHAPES]
    optimizer = cls(params, lr=0.01, impl=impl, **options)
    for _ in range(steps):
        for param in params:
            param.grad = torch.randn(param.shape, generator=generator).to(dtype)
        optimizer.step()
    return params, optimizer


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
@pytest.mark.parametrize("cls,options", CASES, ids=[f"{cls.__name__}-{options}" for cls, options in CASES])
def test_compiled_steps_follow_the_eager_reference(cls, options, dtype):
    pytest.importorskip("numba")
    eager, eager_optimizer = trajectory(cls, options, "eager", dtype)
    compiled, compiled_optimizer = trajectory(cls, options, "compiled", dtype)
    for a, b in zip(eager, compiled):
        torch.testing.assert_close(b, a, rtol=1e-6 if dtype != torch.bfloat16 else 1e-2, atol=1e-7)
    for state_a, state_b in zip(eager_optimizer.state.values(), compiled_optimizer.state.values()):
        for key, value in state_a.items():
            if key == "sign":
                assert torch.equal(state_b[key], value)
            elif isinstance(value, torch.Tensor):
                # a bf16 weight one rounding step apart feeds coupled decay: state then differs at that scale
                torch.testing.assert_close(state_b[key], value, rtol=1e-5 if dtype != torch.bfloat16 else 1e-2,
                                           atol=1e-7)


def test_the_option_round_trips_through_specs_and_plans():
    assert str(parse_spec("smmf:impl=compiled")) == "smmf:impl=compiled"
    assert str(parse_spec("sm3:impl=auto")) == "sm3:impl=auto"
    model = torch.nn.Sequential(torch.nn.Linear(6, 5), torch.nn.Linear(5, 3))
    named = list(model.named_parameters())
    plan = mixed_plan(named, ("smmf:impl=compiled", "sm3:impl=auto"))
    assert {entry.method for entry in plan.entries} == {"smmf:impl=compiled", "sm3:impl=auto"}
    optimizer = from_plan(model, plan)
    assert sorted(group["impl"] for group in optimizer.param_groups) == ["auto", "compiled"]


def test_a_missing_jit_falls_back_to_eager_with_one_warning(monkeypatch):
    monkeypatch.setattr(select, "compiled_available", lambda: False)
    monkeypatch.setattr(select, "_WARNED", set())
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        fallen, _ = trajectory(SMMF, {}, "compiled", torch.float32)
        trajectory(SM3, {}, "compiled", torch.float32)
    assert len([warning for warning in caught if "impl=compiled" in str(warning.message)]) == 1
    eager, _ = trajectory(SMMF, {}, "eager", torch.float32)
    for a, b in zip(eager, fallen):
        assert torch.equal(a, b)
    assert select.resolve("auto", torch.device("cpu")) == "eager"  # auto falls back silently


def test_auto_picks_the_compiled_kernels_on_cpu_when_numba_is_installed():
    pytest.importorskip("numba")
    assert select.resolve("auto", torch.device("cpu")) == "compiled"
    assert select.resolve("auto", torch.device("cpu"), kernels=()) == "eager"


@pytest.mark.cuda
@pytest.mark.parametrize("cls,options", CASES[:5], ids=[f"{cls.__name__}-{options}" for cls, options in CASES[:5]])
def test_triton_steps_follow_the_eager_reference_on_cuda(cls, options):
    pytest.importorskip("triton")
    results = []
    for impl in ("eager", "triton"):
        generator = torch.Generator().manual_seed(0)
        params = [torch.nn.Parameter(torch.randn(shape, generator=generator).cuda()) for shape in SHAPES]
        optimizer = cls(params, lr=0.01, impl=impl, **options)
        for _ in range(3):
            for param in params:
                param.grad = torch.randn(param.shape, generator=generator).cuda()
            optimizer.step()
        results.append(params)
    for a, b in zip(*results):
        torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-7)


MIXED_SHAPES = [(13, 7), (31,), (5, 4, 3, 3), (1,), (8, 3, 2, 2)]
"""fp32 parameters a multi-tensor step takes together (the last is made channels_last)."""
CALLS_PER_STEP = [1, 1, 1, 1, 1, 1, 4, 4]
"""Ranges per kernel call over two steps of :func:`mixed_group`: the four whole contiguous fp32
parameters in one call, the float64 one in another, the channels_last and bf16 ones alone."""


def mixed_group(shapes: list[tuple[int, ...]]) -> list[torch.nn.Parameter]:
    """fp32 parameters of ``shapes`` (the last one channels_last), then a float64 and a bf16 one."""
    generator = torch.Generator().manual_seed(3)
    made = [torch.nn.Parameter(torch.randn(shape, generator=generator)) for shape in shapes]
    made.append(torch.nn.Parameter(torch.randn(6, 5, generator=generator).double()))
    made.append(torch.nn.Parameter(torch.randn(9, 2, generator=generator).bfloat16()))
    made[-3].data = made[-3].data.to(memory_format=torch.channels_last)
    return made


def assert_compiled_follows_eager(make_optimizer, shapes: list[tuple[int, ...]] = MIXED_SHAPES) -> None:
    """Two steps of ``make_optimizer(params, impl)`` over identical mixed groups, eager and compiled:
    every parameter and state tensor of the compiled one follows the eager trajectory."""
    results = []
    for impl in ("eager", "compiled"):
        generator = torch.Generator().manual_seed(4)
        group = mixed_group(shapes)
        optimizer = make_optimizer(group, impl)
        for _ in range(2):
            for param in group:
                param.grad = torch.randn(param.shape, generator=generator).to(param.dtype)
            optimizer.step()
        results.append((group, optimizer))
    (eager, eager_optimizer), (compiled, compiled_optimizer) = results
    for a, b in zip(eager, compiled):
        torch.testing.assert_close(b, a, rtol=1e-6 if a.dtype != torch.bfloat16 else 1e-2, atol=1e-7)
        for key, value in eager_optimizer.state[a].items():
            if key == "sign":
                assert torch.equal(compiled_optimizer.state[b][key], value)
            elif isinstance(value, torch.Tensor):
                torch.testing.assert_close(compiled_optimizer.state[b][key], value,
                                           rtol=1e-5 if a.dtype != torch.bfloat16 else 1e-2, atol=1e-7)


def count_calls(monkeypatch, module, name: str, calls: list) -> None:
    """Record the number of ranges (the second argument) of every call of ``module.name``."""
    original = getattr(module, name)
    monkeypatch.setattr(module, name, lambda *arguments: calls.append((name, len(arguments[1]))) or original(*arguments))


def test_a_compiled_smmf_step_steps_the_group_in_one_kernel_call(monkeypatch):
    pytest.importorskip("numba")
    from memplan.kernels import smmf_cpu

    calls = []
    count_calls(monkeypatch, smmf_cpu, "_call", calls)
    assert_compiled_follows_eager(lambda params, impl: SMMF(params, lr=0.01, impl=impl))
    assert sorted(count for _, count in calls) == CALLS_PER_STEP


@pytest.mark.parametrize("momentum", [0.0, 0.9])
def test_a_compiled_sm3_step_steps_the_group_in_one_kernel_call(monkeypatch, momentum):
    pytest.importorskip("numba")
    from memplan.kernels import sm3_cpu

    calls = []
    count_calls(monkeypatch, sm3_cpu, "_call", calls)
    assert_compiled_follows_eager(
        lambda params, impl: SM3(params, lr=0.1, momentum=momentum, weight_decay=0.01, impl=impl))
    assert sorted(count for _, count in calls) == CALLS_PER_STEP


@pytest.mark.parametrize("options", [dict(index="et2"), dict(index="et2", momentum=0.9, beta2=0.99, weight_decay=0.1)],
                         ids=["plain", "momentum-beta2-decay"])
def test_a_compiled_extreme_tensoring_step_makes_one_kernel_call_per_pass(monkeypatch, options):
    """Indices of orders 1, 2, 4 and 5: one call of each pass per dtype and step."""
    pytest.importorskip("numba")
    from memplan.kernels import extreme_cpu

    calls = []
    for name in ("_square_sums", "_update"):
        count_calls(monkeypatch, extreme_cpu, name, calls)
    assert_compiled_follows_eager(lambda params, impl: ExtremeTensoring(params, lr=0.01, impl=impl, **options),
                                  [(13, 7), (64, 40, 3, 3), (48, 36), (1,), (8, 3, 2, 2)])
    for name in ("_square_sums", "_update"):
        assert sorted(count for called, count in calls if called == name) == CALLS_PER_STEP


@pytest.mark.parametrize("options", [dict(maximize=True), dict(beta2=0.9, weight_decay=0.1, weight_decay_mode="adam")],
                         ids=["maximize", "beta2-coupled-decay"])
def test_a_compiled_et_infinity_step_makes_one_kernel_call_per_pass(monkeypatch, options):
    pytest.importorskip("numba")
    from memplan.kernels import extreme_cpu

    calls = []
    for name in ("_infinity_squared_norms", "_infinity_scale"):
        count_calls(monkeypatch, extreme_cpu, name, calls)
    assert_compiled_follows_eager(lambda params, impl: ETInfinity(params, lr=0.01, impl=impl, **options))
    for name in ("_infinity_squared_norms", "_infinity_scale"):
        assert sorted(count for called, count in calls if called == name) == CALLS_PER_STEP
