"""Hugging Face folders: config.json's dtype is honoured; what memplan assumes is said."""

import json

import pytest

transformers = pytest.importorskip("transformers")


def _tiny_llama(folder, **extra):
    config = transformers.LlamaConfig(vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                      num_attention_heads=2, num_key_value_heads=2, **extra)
    config.save_pretrained(folder)


def test_the_configs_dtype_is_the_profiles(run_memplan, tmp_path):
    _tiny_llama(tmp_path / "bf16", dtype="bfloat16", architectures=["LlamaForCausalLM"])
    result = run_memplan("analyze", "bf16", "--json")
    assert result.code == 0, result.stderr
    assert {param["dtype"] for param in result.json()["parameters"]} == {"bfloat16"}
    assert "note" not in result.stderr


def test_an_unknown_architecture_is_said_to_be_built_without_its_head(run_memplan, tmp_path):
    _tiny_llama(tmp_path / "known", architectures=["LlamaForCausalLM"])
    _tiny_llama(tmp_path / "unknown", architectures=["NoSuchForCausalLM"])
    known = run_memplan("analyze", "known", "--json")
    unknown = run_memplan("analyze", "unknown", "--json")
    assert known.code == unknown.code == 0
    assert unknown.json()["totals"]["numel"] < known.json()["totals"]["numel"]
    assert unknown.stderr.strip() == (
        f"memplan: note: unknown/config.json: transformers {transformers.__version__} has no NoSuchForCausalLM: "
        "built its base model for model_type 'llama', without any task head")



def _tiny_t5(folder, tie_word_embeddings):
    """A tiny T5 whose config.json says ``tie_word_embeddings`` as T5 v1.1 and Flan-T5 do
    (transformers' T5Config would save its own forced value)."""
    transformers.T5Config(vocab_size=32, d_model=8, d_kv=4, d_ff=16, num_layers=1, num_heads=2,
                          architectures=["T5ForConditionalGeneration"]).save_pretrained(folder)
    config = json.loads((folder / "config.json").read_text())
    config["tie_word_embeddings"] = tie_word_embeddings
    (folder / "config.json").write_text(json.dumps(config))


def test_tying_the_config_did_not_ask_for_is_said_and_counted_once(run_memplan, tmp_path):
    _tiny_t5(tmp_path / "untied", False)
    model = transformers.T5ForConditionalGeneration(transformers.T5Config.from_pretrained(tmp_path / "untied"))
    if model.lm_head.weight is not model.shared.weight:
        pytest.skip(f"transformers {transformers.__version__} honours T5's tie_word_embeddings=false")
    result = run_memplan("analyze", "untied", "--json")
    assert result.code == 0, result.stderr
    assert result.stderr.strip() == (
        f"memplan: note: untied/config.json: tie_word_embeddings is false, but transformers "
        f"{transformers.__version__} ties lm_head.weight to shared.weight anyway: counted once, as shared.weight")
    assert result.json()["totals"]["numel"] == sum(param.numel() for param in model.parameters())
    assert "lm_head.weight" not in {param["name"] for param in result.json()["parameters"]}


def test_experts_fused_by_transformers_are_said_to_follow_its_modules(run_memplan, tmp_path):
    transformers.MixtralConfig(vocab_size=32, hidden_size=8, intermediate_size=16, num_hidden_layers=2,
                               num_attention_heads=2, num_key_value_heads=1, num_local_experts=4,
                               num_experts_per_tok=2, architectures=["MixtralForCausalLM"],
                               ).save_pretrained(tmp_path / "moe")
    result = run_memplan("analyze", "moe", "--json")
    assert result.code == 0, result.stderr
    fused = [param for param in result.json()["parameters"] if param["name"].endswith(".experts.gate_up_proj")]
    if not fused:
        assert result.stderr == ""
        pytest.skip(f"transformers {transformers.__version__} keeps one module per expert")
    assert fused[0]["shape"] == [4, 2 * 16, 8]
    assert result.stderr.strip() == (
        f"memplan: note: moe/config.json: transformers {transformers.__version__} holds the 4 experts of each MoE "
        f"layer fused in 3-D parameters (model.layers.0.mlp.experts.gate_up_proj 4x32x8 and 3 more), where a "
        f"checkpoint's safetensors may store each expert apart: the profile, and a plan made from it, use "
        f"transformers' module names and shapes")
