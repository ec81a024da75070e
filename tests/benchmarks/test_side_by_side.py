"""benchmarks/side_by_side.py: the summary's ratios, from per-process medians."""

from __future__ import annotations

import argparse
import sys

from tests.conftest import REPO

sys.path.insert(0, str(REPO / "benchmarks"))

import side_by_side  # noqa: E402


def test_the_summary_takes_medians_of_per_run_ratios(capsys) -> None:
    pairs = [({"adamw": 10.0, "smmf": 12.0, "read": 3.0}, {"adamw": 10.0, "smmf": 9.0, "read": 3.1}),
             ({"adamw": 20.0, "smmf": 22.0, "read": 6.0}, {"adamw": 20.0, "smmf": 20.0, "read": 6.2}),
             ({"adamw": 10.0, "smmf": 11.0, "read": 3.0}, {"adamw": 11.0, "smmf": 11.0, "read": 3.0})]
    args = argparse.Namespace(set="gpt2", threads=2, rounds=5, steps=3, against="HEAD~1", fresh_cache=False)
    side_by_side.report(pairs, args)
    lines = capsys.readouterr().out.splitlines()
    assert "empty numba cache" not in lines[0]
    assert "| 1 | HEAD~1 | 3 | 10 | 12 (1.20x) |" in lines
    assert "| 1 | tree | 3.1 | 10 | 9 (0.90x) |" in lines
    # revision: 1.2, 1.1, 1.1 -> 1.10; tree: 0.9, 1.0, 1.0 -> 1.00; tree / revision: 0.75, 0.91, 1.0 -> 0.91
    assert lines[-1] == "| smmf | 1.10x | 1.00x | 0.91 |"


def test_the_header_says_when_every_process_compiled_its_kernels(capsys) -> None:
    pairs = [({"adamw": 10.0, "smmf": 12.0, "read": 3.0}, {"adamw": 10.0, "smmf": 9.0, "read": 3.1})]
    args = argparse.Namespace(set="gpt2", threads=2, rounds=5, steps=3, against="HEAD~1", fresh_cache=True)
    side_by_side.report(pairs, args)
    assert capsys.readouterr().out.splitlines()[0].endswith("alternating; every process with an empty numba cache")


def test_with_fresh_caches_the_first_steps_get_their_own_table(capsys) -> None:
    first = side_by_side.FIRST
    pairs = [({"adamw": 10.0, "smmf": 12.0, "read": 3.0, first + "adamw": 50.0, first + "smmf": 12000.0},
              {"adamw": 10.0, "smmf": 9.0, "read": 3.1, first + "adamw": 40.0, first + "smmf": 9000.0}),
             ({"adamw": 10.0, "smmf": 12.0, "read": 3.0, first + "adamw": 50.0, first + "smmf": 10000.0},
              {"adamw": 10.0, "smmf": 9.0, "read": 3.1, first + "adamw": 60.0, first + "smmf": 9000.0})]
    args = argparse.Namespace(set="gpt2", threads=2, rounds=5, steps=3, against="HEAD~1", fresh_cache=True)
    side_by_side.report(pairs, args)
    lines = capsys.readouterr().out.splitlines()
    assert "| smmf | 1.20x | 0.90x | 0.75 |" in lines   # the first steps are not methods of the step table
    assert "| 1 | HEAD~1 | 0.1 | 12.0 |" in lines
    assert "| 2 | tree | 0.1 | 9.0 |" in lines
    # adamw: 0.8, 1.2 -> 1.00; smmf: 0.75, 0.9 -> 0.825
    assert lines[-1] == "| tree / HEAD~1 (median of pairs) | | 1.00 | 0.82 |"
