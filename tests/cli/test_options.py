"""cli/options.py: every command spells and explains a shared option the same, and one default SOURCE."""

import re

import pytest
import torch

from memplan.cli.options import DEFAULT_PROFILE_PATH, default_source
from memplan.errors import UsageError

SHARED = {
    "--json": ["analyze", "plan", "bench", "show", "profiles"],
    "--methods": ["analyze", "plan", "bench"],
    "--device": ["plan", "bench"],
    "--device-profile": ["plan", "bench"],
    "--entry": ["analyze", "plan"],
    "--freeze": ["analyze", "plan"],
    "--strip-prefix": ["analyze", "plan"],
    "--world-size": ["analyze", "plan"],
    "--sharding": ["analyze", "plan"],
}


def _option_help(help_text: str, option: str) -> str:
    """The help of ``option`` in a command's --help box, its wrapped lines joined, the default-list
    part of --methods left out (each command has its own)."""
    lines = [line.strip("│ ") for line in help_text.splitlines()]
    for index, line in enumerate(lines):
        if re.match(rf"{re.escape(option)}\s", line):
            text = line
            for following in lines[index + 1:]:
                if following.startswith("-") or not following or following.startswith("╰"):
                    break
                text += " " + following
            text = re.sub(r"\s+", " ", re.sub(r"^\S+(\s+-\w)?\s+<[^>]+>", "", text)).strip()
            return re.sub(r"to \w+, comma-separated \(default: [^)]*\)", "comma-separated", text)
    raise AssertionError(f"{option} not in the help")


@pytest.mark.parametrize("option, commands", SHARED.items(), ids=list(SHARED))
def test_a_shared_option_reads_the_same_in_every_command(run_memplan, option, commands):
    helps = {command: _option_help(run_memplan(command, "--help").stdout, option) for command in commands}
    assert len(set(helps.values())) == 1, helps


@pytest.mark.parametrize("command", [["plan", "--budget", "1MiB"], ["bench", "--methods", "sgd"]])
def test_no_source_and_no_analyzed_profile_is_one_usage_error(run_memplan, command):
    result = run_memplan(*command)
    assert result.code == 2 and result.stdout == ""
    (line,) = result.stderr.strip().splitlines()
    assert line == (f"memplan: error: no SOURCE given and no {DEFAULT_PROFILE_PATH} here: name a source "
                    f"(e.g. memplan {command[0]} gpt2) or run `memplan analyze SOURCE` first")


def test_plan_and_bench_default_to_the_analyzed_profile(run_memplan, tmp_path):
    assert run_memplan("analyze", "resnet18-cifar", "--freeze", "^layer").code == 0
    planned = run_memplan("plan", "--budget", "1MiB", "--json", "--out", "p.yaml")
    assert planned.code == 0, planned.stderr
    assert not any(entry["name"].startswith("layer") for entry in planned.json()["parameters"])


def test_default_source_prefers_the_given_source(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert default_source("gpt2", "plan") == "gpt2"
    with pytest.raises(UsageError, match="name a source") as raised:
        default_source(None, "plan")
    assert raised.value.exit_code == 2
    DEFAULT_PROFILE_PATH.parent.mkdir()
    DEFAULT_PROFILE_PATH.write_text("")
    assert default_source(None, "bench") == str(DEFAULT_PROFILE_PATH)


def test_plan_strips_a_checkpoint_prefix(run_memplan, tmp_path):
    torch.save({"module.fc.weight": torch.zeros(3, 2)}, tmp_path / "ddp.pt")
    result = run_memplan("plan", tmp_path / "ddp.pt", "--strip-prefix", "module.", "--budget", "1KiB", "--json")
    assert result.code == 0, result.stderr
    assert [entry["name"] for entry in result.json()["parameters"]] == ["fc.weight"]
