import json

import pytest

from memplan.errors import SourceError
from memplan.loaders import load_profile

transformers = pytest.importorskip("transformers")


def test_a_config_folder_builds_offline_on_meta_with_ties(tmp_path):
    folder = tmp_path / "tiny-gpt2"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({
        "architectures": ["GPT2LMHeadModel"], "model_type": "gpt2", "n_layer": 2, "n_embd": 64, "n_head": 4,
        "vocab_size": 1000, "n_positions": 128}))
    profile = load_profile(folder)
    assert profile.name == "tiny-gpt2"
    assert profile["transformer.wte.weight"].aliases == ("lm_head.weight",)
    assert profile["transformer.wte.weight"].kind == "embedding"
    assert profile["transformer.h.0.attn.c_attn.weight"].kind == "linear"
    assert profile["transformer.h.0.ln_1.weight"].kind == "norm"
    assert load_profile(folder / "config.json").fingerprint == profile.fingerprint


def test_a_config_without_architectures_uses_automodel(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "bert", "num_hidden_layers": 1,
                                                      "hidden_size": 32, "num_attention_heads": 2,
                                                      "intermediate_size": 64, "vocab_size": 100}))
    profile = load_profile(tmp_path)
    assert "embeddings.word_embeddings.weight" in profile


def test_unknown_model_types_are_one_line(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "no-such-model"}))
    with pytest.raises(SourceError, match="config.json"):
        load_profile(tmp_path)
