import json
import warnings

import pytest

from memplan.errors import AssumptionWarning, SourceError
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


def _notes(folder):
    """The profile of ``folder`` and the notes memplan made while reading it."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        profile = load_profile(folder)
    return profile, [str(warning.message) for warning in caught if issubclass(warning.category, AssumptionWarning)]


def _save(config, folder, **raw):
    config.save_pretrained(folder)
    document = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**document, **raw}))
    return folder


def _tiny_t5():
    return transformers.T5Config(vocab_size=32, d_model=8, d_kv=4, d_ff=16, num_layers=1, num_heads=2,
                                 architectures=["T5ForConditionalGeneration"])


def _tiny_llama(**extra):
    return transformers.LlamaConfig(vocab_size=32, hidden_size=8, intermediate_size=16, num_hidden_layers=1,
                                    num_attention_heads=2, num_key_value_heads=1,
                                    architectures=["LlamaForCausalLM"], **extra)


def test_t5_tying_is_said_only_where_the_config_asks_for_untied_embeddings(tmp_path):
    untied, untied_notes = _notes(_save(_tiny_t5(), tmp_path / "untied", tie_word_embeddings=False))
    tied, tied_notes = _notes(_save(_tiny_t5(), tmp_path / "tied", tie_word_embeddings=True))
    default, default_notes = _notes(_save(_tiny_t5(), tmp_path / "default"))
    assert tied_notes == default_notes == []
    assert untied.fingerprint == tied.fingerprint == default.fingerprint
    shared = untied["shared.weight"]
    if "lm_head.weight" not in shared.aliases:
        assert untied_notes == []
        pytest.skip(f"transformers {transformers.__version__} honours T5's tie_word_embeddings=false")
    assert untied_notes == [f"{tmp_path / 'untied' / 'config.json'}: tie_word_embeddings is false, but transformers "
                            f"{transformers.__version__} ties lm_head.weight to shared.weight anyway: "
                            f"counted once, as shared.weight"]


def test_a_dense_model_untied_as_asked_gets_no_note(tmp_path):
    profile, notes = _notes(_save(_tiny_llama(tie_word_embeddings=False), tmp_path / "llama"))
    assert notes == [] and "lm_head.weight" in profile
    tied, notes = _notes(_save(_tiny_llama(tie_word_embeddings=True), tmp_path / "llama-tied"))
    assert notes == [] and tied["model.embed_tokens.weight"].aliases == ("lm_head.weight",)


@pytest.mark.parametrize("config_class, experts, fused_names", [
    ("MixtralConfig", {"num_local_experts": 4}, ["gate_up_proj", "down_proj"]),
    ("Qwen2MoeConfig", {"num_experts": 4, "moe_intermediate_size": 4, "shared_expert_intermediate_size": 8},
     ["gate_up_proj", "down_proj"]),
])
def test_moe_experts_fused_by_transformers_are_said(tmp_path, config_class, experts, fused_names):
    config = getattr(transformers, config_class)(
        vocab_size=32, hidden_size=8, intermediate_size=16, num_hidden_layers=2, num_attention_heads=2,
        num_key_value_heads=1, num_experts_per_tok=2, architectures=[config_class.replace("Config", "ForCausalLM")],
        **experts)
    profile, notes = _notes(_save(config, tmp_path / "moe"))
    fused = [param for param in profile.params if ".experts." in param.name and len(param.shape) == 3]
    if not fused:
        assert notes == []
        pytest.skip(f"transformers {transformers.__version__} keeps one module per expert")
    assert [param.name for param in fused] == [f"model.layers.{layer}.mlp.experts.{name}"
                                               for layer in range(2) for name in fused_names]
    assert all(param.shape[0] == 4 for param in fused)
    assert len(notes) == 1 and "holds the 4 experts of each MoE layer fused" in notes[0]
    assert f"({fused[0].name} {'x'.join(map(str, fused[0].shape))} and 3 more)" in notes[0]
