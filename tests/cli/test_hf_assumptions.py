"""Hugging Face folders: config.json's dtype is honoured; what memplan assumes is said."""

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
