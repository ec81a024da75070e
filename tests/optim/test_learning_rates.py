"""One Adam-equivalent learning rate trains a mixed plan: each spec's groups get it times the spec's ratio."""

import pytest
import torch

from memplan.errors import PlanError
from memplan.methods import ADAM_LR, get_method
from memplan.optim.planned import from_plan
from memplan.plan import Plan
from memplan.planner import assigned_plan
from memplan.profile import ModelProfile, ParamSpec
from memplan.priors import load_priors


def model_and_profile():
    model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.Linear(16, 4))
    specs = tuple(ParamSpec(name, tuple(param.shape)) for name, param in model.named_parameters())
    return model, ModelProfile("mlp", "tests", specs)


def mixed_plan(ratios=None, learning_rate=ADAM_LR):
    model, profile = model_and_profile()
    specs = {"0.weight": "smmf", "0.bias": "adam", "1.weight": "et2", "1.bias": "adafactor"}
    return model, assigned_plan(profile, specs.__getitem__, learning_rate=learning_rate, lr_ratios=ratios)


def group_rates(optimizer):
    return {group["method"]: group["lr"] for group in optimizer.param_groups}


def test_lr_is_adam_equivalent_and_each_spec_gets_its_ratio():
    model, plan = mixed_plan({"smmf": 0.5, "et2": 20.0, "adafactor": 8.0})
    rates = group_rates(from_plan(model, plan, lr=3e-3))
    assert rates == pytest.approx({"adam": 3e-3, "smmf": 1.5e-3, "et2": 6e-2, "adafactor": 2.4e-2})


def test_without_lr_the_plan_trains_at_its_own_rates():
    model, plan = mixed_plan({"smmf": 0.5}, learning_rate=2e-3)
    rates = group_rates(from_plan(model, plan))
    assert rates["adam"] == 2e-3 and rates["smmf"] == pytest.approx(1e-3)
    assert rates["et2"] == pytest.approx(2e-3 * load_priors().lr_ratio("et"))  # the bundled priors' measured ratio
    assert group_rates(from_plan(model, plan, lr_scale=0.5))["smmf"] == pytest.approx(5e-4)


def test_a_hand_written_method_lr_is_that_methods_own_rate():
    model, plan = mixed_plan({"smmf": 0.5})
    edited = Plan.from_dict({**plan.to_dict(), "hyperparameters": {**plan.hyperparameters, "smmf": {"lr": 0.25}}})
    assert group_rates(from_plan(model, edited))["smmf"] == 0.25
    assert group_rates(from_plan(model, edited, lr=1e-3))["smmf"] == pytest.approx(5e-4)  # lr= always transfers


def test_rates_round_trip_through_the_plan_file(tmp_path):
    model, plan = mixed_plan({"smmf": 0.5, "et2": 20.0}, learning_rate=4e-3)
    loaded = Plan.load(plan.save(tmp_path / "plan.yaml"))
    assert loaded.learning_rate == 4e-3 and loaded.lr_ratios == plan.lr_ratios
    assert set(loaded.lr_ratios) == {"smmf", "adam", "et2", "adafactor"}
    text = (tmp_path / "plan.yaml").read_text()
    assert "learning_rate: 0.004" in text and "lr_ratios:" in text


def test_bad_rates_in_a_plan_are_named():
    _, plan = mixed_plan()
    data = plan.to_dict()
    for change, message in (({"lr_ratios": {"sm3": 1.0}}, "lr_ratios.sm3: no parameter uses this method spec"),
                            ({"lr_ratios": {"smmf": 0}}, "lr_ratios.smmf: expected a number > 0"),
                            ({"learning_rate": "fast"}, "learning_rate: expected a number > 0")):
        with pytest.raises(PlanError, match=message):
            Plan.from_dict({**data, **change})


def test_plans_without_rates_still_load_and_use_the_methods_defaults():
    model, plan = mixed_plan()
    data = {key: value for key, value in plan.to_dict().items() if key not in ("learning_rate", "lr_ratios")}
    old = Plan.from_dict(data)
    assert old.learning_rate == ADAM_LR and old.lr_ratio("et2") == get_method("et2").lr_ratio
