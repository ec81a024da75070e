"""model.py discovery through the memplan command: a helper class beside the model, a model
that needs constructor arguments, and a model moved to a device at import."""

import textwrap

import pytest

HELPER_AND_MODEL = """
from torch import nn


class Block(nn.Module):
    def __init__(self, width=4):
        super().__init__()
        self.fc = nn.Linear(width, width)


class Net(nn.Module):
    def __init__(self, width=4, depth=2):
        super().__init__()
        self.blocks = nn.Sequential(*[Block(width) for _ in range(depth)])
"""


def _write(folder, text, name="model.py"):
    path = folder / name
    path.write_text(textwrap.dedent(text))
    return path


def _one_error_line(result, code):
    assert result.code == code, result.stderr
    assert "Traceback" not in result.stderr and result.stdout == ""
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("memplan: error: "), result.stderr
    return lines[0]


def test_the_model_is_found_beside_its_helper_class(run_memplan, tmp_path):
    _write(tmp_path, HELPER_AND_MODEL)
    result = run_memplan("analyze", "model.py", "--json")
    assert result.code == 0, result.stderr
    assert result.json()["totals"]["numel"] == 2 * (4 * 4 + 4)


def test_entry_passes_constructor_arguments(run_memplan, tmp_path):
    _write(tmp_path, HELPER_AND_MODEL)
    result = run_memplan("analyze", "model.py", "--entry", "Net(width=16, depth=3)", "--json")
    assert result.code == 0, result.stderr
    assert result.json()["totals"]["numel"] == 3 * (16 * 16 + 16)
    planned = run_memplan("plan", "model.py", "--entry", "Net(8)", "--budget", "1MiB", "--json")
    assert planned.code == 0, planned.stderr


def test_a_model_that_needs_arguments_says_which_and_how_to_pass_them(run_memplan, tmp_path):
    _write(tmp_path, HELPER_AND_MODEL.replace("width=4, depth=2", "width, depth=2"))
    line = _one_error_line(run_memplan("analyze", "model.py"), 2)
    assert line == "memplan: error: model.py: Net needs the argument width: pass it with --entry 'Net(width=...)'"


@pytest.mark.parametrize("entry, message", [
    ("Net(width=w)", "arguments must be Python literals"),
    ("Net(width=", "is not a name or a call with literal arguments"),
    ("Net(size=3)", "got an unexpected keyword argument 'size'"),
])
def test_a_malformed_entry_is_a_usage_error(run_memplan, tmp_path, entry, message):
    _write(tmp_path, HELPER_AND_MODEL)
    assert message in _one_error_line(run_memplan("analyze", "model.py", "--entry", entry), 2)


@pytest.mark.parametrize("moved", ["Net().to(device)", "Net().cuda()", 'Net().to("cuda")'])
def test_a_model_moved_to_a_device_at_import_is_told_about_the_meta_device(run_memplan, tmp_path, moved):
    text = HELPER_AND_MODEL + f"\nimport torch\ndevice = torch.device('cpu')\nmodel = {moved}\n"
    _write(tmp_path, text)
    line = _one_error_line(run_memplan("analyze", "model.py"), 1)
    moving_line = text.splitlines().index(f"model = {moved}") + 1
    assert line.startswith(f"memplan: error: model.py:{moving_line}: failed while importing it: "
                           f"the file moves the model")
    assert "meta device" in line and "def build_model()" in line and "--entry" in line


def test_a_model_built_in_a_function_and_moved_under_main_works(run_memplan, tmp_path):
    _write(tmp_path, HELPER_AND_MODEL + textwrap.dedent("""
        def build_model():
            return Net()


        if __name__ == "__main__":
            model = build_model().cuda()
    """))
    result = run_memplan("analyze", "model.py", "--json")
    assert result.code == 0 and result.stderr == "", result.stderr
