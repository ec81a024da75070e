import io

import pytest
import torch

from memplan.errors import SpecError
from memplan.loaders.module import profile_from_module
from memplan.measure import state_storage_bytes
from memplan.optim import from_plan
from memplan.plan import Plan, PlanError
from memplan.planner import make_plan


class Net(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.embed = torch.nn.Embedding(50, 16)
        self.conv = torch.nn.Conv2d(3, 8, 3)
        self.fc = torch.nn.Linear(16, 50)
        self.fc.weight = self.embed.weight       # tied
        self.frozen = torch.nn.Linear(4, 4)
        self.frozen.requires_grad_(False)


def plan_for(model, budget, methods=None):
    kwargs = {"methods": methods} if methods else {}
    plan = make_plan(profile_from_module(model, "net", "test"), budget, **kwargs)
    return Plan.from_yaml(plan.to_yaml())


def give_gradients(model, seed):
    generator = torch.Generator().manual_seed(seed)
    for param in model.parameters():
        if param.requires_grad:
            param.grad = torch.randn(param.shape, generator=generator)


@pytest.mark.parametrize("budget", [0, 900, 3000, 12_000, 10**6])
def test_measured_state_bytes_equal_the_plan(budget):
    torch.manual_seed(0)
    model = Net()
    plan = plan_for(model, budget, methods=["smmf", "et", "sm3", "et_inf", "adam", "adagrad", "adafactor", "sgd", "came"])
    optimizer = from_plan(model, plan)
    give_gradients(model, 0)
    optimizer.step()
    assert state_storage_bytes(optimizer) == plan.state_bytes <= budget
    assert {group["method"] for group in optimizer.param_groups} == {entry.method for entry in plan.entries}
    assert model.frozen.weight not in optimizer.state


def test_schedulers_closures_and_resume_work_as_on_any_optimizer():
    torch.manual_seed(0)
    model = Net()
    plan = plan_for(model, 3000)
    optimizer = from_plan(model, plan, lr_scale=0.5)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=1, gamma=0.5)
    assert optimizer.step(lambda: torch.tensor(2.0)).item() == 2.0
    first_lrs = [group["lr"] for group in optimizer.param_groups]
    scheduler.step()
    assert [group["lr"] for group in optimizer.param_groups] == [lr / 2 for lr in first_lrs]
    for seed in range(3):
        give_gradients(model, seed)
        optimizer.step()
    buffer = io.BytesIO()
    torch.save({"model": model.state_dict(), "optimizer": optimizer.state_dict()}, buffer)
    for seed in range(3, 6):
        give_gradients(model, seed)
        optimizer.step()

    buffer.seek(0)
    saved = torch.load(buffer, weights_only=True)
    resumed_model = Net()
    resumed_model.load_state_dict(saved["model"])
    resumed = from_plan(resumed_model, plan, lr_scale=0.5)
    resumed.load_state_dict(saved["optimizer"])
    for seed in range(3, 6):
        give_gradients(resumed_model, seed)
        resumed.step()
    for a, b in zip(model.parameters(), resumed_model.parameters()):
        assert torch.equal(a, b)


def test_learning_rates_and_overrides():
    model = Net()
    plan = plan_for(model, 10**6)
    assert {group["lr"] for group in from_plan(model, plan, lr=0.05).param_groups} == {0.05}
    optimizer = from_plan(model, plan, weight_decay=0.01)
    assert {group["weight_decay"] for group in optimizer.param_groups} == {0.01}
    with pytest.raises(SpecError, match="no planned method takes 'colour'"):
        from_plan(model, plan, colour=1)


def test_a_plan_for_another_model_is_refused_naming_the_parameters():
    plan = plan_for(Net(), 3000)
    other = torch.nn.Sequential(torch.nn.Linear(16, 50))
    with pytest.raises(PlanError, match=r"embed.weight is in the plan but not a trainable parameter.*0.weight"):
        from_plan(other, plan)
    reshaped = Net()
    reshaped.conv = torch.nn.Conv2d(3, 9, 3)
    with pytest.raises(PlanError, match=r"conv.weight is \[9, 3, 3, 3\] in the model but \[8, 3, 3, 3\] in the plan"):
        from_plan(reshaped, plan)


def test_named_parameters_and_plan_paths_are_accepted(tmp_path):
    model = Net()
    path = plan_for(model, 3000).save(tmp_path / "plan.yaml")
    optimizer = from_plan(model.named_parameters(), str(path))
    give_gradients(model, 0)
    optimizer.step()
    assert state_storage_bytes(optimizer) == Plan.load(path).state_bytes
