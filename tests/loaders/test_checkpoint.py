import os

import pytest
import torch
from torch import nn

from memplan.errors import SourceError
from memplan.loaders import load_profile


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.embed = nn.Embedding(10, 4)
        self.conv = nn.Conv2d(3, 4, 3)
        self.bn = nn.BatchNorm2d(4)
        self.ln = nn.LayerNorm(4)
        self.head = nn.Linear(4, 10, bias=False)
        self.head.weight = self.embed.weight


def test_state_dict_lists_parameters_without_buffers_and_with_ties(tmp_path):
    path = tmp_path / "net.pt"
    torch.save(Net().state_dict(), path)
    profile = load_profile(path)
    names = [p.name for p in profile.params]
    assert names == ["embed.weight", "conv.weight", "conv.bias", "bn.weight", "bn.bias", "ln.weight", "ln.bias"]
    assert profile["embed.weight"].aliases == ("head.weight",)
    assert {p.name: p.kind for p in profile.params} == {
        "embed.weight": "embedding", "conv.weight": "conv", "conv.bias": "bias", "bn.weight": "norm",
        "bn.bias": "norm", "ln.weight": "norm", "ln.bias": "norm"}


@pytest.mark.parametrize("wrap", [
    lambda sd: {"state_dict": sd, "epoch": 3},
    lambda sd: {"model": sd, "optimizer": {"lr": 0.1}},
    lambda sd: {"module": sd},
    lambda sd: {"model_state_dict": sd},
])
def test_nested_state_dicts_are_found(tmp_path, wrap):
    path = tmp_path / "ckpt.pth"
    torch.save(wrap(nn.Linear(3, 2).state_dict()), path)
    assert [p.name for p in load_profile(path).params] == ["weight", "bias"]


def test_ddp_prefix_is_stripped_on_request(tmp_path):
    path = tmp_path / "ddp.bin"
    torch.save({f"module.{k}": v for k, v in nn.Linear(3, 2).state_dict().items()}, path)
    assert [p.name for p in load_profile(path).params] == ["module.weight", "module.bias"]
    assert [p.name for p in load_profile(path, strip_prefix="module.").params] == ["weight", "bias"]


def test_legacy_format_checkpoints_load(tmp_path):
    path = tmp_path / "legacy.pt"
    torch.save(nn.Linear(3, 2).state_dict(), path, _use_new_zipfile_serialization=False)
    assert load_profile(path)["weight"].shape == (2, 3)


def test_dtypes_are_kept(tmp_path):
    path = tmp_path / "half.pt"
    torch.save(nn.Linear(3, 2).to(torch.bfloat16).state_dict(), path)
    assert {p.dtype for p in load_profile(path).params} == {"bfloat16"}


class RunsCode:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.mark.parametrize("legacy", [False, True])
def test_a_pickle_that_would_run_code_is_refused_and_runs_nothing(tmp_path, legacy):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pt"
    torch.save({"weight": torch.zeros(2), "payload": RunsCode(marker)}, path,
               _use_new_zipfile_serialization=not legacy)
    with pytest.raises(SourceError, match="refused to load.*never unpickles code"):
        load_profile(path)
    assert not marker.exists()


@pytest.mark.parametrize("content, message", [
    (b"not a checkpoint", "not a PyTorch checkpoint .*starts with 'not a ch'"),
    (b"", "not a PyTorch checkpoint"),
    (b"\x80\x02garbage", "not a readable PyTorch checkpoint|refused to load"),
])
def test_garbage_files_give_one_line(tmp_path, content, message):
    path = tmp_path / "junk.pt"
    path.write_bytes(content)
    with pytest.raises(SourceError, match=message):
        load_profile(path)


def test_containers_without_tensors_list_their_keys(tmp_path):
    path = tmp_path / "meta.pt"
    torch.save({"epoch": 3, "lr": 0.1}, path)
    with pytest.raises(SourceError, match=r"no tensors found.*keys: 'epoch', 'lr'"):
        load_profile(path)
    torch.save([torch.zeros(2)], path)
    with pytest.raises(SourceError, match="expected a state dict"):
        load_profile(path)
