"""A method's knowledge lives in memplan/methods/ and nowhere else.

Outside that package no module may compare a method name to a string literal, key a dict by
one, index by one or list them for a membership test: such code would have to be edited for
every new family and would fail late for a missed one.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from memplan.methods import METHODS
from tests.conftest import REPO

OUTSIDE_METHODS = sorted(
    path for folder in ("memplan", "cli") for path in (REPO / folder).rglob("*.py")
    if (REPO / "memplan" / "methods") not in path.parents
)


def names_a_method(node: ast.AST) -> bool:
    """A string constant that is a registered method name, or a spec of one (``smmf:...``)."""
    return isinstance(node, ast.Constant) and isinstance(node.value, str) \
        and node.value.partition(":")[0] in METHODS


def method_literals(node: ast.AST) -> list[ast.AST]:
    """The method-name constants ``node`` is or holds directly (a tuple, list or set of them)."""
    if isinstance(node, (ast.Tuple, ast.List, ast.Set)):
        return [element for element in node.elts if names_a_method(element)]
    return [node] if names_a_method(node) else []


def offending_lines(path: Path, root: Path = REPO) -> list[str]:
    """``path:line: code`` (relative to ``root``) for every comparison with, dict key of, or
    index by a method name, in line order."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    found: list[ast.AST] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Compare):
            for operand in (node.left, *node.comparators):
                found += method_literals(operand)
        elif isinstance(node, ast.Dict):
            found += [key for key in node.keys if key is not None and names_a_method(key)]
        elif isinstance(node, ast.Subscript):
            found += method_literals(node.slice)
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "get":
            found += [argument for argument in node.args[:1] if names_a_method(argument)]
    lines = path.read_text(encoding="utf-8").splitlines()
    return [f"{path.relative_to(root)}:{node.lineno}: {lines[node.lineno - 1].strip()}"
            for node in sorted(found, key=lambda node: (node.lineno, node.col_offset))]


@pytest.mark.parametrize("path", OUTSIDE_METHODS, ids=lambda path: str(path.relative_to(REPO)))
def test_no_module_outside_methods_branches_on_a_method_name(path):
    assert offending_lines(path) == []


def test_the_check_finds_what_it_looks_for(tmp_path):
    """Each form the check forbids is found, so the test above can fail."""
    sample = tmp_path / "sample.py"
    sample.write_text('if spec.name == "smmf":\n    pass\n'
                      'x = name in ("adam", "adamw")\n'
                      'rates = {"sm3": 0.1}\n'
                      'y = priors["et_inf"]\n'
                      'z = table.get("adafactor:beta1=0.9")\n'
                      'fine = build("adam", params)\n')
    found = [int(line.split(":")[1]) for line in offending_lines(sample, root=tmp_path)]
    assert found == [1, 3, 3, 4, 5, 6]


def test_the_documented_learning_rate_ratios_are_the_methods_defaults():
    import re

    from memplan.methods import METHODS
    from tests.conftest import REPO

    text = (REPO / "docs" / "methods.md").read_text()
    section = text[text.index("## Learning rates relative to Adam's"):]
    documented = {}
    for names, ratio in re.findall(r"^\| ([a-z0-9_, ]+) \| ([\d.]+) \|", section, re.M):
        for name in names.split(", "):
            documented[name] = float(ratio)
    assert documented == {name: method.lr_ratio for name, method in METHODS.items()}


def test_every_calibrated_kernel_key_names_the_kernel_its_spec_runs():
    """``memplan bench --calibrate`` times each method's kernel variants; a census finds the rate
    again under the key the spec's options give."""
    from memplan.methods import METHODS, parse_spec

    keys = []
    for method in METHODS.values():
        for key in method.fused_kernel_variants():
            spec = parse_spec(f"{key}{',' if ':' in key else ':'}impl=compiled")
            assert method.fused_kernel(method.resolve(spec)) == key
            keys.append(key)
    assert {"smmf", "smmf:beta1=none", "smmf:sign_bits=8", "sm3", "sm3:momentum=0", "et2", "et_inf"} <= set(keys)
    smmf = METHODS["smmf"]
    assert smmf.fused_kernel(smmf.resolve(parse_spec("smmf:beta1=none,sign_bits=8,impl=compiled"))) == "smmf:beta1=none"
    assert smmf.fused_kernel(smmf.resolve(parse_spec("smmf:impl=eager"))) is None
    assert METHODS["adam"].fused_kernel(METHODS["adam"].resolve(parse_spec("adam:impl=fused"))) is None


@pytest.mark.parametrize("device_kind,module", [("cpu", "numba"), ("cuda", "triton")])
def test_auto_is_counted_as_the_kernel_it_runs_on_each_device(device_kind, module, monkeypatch):
    """``impl=auto`` runs the compiled kernel on CPU (where numba imports) and the Triton one on
    CUDA (where Triton imports); the census counts that step, and ET, which has no Triton kernel,
    stays an eager step on CUDA."""
    import importlib.util

    from memplan.census import method_census
    from memplan.methods import METHODS, parse_spec

    smmf, et2 = METHODS["smmf"], METHODS["et2"]
    auto = smmf.resolve(parse_spec("smmf:impl=auto"))
    installed = importlib.util.find_spec
    for present in (True, False):
        monkeypatch.setattr(importlib.util, "find_spec",
                            lambda name, *rest: (installed("numpy") if present else None) if name == module
                            else installed(name, *rest))
        assert smmf.step_structure(auto, device_kind) == ("fused" if present else "per_parameter")
        census = method_census("smmf:impl=auto", [((64, 48), "float32")], 0, device_kind)
        assert [key for key, _, _ in census.fused] == (["smmf"] if present else [])
        expected = "fused" if present and device_kind == "cpu" else "per_parameter"
        assert et2.step_structure(et2.resolve(parse_spec("et2:impl=auto")), device_kind) == expected
