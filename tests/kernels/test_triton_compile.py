"""The Triton kernels compiled for NVIDIA GPUs (sm_80 and sm_90, to machine code with Triton's own
ptxas), without a GPU: CI has none, and the interpreter tests (test_triton*.py) run the kernels'
Python, not what the compiler makes of them. Every variant the launches use is compiled, in a
process of its own (see :mod:`tests.kernels.triton_compile_check`)."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("triton")
pytest.importorskip("triton.backends.nvidia")

from tests.conftest import REPO  # noqa: E402

CHECK = Path(__file__).with_name("triton_compile_check.py")


@pytest.fixture(scope="module")
def compiled() -> dict[str, str]:
    """Each variant's result, from one process that compiles them all."""
    done = subprocess.run([sys.executable, str(CHECK)], capture_output=True, text=True, cwd=REPO, timeout=600,
                          env={**__import__("os").environ, "PYTHONPATH": str(REPO)})
    if done.returncode != 0:
        pytest.fail(f"the compile check failed:\n{done.stderr[-4000:]}")
    results = json.loads(done.stdout.strip().splitlines()[-1])
    if any("ptxas" in result and "not found" in result.lower() for result in results.values()):
        pytest.skip("Triton's ptxas is not installed")
    return results


def test_every_kernel_variant_compiles_for_sm80_and_sm90(compiled):
    failed = {name: result for name, result in compiled.items() if result != "ok"}
    assert not failed, "\n".join(f"{name}: {result}" for name, result in failed.items())
    kernels = {name.split("-")[0] for name in compiled}
    assert kernels == {"smmf_tile", "smmf_many", "smmf_finalize", "smmf_range", "smmf_range_tile", "sm3_many",
                       "sm3_finalize", "sm3_range"}
    assert {name.rsplit("-", 1)[1] for name in compiled} == {"sm_80", "sm_90"}
