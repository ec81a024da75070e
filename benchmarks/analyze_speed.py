"""Issue targets for `memplan analyze`: wall time and peak memory of the real command.

    python benchmarks/analyze_speed.py            # prints a Markdown table

Each case runs the installed `memplan` command in a fresh process RUNS times and reports the
median and worst wall time; peak RSS is measured in one more run, inside its own parent
process, so that earlier children do not count (ru_maxrss of RUSAGE_CHILDREN is a maximum).
"""

from __future__ import annotations

import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RUNS = 5

CASES = [
    ("bundled llama-7b profile (torch never imported)", ["analyze", "llama-7b", "--json"], "< 1 s"),
    ("model.py building LlamaForCausalLM on meta", ["analyze", str(REPO / "examples" / "llama_7b.py"), "--json"],
     "< 5 s and < 1024 MiB"),
    ("python -c 'import torch' (reference)", None, "-"),
]


def command_for(args: list[str] | None) -> list[str]:
    """The memplan command line, or the bare torch import used as a reference."""
    if args is None:
        return [sys.executable, "-c", "import torch"]
    return [shutil.which("memplan") or "memplan", *args]


def wall_seconds(command: list[str], workdir: str) -> float:
    """Wall time of one run of ``command``."""
    start = time.perf_counter()
    subprocess.run(command, cwd=workdir, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - start


def peak_rss_mib(command: list[str], workdir: str) -> float:
    """Peak resident memory of one run of ``command``, in MiB."""
    probe = (
        "import resource, subprocess, sys\n"
        f"subprocess.run({command!r}, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=True)\n"
        "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)\n"
    )
    done = subprocess.run([sys.executable, "-c", probe], cwd=workdir, capture_output=True, text=True, check=True)
    return int(done.stdout.strip()) / 1024


def main() -> None:
    print(f"python {sys.version.split()[0]}, {os.cpu_count()} cpus, {RUNS} runs each\n")
    print("| case | median wall (s) | max wall (s) | peak RSS (MiB) | target |")
    print("|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as workdir:
        for label, args, target in CASES:
            command = command_for(args)
            walls = [wall_seconds(command, workdir) for _ in range(RUNS)]
            peak = peak_rss_mib(command, workdir)
            print(f"| {label} | {statistics.median(walls):.2f} | {max(walls):.2f} | {peak:.0f} | {target} |")


if __name__ == "__main__":
    main()
