"""Every malformed option value is a usage error (exit 2): sizes, methods, objectives, devices,
formats and counts alike, for every command that takes them."""

import pytest


@pytest.mark.parametrize("args, message", [
    (["plan", "gpt2", "--budget", "abc"], "--budget: not a byte size: 'abc'"),
    (["plan", "gpt2", "--budget", "64M"], "--budget: ambiguous unit in '64M': write MiB (binary, 1 MiB = 2^20 bytes)"),
    (["plan", "gpt2", "--budget", "64MiB", "--objective", "fast"], "--objective must be one of quality"),
    (["plan", "gpt2", "--budget", "64MiB", "--methods", "adam,foo"], "--methods: unknown method 'foo'"),
    (["plan", "gpt2", "--budget", "64MiB", "--device", "tpu"], "unknown device 'tpu'"),
    (["analyze", "gpt2", "--methods", "adam,foo"], "--methods: unknown method 'foo'"),
    (["analyze", "gpt2", "--format", "xml"], "--format must be table or csv"),
    (["bench", "gpt2", "--device", "tpu"], "unknown device 'tpu'"),
    (["bench", "gpt2", "--methods", "adam,foo"], "--methods: unknown method 'foo'"),
    (["bench", "gpt2", "--memory", "64M"], "--memory: ambiguous unit"),
    (["bench", "gpt2", "--steps", "0"], "--steps and --warmup must be at least 1"),
])
def test_malformed_option_values_exit_2_with_one_line(run_memplan, tmp_path, args, message):
    result = run_memplan(*args)
    assert result.code == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("memplan: error: ") and message in lines[0], result.stderr
    assert result.stdout == "" and not (tmp_path / "plan.yaml").exists()


def test_plan_and_bench_without_a_source_agree(run_memplan):
    planned, benched = run_memplan("plan", "--budget", "1MiB"), run_memplan("bench")
    assert planned.code == benched.code == 2
    assert "run `memplan analyze SOURCE` first" in planned.stderr and "run `memplan analyze SOURCE` first" in benched.stderr
