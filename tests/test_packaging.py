"""The package list in pyproject.toml: a wheel (a non-editable install) holds every module."""

from pathlib import Path

import pytest

tomllib = pytest.importorskip("tomllib")   # Python 3.11+

ROOT = Path(__file__).resolve().parent.parent


def test_every_package_of_memplan_is_listed_for_the_wheel():
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    listed = set(config["packages"])
    folders = {"memplan." + ".".join(path.parent.relative_to(ROOT / "memplan").parts)
               for path in (ROOT / "memplan").rglob("__init__.py") if path.parent != ROOT / "memplan"}
    assert folders | {"memplan", "memplan.cli", "memplan.profiles"} == listed
    assert config["package-dir"] == {"memplan.cli": "cli", "memplan.profiles": "profiles"}
