import pytest

from memplan.loaders.kinds import batch_norm_modules, is_buffer_name, kind_from_name


@pytest.mark.parametrize("name, shape, kind", [
    ("transformer.wte.weight", (50257, 768), "embedding"),
    ("model.embed_tokens.weight", (32000, 4096), "embedding"),
    ("bert.embeddings.word_embeddings.weight", (30522, 768), "embedding"),
    ("encoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight", (32, 8), "embedding"),
    ("model.layers.0.input_layernorm.weight", (4096,), "norm"),
    ("transformer.h.0.ln_1.bias", (768,), "norm"),
    ("encoder.final_layer_norm.weight", (512,), "norm"),
    ("layer1.0.bn1.weight", (64,), "norm"),
    ("bert.encoder.layer.0.output.LayerNorm.weight", (768,), "norm"),
    ("fc.bias", (10,), "bias"),
    ("fc.weight", (10, 512), "linear"),
    ("conv1.weight", (64, 3, 7, 7), "conv"),
    ("scale", (), "other"),
    ("lm_head.weight", (32000, 4096), "linear"),
])
def test_kind_from_name(name, shape, kind):
    assert kind_from_name(name, shape) == kind


def test_batch_norm_is_recognised_by_its_running_statistics():
    names = ["downsample.1.weight", "downsample.1.bias", "downsample.1.running_mean", "downsample.1.running_var"]
    modules = batch_norm_modules(names)
    assert modules == frozenset({"downsample.1"})
    assert kind_from_name("downsample.1.weight", (256,), modules) == "norm"
    assert kind_from_name("downsample.1.weight", (256,)) == "other"
    assert is_buffer_name("downsample.1.running_var") and not is_buffer_name("downsample.1.weight")
