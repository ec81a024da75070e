"""Finding the model in a model.py: the outermost class, --entry with literal arguments, and
what a file that moves its model to a device is told."""

import textwrap
import warnings

import pytest

from memplan.errors import SourceError, UsageError
from memplan.loaders import load_profile
from memplan.loaders.python_file import parse_entry

BLOCK = """
from torch import nn

class Block(nn.Module):
    def __init__(self, dim=4):
        super().__init__()
        self.fc = nn.Linear(dim, dim)
"""


def write(tmp_path, text, name="model.py"):
    path = tmp_path / name
    path.write_text(textwrap.dedent(BLOCK) + textwrap.dedent(text))
    return path


@pytest.mark.parametrize("text", [
    # the helper class used directly
    """
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.blocks = nn.Sequential(Block(), Block())
    """,
    # through a module-level function, and a base class the model derives from
    """
    def stack(n):
        return [Block() for _ in range(n)]

    class Base(nn.Module):
        pass

    class Net(Base):
        def __init__(self):
            super().__init__()
            self.blocks = nn.Sequential(*stack(2))
    """,
])
def test_the_class_no_other_one_uses_is_the_model(tmp_path, text):
    profile = load_profile(write(tmp_path, text))
    assert [p.name for p in profile.params] == ["blocks.0.fc.weight", "blocks.0.fc.bias",
                                                "blocks.1.fc.weight", "blocks.1.fc.bias"]


def test_two_unrelated_top_classes_stay_ambiguous(tmp_path):
    path = write(tmp_path, """
    class Encoder(nn.Module):
        def __init__(self):
            super().__init__()
            self.block = Block()

    class Decoder(nn.Module):
        def __init__(self):
            super().__init__()
            self.block = Block()
    """)
    with pytest.raises(SourceError, match=r"several nn.Module classes \(Encoder, Decoder\); pick one with --entry"):
        load_profile(path)


NEEDS_ARGUMENTS = """
class Net(nn.Module):
    def __init__(self, width, depth=2, *, bias=True):
        super().__init__()
        self.blocks = nn.Sequential(*[Block(width) for _ in range(depth)])
        self.head = nn.Linear(width, 1, bias=bias)
"""


@pytest.mark.parametrize("entry, numel", [
    ("Net(width=8)", 2 * (8 * 8 + 8) + 8 + 1),
    ("Net(8, depth=1, bias=False)", (8 * 8 + 8) + 8),
    ("  Net( 3 , 3 ) ", 3 * (3 * 3 + 3) + 3 + 1),
    ("Block", 4 * 4 + 4),
])
def test_entry_passes_literal_arguments(tmp_path, entry, numel):
    profile = load_profile(write(tmp_path, NEEDS_ARGUMENTS), entry=entry)
    assert profile.totals()["numel"] == numel


def test_a_class_that_needs_arguments_names_them_and_the_entry_that_passes_them(tmp_path):
    path = write(tmp_path, NEEDS_ARGUMENTS)
    with pytest.raises(UsageError) as error:
        load_profile(path)
    assert str(error.value) == f"{path}: Net needs the argument width: pass it with --entry 'Net(width=...)'"
    with pytest.raises(UsageError, match=r"needs the arguments width, dim: pass them with --entry "
                                         r"'make\(depth=3, width=\.\.\., dim=\.\.\.\)'"):
        load_profile(write(tmp_path, "def make(width, dim, depth=2):\n    return Block(dim)\n"), entry="make(depth=3)")


@pytest.mark.parametrize("entry, message", [
    ("Net(widht=8)", r"Net\(width, depth=2, \*, bias=True\): got an unexpected keyword argument 'widht'"),
    ("Net(8, 2, True)", "too many positional arguments"),
    ("Net(width=size)", "arguments must be Python literals"),
    ("Net(width=__import__('os').getcwd())", "arguments must be Python literals"),
    ("Net(**config)", r"no \* or \*\*"),
    ("Net(", "is not a name or a call"),
    ("models.Net", "is not a name or a call"),
    ("Net()()", "is not a name or a call"),
])
def test_a_malformed_entry_is_a_usage_error(tmp_path, entry, message):
    with pytest.raises(UsageError, match=message):
        load_profile(write(tmp_path, NEEDS_ARGUMENTS), entry=entry)


def test_entry_arguments_are_read_never_evaluated():
    assert parse_entry("Net(1, 'a', (2, 3), d={'k': [None, True]}, e=-1.5e3)") == (
        "Net", (1, "a", (2, 3)), {"d": {"k": [None, True]}, "e": -1500.0})
    with pytest.raises(UsageError):
        parse_entry("Net(x=open('/etc/passwd').read())")


@pytest.mark.parametrize("line", [
    'model = Block().to(torch.device("cpu"))',
    "model = Block()\nweights = model.fc.weight.detach().numpy()",
    "model = Block()\nprint(model.fc.weight.sum().item())",
])
def test_moving_or_reading_the_model_at_import_explains_the_meta_device(tmp_path, line):
    path = write(tmp_path, "import torch\n" + line + "\n")
    with pytest.raises(SourceError) as error:
        load_profile(path)
    message = str(error.value)
    assert message.startswith(f"{path}:") and "failed while importing it: the file moves the model" in message
    assert "meta device" in message and "def build_model()" in message and "--entry" in message
    assert "to_empty" not in message and "\n" not in message


def test_building_on_a_real_device_does_not_blame_meta(tmp_path):
    from memplan.loaders.python_file import build_model_from_file

    path = write(tmp_path, "import torch\nmodel = Block().to(torch.device('cpu'))\n")
    assert build_model_from_file(path, device="cpu").fc.weight.device.type == "cpu"
    bad = write(tmp_path, "def build_model():\n    raise RuntimeError('no meta here')\n", name="bad.py")
    with pytest.raises(SourceError, match="RuntimeError: no meta here$"):
        build_model_from_file(bad, device="cpu")


def test_loading_weights_at_import_still_lists_the_parameters(tmp_path):
    import torch

    torch.save({"fc.weight": torch.ones(4, 4), "fc.bias": torch.ones(4)}, tmp_path / "weights.pt")
    path = write(tmp_path, f"""
    import torch
    model = Block()
    model.load_state_dict(torch.load({str(tmp_path / 'weights.pt')!r}, weights_only=True))
    """)
    with warnings.catch_warnings():
        warnings.simplefilter("error")   # torch's no-op-copy warning per parameter is silenced
        assert [p.name for p in load_profile(path).params] == ["fc.weight", "fc.bias"]
