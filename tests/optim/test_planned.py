import io
from copy import deepcopy

import pytest
import torch

from memplan.errors import SpecError
from memplan.loaders.module import profile_from_module
from memplan.measure import state_storage_bytes
from memplan.optim import from_plan
from memplan.plan import Plan, PlanError
from memplan.planner import make_plan
from tests.conftest import PAPER_PRIORS


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
    plan = make_plan(profile_from_module(model, "net", "test"), budget, priors_path=PAPER_PRIORS, **kwargs)
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
    for group in from_plan(model, plan, lr=0.05).param_groups:  # an Adam-equivalent rate, times each ratio
        assert group["lr"] == pytest.approx(0.05 * plan.lr_ratio(group["method"]))
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


class Wide(torch.nn.Module):
    """Parameters much larger than any plan's state: a checkpoint that held them would show."""

    def __init__(self):
        super().__init__()
        self.fc = torch.nn.Linear(256, 128)
        self.head = torch.nn.Linear(128, 10)


def saved_bytes(obj) -> int:
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    return buffer.getbuffer().nbytes


def test_a_checkpoint_holds_only_state_and_small_metadata():
    torch.manual_seed(0)
    model = Wide()
    optimizer = from_plan(model, plan_for(model, 4096, methods=["smmf", "adam", "sm3", "et"]))
    give_gradients(model, 0)
    optimizer.step()
    state_tensors = [value for state in optimizer.state.values() for key, value in state.items()
                     if isinstance(value, torch.Tensor) and key != "step"]
    parameter_bytes = sum(param.numel() * param.element_size() for param in model.parameters())
    checkpoint = saved_bytes(optimizer.state_dict())
    assert state_storage_bytes(optimizer) == sum(t.numel() * t.element_size() for t in state_tensors) <= 4096
    # the state tensors saved alone, plus a few KiB of hyperparameters, names, layouts and counters
    assert checkpoint <= saved_bytes(state_tensors) + 4096 < parameter_bytes / 10


def test_state_takes_any_key_like_a_torch_optimizers():
    model = Net()
    optimizer = from_plan(model, plan_for(model, 3000))
    optimizer.state["note"] = {"epoch": 3}
    give_gradients(model, 0)
    optimizer.step()
    assert optimizer.state_dict()["state"]["note"] == {"epoch": 3}
    assert all(optimizer.state is inner.state for inner in optimizer.optimizers)


def test_resuming_keeps_the_planned_layouts_of_parameters_without_state():
    """A parameter with no state when the checkpoint was saved still gets its planned layout."""
    torch.manual_seed(0)
    model = Net()
    plan = plan_for(model, 3000, methods=["smmf", "sm3", "et"])
    optimizer = from_plan(model, plan)
    give_gradients(model, 0)
    model.conv.weight.grad = None   # no state for it at save time
    optimizer.step()
    buffer = io.BytesIO()
    torch.save(optimizer.state_dict(), buffer)
    buffer.seek(0)
    resumed_model = Net()
    resumed = from_plan(resumed_model, plan)
    resumed.load_state_dict(torch.load(buffer, weights_only=True))
    give_gradients(resumed_model, 1)
    resumed.step()
    planned = {entry.name: entry.layout for entry in plan.entries}
    assert resumed.state[resumed_model.conv.weight]["layout"] == planned["conv.weight"]
    assert state_storage_bytes(resumed) == plan.state_bytes


def test_added_groups_need_a_method_and_are_updated_by_it():
    model = Net()
    optimizer = from_plan(model, plan_for(model, 10**6))
    extra, other = torch.nn.Parameter(torch.ones(3)), torch.nn.Parameter(torch.ones(4, 6))
    with pytest.raises(ValueError, match="needs 'method'"):
        optimizer.add_param_group({"params": [("extra", extra)]})
    with pytest.raises(ValueError, match="more than one parameter group"):
        optimizer.add_param_group({"params": [("conv.weight", model.conv.weight)], "method": "sgd"})
    planned_method = optimizer.param_groups[0]["method"]
    with pytest.raises(ValueError, match=r"\(name, parameter\) pairs"):
        optimizer.add_param_group({"params": [extra], "method": planned_method})
    optimizer.add_param_group({"params": [("extra", extra)], "method": planned_method, "lr": 0.1})
    optimizer.add_param_group({"params": [("other", other)], "method": "smmf", "lr": 0.1, "matricization": [(24, 1)]})
    assert [group["method"] for group in optimizer.param_groups[-2:]] == [planned_method, "smmf"]
    extra.grad, other.grad = torch.ones(3), torch.ones(4, 6)
    optimizer.step()
    assert (extra < 1).all() and (other < 1).all()
    assert optimizer.state[other]["layout"] == (24, 1)
    resumed = deepcopy(optimizer)
    resumed.load_state_dict(optimizer.state_dict())
    assert len(resumed.param_groups) == len(optimizer.param_groups)


def test_an_override_reaches_every_planned_method_or_none():
    model = Net()
    plan = plan_for(model, 3000, methods=["smmf", "sgd", "adam"])
    optimizer = from_plan(model, plan, maximize=True)
    assert len(optimizer.optimizers) > 1 and all(group["maximize"] for group in optimizer.param_groups)
    if any("chunk_bytes" not in group for group in optimizer.param_groups):
        with pytest.raises(SpecError, match="would reach only some planned methods"):
            from_plan(model, plan, chunk_bytes=2**20)


def test_a_state_dict_of_another_plan_is_refused():
    model = Net()
    optimizer = from_plan(model, plan_for(model, 3000))
    state_dict = optimizer.state_dict()
    state_dict["param_groups"][0]["method"] = "sgd:momentum=0.5"
    with pytest.raises(PlanError, match="saved from another plan"):
        optimizer.load_state_dict(state_dict)
