import math

import pytest
import torch

from memplan.errors import SourceError
from memplan.methods import build
from memplan.training import Schedule, Workload, train
from tests.conftest import REPO

TINY = REPO / "tests" / "fixtures" / "tiny_trainable.py"


def test_schedules_warm_up_then_decay():
    cosine = Schedule(steps=10, warmup=2)
    assert [cosine.factor(step) for step in (0, 1)] == pytest.approx([1 / 3, 2 / 3])
    assert cosine.factor(2) == 1.0 and cosine.factor(9) == pytest.approx(0.5 * (1 + math.cos(math.pi * 7 / 8)))
    assert Schedule(steps=4, shape="linear").factor(2) == 0.5
    assert Schedule(steps=4, shape="constant").factor(3) == 1.0
    for bad in (dict(steps=0), dict(steps=5, warmup=5), dict(steps=5, shape="step"), dict(steps=5, clip=0)):
        with pytest.raises(SourceError):
            Schedule(**bad)


def test_runs_of_one_seed_start_alike_and_see_the_same_batches():
    workload = Workload.load(TINY, seed=3)
    assert torch.equal(workload.batch(5), workload.batch(5)) and not torch.equal(workload.batch(5), workload.batch(6))
    first = train(workload, lambda model: build("adam", list(model.named_parameters()), lr=1e-2), Schedule(steps=20))
    again = train(workload, lambda model: build("adam", list(model.named_parameters()), lr=1e-2), Schedule(steps=20))
    assert first.loss == again.loss and not first.diverged and first.steps_run == 20
    other_seed = train(Workload.load(TINY, seed=4), lambda model: build("adam", list(model.named_parameters()), lr=1e-2),
                       Schedule(steps=20))
    assert other_seed.loss != first.loss
    assert first.state_bytes == 2 * 4 * sum(param.numel() for param in workload.model.parameters())


def test_a_diverging_run_stops_and_says_so():
    workload = Workload.load(TINY)
    result = train(workload, lambda model: build("sgd", list(model.named_parameters()), lr=1e6),
                   Schedule(steps=50, clip=None))
    assert result.diverged and result.loss == math.inf and result.steps_run < 50


def test_a_file_without_the_protocol_is_one_clear_error(tmp_path):
    path = tmp_path / "model.py"
    path.write_text("import torch\nmodel = torch.nn.Linear(2, 2)\ndef loss(model, batch):\n    return batch\n")
    with pytest.raises(SourceError, match=r"model.py: memplan trial needs training_batch\(\): "):
        Workload.load(path)
    path.write_text("import torch\nmodel = torch.nn.Linear(2, 2)\ndef training_batch(step):\n    return torch.ones(3, 2)\n"
                    "def loss(model, batch):\n    return model(batch)\n")
    with pytest.raises(SourceError, match=r"loss\(model, batch\) must return a scalar tensor, got Tensor\[3, 2\]"):
        train(Workload.load(path), lambda model: build("adam", list(model.named_parameters())), Schedule(steps=2))
