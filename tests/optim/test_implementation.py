"""What steps an optimizer, as ``memplan bench`` records it: memplan's resolved ``impl``, torch's
kernel flags, and both for a plan."""

import pytest
import torch

from memplan.kernels import select
from memplan.optim import SM3, SMMF, ETInfinity, ExtremeTensoring, from_plan
from memplan.optim.implementation import implementation_of

from .optimizer_table import mixed_plan


def params(count: int = 2) -> list[torch.nn.Parameter]:
    return [torch.nn.Parameter(torch.randn(4, 3)) for _ in range(count)]


def test_memplan_optimizers_report_their_resolved_impl(monkeypatch):
    assert implementation_of(SMMF(params())) == "eager"
    monkeypatch.setattr(select, "compiled_available", lambda: True)
    assert implementation_of(SMMF(params(), impl="compiled")) == "compiled"
    # auto picks the kernels measured faster than the eager step: on CPU, every method's
    assert implementation_of(SMMF(params(), impl="auto")) == "compiled"
    assert implementation_of(ExtremeTensoring(params(), impl="auto")) == "compiled"
    assert implementation_of(SM3(params(), impl="auto")) == "compiled"
    assert implementation_of(ETInfinity(params(), impl="auto")) == "compiled"
    assert implementation_of(ExtremeTensoring(params(), impl="compiled")) == "compiled"
    # triton asked for on CPU tensors runs the eager step (with the one warning of the fallback)
    monkeypatch.setattr(select, "_WARNED", {"triton"})
    assert implementation_of(SMMF(params(), impl="triton")) == "eager"
    monkeypatch.setattr(select, "compiled_available", lambda: False)
    assert implementation_of(SMMF(params(), impl="auto")) == "eager"


def test_groups_with_different_impls_are_joined_in_order(monkeypatch):
    monkeypatch.setattr(select, "compiled_available", lambda: True)
    first, second = params(), params()
    optimizer = SMMF([{"params": first, "impl": "compiled"}, {"params": second, "impl": "eager"}])
    assert implementation_of(optimizer) == "compiled+eager"


@pytest.mark.parametrize("flags,expected", [({"fused": True}, "fused"), ({"foreach": True}, "foreach"),
                                            ({"foreach": False}, "forloop"), ({}, "forloop")])
def test_torch_optimizers_report_the_kernel_their_flags_pick_on_cpu(flags, expected):
    assert implementation_of(torch.optim.AdamW(params(), **flags)) == expected


def test_a_plan_reports_its_inner_optimizers(monkeypatch):
    monkeypatch.setattr(select, "compiled_available", lambda: True)
    model = torch.nn.Sequential(torch.nn.Linear(6, 5), torch.nn.Linear(5, 3))
    plan = mixed_plan(list(model.named_parameters()), ("smmf:impl=compiled", "adamw:impl=fused"))
    assert set(implementation_of(from_plan(model, plan)).split("+")) == {"compiled", "fused"}
