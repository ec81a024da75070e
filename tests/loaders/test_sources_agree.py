"""One model, every kind of source: the same parameters and the same fingerprint."""

import torch
from safetensors.torch import save_model

from memplan.loaders import load_profile
from memplan.loaders.python_file import build_model_from_file


def test_model_py_checkpoint_and_safetensors_agree(tmp_path, tiny_model_file):
    from_code = load_profile(tiny_model_file)
    model = build_model_from_file(tiny_model_file, device="cpu")
    torch.save(model.state_dict(), tmp_path / "tiny.pt")
    save_model(model, str(tmp_path / "tiny.safetensors"))  # drops the tied duplicate, as HF does
    from_checkpoint = load_profile(tmp_path / "tiny.pt")
    from_safetensors = load_profile(tmp_path / "tiny.safetensors")
    assert from_code.fingerprint == from_checkpoint.fingerprint == from_safetensors.fingerprint
    for other in (from_checkpoint, from_safetensors):
        assert {p.name: p.shape for p in other.params} == {p.name: p.shape for p in from_code.params}
    assert from_checkpoint["embed.weight"].aliases == ("head.weight",)
    assert {p.name: p.kind for p in from_checkpoint.params} == {p.name: p.kind for p in from_code.params}
