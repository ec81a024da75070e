import pytest

from memplan.loaders import load_profile
from memplan.roles import ROLES, role_of


@pytest.mark.parametrize(("name", "shape", "kind", "role"), [
    ("transformer.wte.weight", (50257, 768), "embedding", "embedding"),
    ("lm_head.weight", (32000, 4096), "linear", "head"),
    ("fc.weight", (1000, 2048), "linear", "head"),
    ("classifier.weight", (2, 768), "linear", "head"),
    ("transformer.h.0.mlp.c_fc.weight", (768, 3072), "linear", "matrix"),
    ("encoder.layer.3.output.dense.weight", (768, 3072), "linear", "matrix"),
    ("layer1.0.conv1.weight", (64, 64, 3, 3), "conv", "matrix"),
    ("fc.bias", (1000,), "bias", "vector"),
    ("transformer.ln_f.weight", (768,), "norm", "vector"),
    ("scale", (), "other", "vector"),
])
def test_roles_follow_the_layer_and_its_place(name, shape, kind, role):
    assert role_of(name, shape, kind) == role


def test_every_role_is_named_and_profiles_expose_them():
    profile = load_profile("gpt2")
    roles = {param.role for param in profile.trainable_params}
    assert roles <= set(ROLES) and {"embedding", "vector", "matrix"} <= roles
    assert "head" not in roles  # GPT-2's head is tied to the token embedding: counted once, as an embedding
