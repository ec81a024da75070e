"""The quality benchmarks' workloads keep memplan trial's protocol and their roles."""

import math

import pytest
import torch

from memplan.loaders.module import profile_from_module
from memplan.training import Workload
from tests.conftest import REPO

WORKLOADS = REPO / "benchmarks" / "workloads"


@pytest.mark.parametrize("name", ["char_lm", "docstring_lm", "source_gru", "source_lm", "source_words"])
def test_a_language_model_workload_trains_and_evaluates(name):
    workload = Workload.load(WORKLOADS / f"{name}.py", seed=0)
    torch.manual_seed(0)
    value = workload.loss_function(workload.model, workload.training_batch(0))
    assert value.ndim == 0 and math.isfinite(value.item())
    assert workload.eval_batches and len(workload.eval_batches) == 8
    roles = {param.role for param in profile_from_module(workload.model, name=name, source=name).trainable_params}
    assert {"embedding", "head"} <= roles


def test_source_lm_is_char_lm_s_transformer_with_its_own_details():
    workload = Workload.load(WORKLOADS / "source_lm.py", seed=0)
    model = workload.model
    assert type(model).__name__ == "CharTransformer" and model.positions.num_embeddings == 48
    layer = model.blocks.layers[0]
    assert layer.self_attn.num_heads == 2 and layer.activation is torch.nn.functional.gelu


def test_docstring_lm_reads_text_no_other_workload_reads(monkeypatch):
    monkeypatch.syspath_prepend(str(WORKLOADS))
    import docstring_lm
    import source_gru
    import source_words

    assert not set(docstring_lm.MODULES) & (set(source_gru.MODULES) | set(source_words.MODULES))
    assert len(docstring_lm.TRAIN_TOKENS) > 200_000 and len(docstring_lm.HELD_OUT_TOKENS) > 20_000
    model = Workload.load(WORKLOADS / "docstring_lm.py", seed=0).model
    assert len(model.blocks.layers) == 3 and model.positions.num_embeddings == docstring_lm.CONTEXT


def test_the_bundled_priors_are_not_fitted_on_a_held_out_workload(monkeypatch):
    monkeypatch.syspath_prepend(str(REPO / "benchmarks"))
    from fit_priors import HELD_OUT

    assert {"docstring_lm", "source_words"} <= HELD_OUT
    assert all((WORKLOADS / f"{name}.py").exists() for name in HELD_OUT)
    bundled = (REPO / "profiles" / "priors.yaml").read_text()
    assert not [name for name in HELD_OUT if name in bundled]
