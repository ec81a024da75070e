import json
import struct

import pytest
import torch
from safetensors.torch import save_file

from memplan.errors import SourceError
from memplan.loaders import load_profile


def test_header_gives_names_shapes_and_dtypes(tmp_path):
    path = tmp_path / "tiny.safetensors"
    save_file({"fc.weight": torch.zeros(4, 3, dtype=torch.bfloat16), "fc.bias": torch.zeros(4),
               "bn.running_mean": torch.zeros(4), "ids": torch.zeros(3, dtype=torch.int64)}, path)
    profile = load_profile(path)
    assert profile.name == "tiny"
    assert {p.name: (p.shape, p.dtype) for p in profile.params} == {
        "fc.weight": ((4, 3), "bfloat16"), "fc.bias": ((4,), "float32")}


def test_no_tensor_data_is_interpreted(tmp_path):
    """Overwrite every data byte with garbage: the profile only depends on the header."""
    path = tmp_path / "model.safetensors"
    save_file({"w": torch.randn(64, 64)}, path)
    raw = bytearray(path.read_bytes())
    header_length = struct.unpack("<Q", raw[:8])[0]
    raw[8 + header_length:] = b"\xff" * (len(raw) - 8 - header_length)
    path.write_bytes(bytes(raw))
    assert load_profile(path)["w"].shape == (64, 64)


def test_sharded_checkpoints_follow_the_weight_map(tmp_path):
    save_file({"a.weight": torch.zeros(2, 3)}, tmp_path / "model-00001-of-00002.safetensors")
    save_file({"b.weight": torch.zeros(5), "b.bias": torch.zeros(5)}, tmp_path / "model-00002-of-00002.safetensors")
    index = {"metadata": {"total_size": 64}, "weight_map": {
        "a.weight": "model-00001-of-00002.safetensors",
        "b.weight": "model-00002-of-00002.safetensors",
        "b.bias": "model-00002-of-00002.safetensors"}}
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps(index))
    for source in (tmp_path / "model.safetensors.index.json", tmp_path):
        profile = load_profile(source)
        assert [p.name for p in profile.params] == ["a.weight", "b.weight", "b.bias"]
        assert profile.name == tmp_path.name


def test_sharded_errors_name_the_missing_piece(tmp_path):
    index_path = tmp_path / "model.safetensors.index.json"
    index_path.write_text(json.dumps({"weight_map": {"a": "missing.safetensors"}}))
    with pytest.raises(SourceError, match="shard missing.safetensors named in the weight map does not exist"):
        load_profile(index_path)
    save_file({"b": torch.zeros(2)}, tmp_path / "one.safetensors")
    index_path.write_text(json.dumps({"weight_map": {"a": "one.safetensors"}}))
    with pytest.raises(SourceError, match="tensor a is mapped to one.safetensors but not stored there"):
        load_profile(index_path)
    index_path.write_text("{not json")
    with pytest.raises(SourceError, match="not valid JSON"):
        load_profile(index_path)


@pytest.mark.parametrize("content", [b"", b"garbage", struct.pack("<Q", 10**9) + b"{}"])
def test_invalid_files_give_one_line(tmp_path, content):
    path = tmp_path / "bad.safetensors"
    path.write_bytes(content)
    with pytest.raises(SourceError, match="bad.safetensors: not a valid safetensors file"):
        load_profile(path)


def test_truncated_download_is_reported(tmp_path):
    path = tmp_path / "cut.safetensors"
    save_file({"w": torch.zeros(100)}, path)
    path.write_bytes(path.read_bytes()[:-10])
    with pytest.raises(SourceError, match="not a valid safetensors file"):
        load_profile(path)
