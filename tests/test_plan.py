import pytest
import yaml

from memplan.loaders import load_profile
from memplan.plan import Plan, PlanError, PlanPrediction
from memplan.profile import ModelProfile, ParamSpec
from memplan.planner import make_plan
from tests.conftest import PAPER_PRIORS


@pytest.fixture(scope="module")
def gpt2_plan():
    return make_plan(load_profile("gpt2"), 64 * 2**20, priors_path=PAPER_PRIORS)


def test_yaml_round_trip_is_identical(gpt2_plan, tmp_path):
    path = gpt2_plan.save(tmp_path / "plan.yaml")
    loaded = Plan.load(path)
    assert loaded == gpt2_plan
    assert loaded.to_yaml() == path.read_text()
    assert loaded.state_bytes == gpt2_plan.predicted.state_bytes <= loaded.budget_bytes


def test_a_plan_records_the_scale_of_its_qualities(gpt2_plan, tmp_path):
    assert gpt2_plan.quality_scale == "adam_sgd" and yaml.safe_load(gpt2_plan.to_yaml())["quality_scale"] == "adam_sgd"
    path = tmp_path / "loss.yaml"
    path.write_text("memplan_priors: 3\nscale: adam_loss\nmethods:\n  smmf: {quality: 1.01}\n  adam: {quality: 1.0}\n")
    plan = make_plan(load_profile("gpt2"), 64 * 2**20, methods=["smmf", "adam"], priors_path=str(path))
    assert plan.quality_scale == "adam_loss" and Plan.from_yaml(plan.to_yaml()).quality_scale == "adam_loss"
    # a plan written before the key existed reads as the bundled scale; an unknown scale is refused
    assert Plan.from_yaml(tampered(gpt2_plan, lambda d: d.pop("quality_scale"))).quality_scale == "adam_sgd"
    with pytest.raises(PlanError, match="quality_scale: expected one of"):
        Plan.from_yaml(tampered(gpt2_plan, lambda d: d.update(quality_scale="nats")))


def test_predictions_are_a_typed_record_in_the_files_key_order(gpt2_plan):
    predicted = gpt2_plan.predicted
    assert isinstance(predicted, PlanPrediction) and predicted.state_bytes == gpt2_plan.state_bytes
    assert predicted.quality <= predicted.objective_bound and predicted.traffic_ms is None and predicted.device is None
    assert list(gpt2_plan.to_dict()["predicted"]) == ["state_bytes", "quality", "objective", "objective_bound"]
    timed = PlanPrediction(5, 0.9, 0.8, 0.95, traffic_ms=1.5, device="h100")
    assert list(timed.to_dict()) == ["state_bytes", "quality", "objective", "objective_bound", "traffic_ms", "device"]
    assert PlanPrediction.from_dict(timed.to_dict()) == timed
    with pytest.raises(PlanError, match="predicted.traffic_ms: expected a number >= 0 or null, got 'slow'"):
        PlanPrediction.from_dict({**timed.to_dict(), "traffic_ms": "slow"})


def tampered(plan, change):
    data = yaml.safe_load(plan.to_yaml())
    change(data)
    return yaml.safe_dump(data, sort_keys=False)


@pytest.mark.parametrize("change, message", [
    (lambda d: d["parameters"][0].update(layout=[6932, 5569]), r"transformer.wte.weight: layout \[6932, 5569\] has"),
    (lambda d: d["parameters"][0].update(method="smmq"), r"transformer.wte.weight: unknown method 'smmq'"),
    (lambda d: d["parameters"][0].update(state_bytes=1), r"transformer.wte.weight: state_bytes 1 but smmf"),
    (lambda d: d["parameters"][1].update(method="smmf:sign_bits=3"), "transformer.wpe.weight: option sign_bits=3"),
    (lambda d: d["parameters"].append(dict(d["parameters"][0])), "appears twice"),
    (lambda d: d.update(budget_bytes=10), "over the budget"),
    (lambda d: d["predicted"].update(state_bytes=5), "entries add up to"),
    (lambda d: d.pop("predicted"), "predicted: missing, expected a mapping"),
    (lambda d: d["hyperparameters"]["smmf"].update(beta1=None), "changes the state layout"),
    (lambda d: d["hyperparameters"]["smmf"].update(colour=1), r"hyperparameters.smmf.colour: unknown key \(valid: "),
    (lambda d: d["hyperparameters"]["adam"].update(lr=-1), "hyperparameters.adam.lr: expected a number >= 0, got -1"),
    (lambda d: d["parameters"][2].update(dtype="float3"), "transformer.h.0.ln_1.weight: unknown dtype 'float3'"),
    (lambda d: d.update(memplan_plan=7), "not a memplan plan"),
])
def test_tampered_plans_are_refused_naming_the_parameter(gpt2_plan, change, message):
    with pytest.raises(PlanError, match=message):
        Plan.from_yaml(tampered(gpt2_plan, change))


def test_a_mistyped_value_in_a_hand_edited_plan_is_one_clear_error(gpt2_plan):
    with pytest.raises(PlanError) as error:
        Plan.from_yaml(tampered(gpt2_plan, lambda d: d["hyperparameters"]["smmf"].update(eps="tiny")))
    assert str(error.value) == "plan: hyperparameters.smmf.eps: expected a number, got 'tiny'"


def test_every_problem_of_a_hand_edited_plan_is_listed_by_its_path(gpt2_plan):
    def edit(data):
        del data["model"]["fingerprint"]
        data["budget_bytes"] = "64MiB"
        data["parameters"][3]["shape"] = [768, "x"]
        data["parameters"][4]["colour"] = "red"
        data["hyperparameters"]["smmf"]["growth_rate"] = True

    with pytest.raises(PlanError) as error:
        Plan.from_yaml(tampered(gpt2_plan, edit))
    assert str(error.value) == (
        "plan: 5 problems: model.fingerprint: missing, expected a string; "
        "budget_bytes: expected an integer >= 0, got '64MiB'; parameters[3].shape[1]: expected an integer >= 0, "
        "got 'x'; parameters[4].colour: unknown key (valid: distortion, dtype, layout, method, momentum, name, "
        "quality, shape, state_bytes, state_dtype); hyperparameters.smmf.growth_rate: expected a number, got true")


def test_checking_against_another_model_names_every_mismatch(gpt2_plan):
    gpt2 = load_profile("gpt2")
    gpt2_plan.check_model(gpt2)
    params = list(gpt2.params)
    params[0] = ParamSpec(params[0].name, (50258, 768), kind="embedding")            # reshaped
    params[1] = ParamSpec("transformer.wpe.extra", (1024, 768))                        # renamed
    params[2] = ParamSpec(params[2].name, params[2].shape, "bfloat16")                  # retyped
    other = ModelProfile("other", "test", tuple(params))
    with pytest.raises(PlanError) as error:
        gpt2_plan.check_model(other)
    text = str(error.value)
    assert "transformer.wte.weight is [50258, 768] in the model but [50257, 768] in the plan" in text
    assert "transformer.wpe.weight is in the plan but not a trainable parameter of the model" in text
    assert "transformer.wpe.extra [1024, 768] is trainable in the model but has no plan entry" in text
    assert "transformer.h.0.ln_1.weight is bfloat16 in the model but float32 in the plan" in text
    with pytest.raises(PlanError, match="it is another model: 0 of the plan's"):
        gpt2_plan.check_model(load_profile("resnet50"))


def test_summary_and_per_method_rows(gpt2_plan):
    summary = gpt2_plan.summary("plan.yaml")
    assert set(summary) >= {"budget_bytes", "state_bytes", "plan_path", "parameters"}
    assert sum(row["state_bytes"] for row in gpt2_plan.by_method()) == gpt2_plan.state_bytes
    assert gpt2_plan.largest(1)[0].name == "transformer.wte.weight"


def test_a_wrapped_model_is_told_to_pass_its_module():
    import torch

    from memplan.optim import from_plan
    from memplan.planner import make_plan
    from memplan.profile import ParamSpec as Spec

    model = torch.nn.Sequential(torch.nn.Linear(8, 4), torch.nn.Linear(4, 2))
    profile = ModelProfile("seq", "test", tuple(Spec(name, tuple(param.shape)) for name, param in
                                                model.named_parameters()))
    plan = make_plan(profile, 10**6)

    class Wrapper(torch.nn.Module):  # what DistributedDataParallel does to the names
        def __init__(self, module):
            super().__init__()
            self.module = module

    with pytest.raises(PlanError) as error:
        from_plan(Wrapper(model), plan)
    message = str(error.value)
    assert message.startswith("plan for seq does not fit this model: every name in the model has a 'module.' "
                              "prefix the plan lacks: pass model.module (a DDP/FSDP wrapper adds 'module.')")
    assert message.count(" is trainable in the model but has no plan entry") <= 2 and "and 4 more" in message
    from_plan(model, plan)
