import textwrap

import pytest

from memplan.errors import SourceError
from memplan.loaders import load_profile


def write(tmp_path, text, name="model.py"):
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return path


def test_build_model_on_meta_lists_kinds_ties_and_scalars(tiny_model_file):
    profile = load_profile(tiny_model_file)
    by_name = {p.name: p for p in profile.params}
    assert list(by_name) == ["scale", "embed.weight", "conv.weight", "conv.bias", "norm.weight", "norm.bias",
                             "fc.weight", "fc.bias"]
    assert by_name["embed.weight"].aliases == ("head.weight",)
    assert profile["head.weight"] is by_name["embed.weight"]
    kinds = {name: spec.kind for name, spec in by_name.items()}
    assert kinds == {"scale": "other", "embed.weight": "embedding", "conv.weight": "conv", "conv.bias": "bias",
                     "norm.weight": "norm", "norm.bias": "norm", "fc.weight": "linear", "fc.bias": "bias"}
    assert by_name["scale"].shape == ()
    assert profile.totals()["numel"] == 1 + 1600 + 216 + 8 + 32 + 1600 + 100


def test_a_huge_model_costs_no_memory_on_meta(tmp_path):
    path = write(tmp_path, """
        from torch import nn
        model = nn.Sequential(*[nn.Linear(100_000, 100_000) for _ in range(4)])   # 40 G parameters
    """)
    profile = load_profile(path)
    assert profile.totals()["numel"] == 4 * (100_000 * 100_000 + 100_000)


@pytest.mark.parametrize("body, entry", [
    ("model = Net()", None),
    ("def build_model():\n    return Net()", None),
    ("", None),                                     # the only nn.Module subclass
    ("net = Net()", "net"),
    ("def make():\n    return Net()", "make"),
    ("", "Net"),
])
def test_entry_resolution(tmp_path, body, entry):
    path = write(tmp_path, "from torch import nn\n\nclass Net(nn.Module):\n    def __init__(self):\n"
                           "        super().__init__()\n        self.fc = nn.Linear(3, 2)\n\n" + body + "\n")
    profile = load_profile(path, entry=entry)
    assert [p.name for p in profile.params] == ["fc.weight", "fc.bias"]


def test_frozen_parameters_are_listed_but_not_trainable(tmp_path):
    path = write(tmp_path, """
        from torch import nn
        def build_model():
            base = nn.Linear(8, 8)
            base.requires_grad_(False)
            return nn.ModuleDict({"base": base, "lora_a": nn.Linear(8, 2, bias=False)})
    """)
    profile = load_profile(path)
    assert {p.name: p.trainable for p in profile.params} == {"base.weight": False, "base.bias": False,
                                                             "lora_a.weight": True}


@pytest.mark.parametrize("text, message", [
    ("from torch import nn\nclass A(nn.Module): pass\nclass B(nn.Module): pass\n", r"several nn.Module classes \(A, B\)"),
    ("x = 1\n", "no model found"),
    ("import not_a_real_module_xyz\n", r"model.py:1: failed while importing it: ModuleNotFoundError"),
    ("def build_model(:\n", "model.py:1: failed while importing it: SyntaxError"),
    ("def build_model():\n    return 3\n", "returned int, not a torch.nn.Module"),
    ("def build_model():\n    raise RuntimeError('boom')\n", r"model.py:2: failed while building the model .*RuntimeError: boom"),
    ("import sys\nsys.exit(3)\n", "SystemExit"),
])
def test_bad_model_files_give_one_line_naming_the_file(tmp_path, text, message):
    path = write(tmp_path, text)
    with pytest.raises(SourceError, match=message) as error:
        load_profile(path)
    assert "\n" not in str(error.value)


def test_unknown_entry_lists_the_candidates(tmp_path):
    path = write(tmp_path, "from torch import nn\nclass Net(nn.Module): pass\ndef build_model():\n    return Net()\n")
    with pytest.raises(SourceError, match=r"no attribute 'missing' \(candidates: Net, build_model\)"):
        load_profile(path, entry="missing")


def test_the_model_file_may_import_its_neighbours(tmp_path):
    (tmp_path / "blocks.py").write_text("from torch import nn\nclass Block(nn.Linear):\n    pass\n")
    path = write(tmp_path, "from blocks import Block\ndef build_model():\n    return Block(4, 4)\n")
    assert load_profile(path)["weight"].kind == "linear"
