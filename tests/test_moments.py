
import pytest
import torch

from memplan.moments import cover_estimate, distortion, estimate, measure_moments, rank_one
from memplan.errors import SourceError
from memplan.methods import param_state
from memplan.planner import make_plan
from memplan.loaders import load_profile


def rank_one_tensor(*sizes, seed=0):
    generator = torch.Generator().manual_seed(seed)
    result = torch.ones(())
    for size in sizes:
        result = result.unsqueeze(-1) * torch.rand(size, generator=generator)
    return result


@pytest.mark.parametrize("spec, shape, layout", [
    ("et", (60,), (6, 10)), ("smmf", (6, 10), (6, 10)), ("et", (4, 6, 5), (4, 6, 5)), ("smmf:beta1=none", (24, 5), (24, 5)),
])
def test_a_second_moment_that_is_rank_one_in_the_layout_has_zero_distortion(spec, shape, layout):
    moment = rank_one_tensor(*layout).reshape(shape)
    assert distortion(moment, estimate(param_state(spec, shape, layout=layout), moment)) < 1e-12


def test_adafactor_is_rank_one_per_leading_index():
    moment = torch.stack([rank_one_tensor(5, 7, seed=s) for s in range(3)])
    state = param_state("adafactor", (3, 5, 7))
    assert distortion(moment, estimate(state, moment)) < 1e-12
    assert distortion(moment, estimate(param_state("smmf", (3, 5, 7), layout=(15, 7)), moment)) > 1e-3


def test_full_state_is_exact_and_coarser_layouts_lose_information():
    moment = torch.rand(16, 24, generator=torch.Generator().manual_seed(3)) ** 4
    full = distortion(moment, estimate(param_state("adam", (16, 24)), moment))
    natural = distortion(moment, estimate(param_state("et", (16, 24), layout=(16, 24)), moment))
    scalar = distortion(moment, estimate(param_state("sgd", (16, 24)), moment))
    assert full == 0.0 < natural < scalar


def test_rank_one_and_cover_estimates():
    values = torch.tensor([[1.0, 2.0], [3.0, 4.0]])
    assert torch.allclose(rank_one(values), torch.tensor([[3 * 4 / 10, 3 * 6 / 10], [7 * 4 / 10, 7 * 6 / 10]]))
    assert torch.equal(cover_estimate(values), torch.tensor([[2.0, 2.0], [3.0, 4.0]]))


CALIBRATED_MODEL = '''
import torch
from torch import nn

def build_model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(6, 10), nn.Tanh(), nn.Linear(10, 3))

def calibration_loss(model):
    x = torch.randn(32, 6)
    return model(x).pow(2).mean()
'''


def test_calibration_measures_every_trainable_parameter_and_feeds_the_plan(tmp_path):
    path = tmp_path / "model.py"
    path.write_text(CALIBRATED_MODEL)
    calibration = measure_moments(path, samples=4)
    assert set(calibration.moments) == {"0.weight", "0.bias", "2.weight", "2.bias"}
    assert all(bool((m >= 0).all()) for m in calibration.moments.values())
    plan = make_plan(load_profile(path), 1000, moments=calibration)
    assert plan.calibration["samples"] == 4
    assert all(entry.distortion is not None for entry in plan.entries)


@pytest.mark.parametrize("text, message", [
    ("from torch import nn\ndef build_model():\n    return nn.Linear(2, 2)\n", "needs a function calibration_loss"),
    ("from torch import nn\ndef build_model():\n    return nn.Linear(2, 2)\ndef calibration_loss(model):\n    return 3\n",
     "must return a scalar tensor"),
    ("import torch\nfrom torch import nn\ndef build_model():\n    return nn.Linear(2, 2)\n"
     "def calibration_loss(model):\n    raise ValueError('no data')\n", r"model.py:6: failed while calling calibration_loss"),
])
def test_calibration_errors_name_the_file(tmp_path, text, message):
    path = tmp_path / "model.py"
    path.write_text(text)
    with pytest.raises(SourceError, match=message):
        measure_moments(path, samples=1)


def test_the_trial_protocol_serves_calibration_too():
    from memplan.moments import measure_moments
    from tests.conftest import REPO

    moments = measure_moments(REPO / "tests" / "fixtures" / "tiny_trainable.py", samples=2)
    assert set(moments.moments) == {"embed.weight", "hidden.weight", "hidden.bias", "norm.weight", "norm.bias",
                                    "head.weight", "head.bias"}
    assert all(float(moment.sum()) > 0 for moment in moments.moments.values())
