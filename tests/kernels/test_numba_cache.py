"""A new process loads the compiled kernels from numba's on-disk cache rather than compiling them."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]

STEP_EVERY_METHOD = """
import json
import threading

import torch
from numba.core.dispatcher import Dispatcher

from memplan.kernels import jit
from memplan.optim import SM3, SMMF, ETInfinity, ExtremeTensoring

children = []
compile_in_a_child = jit._compile_child


def spy(kernel, signature):
    children.append([kernel.py_func.__module__.rsplit(".", 1)[-1] + "." + kernel.py_func.__name__,
                     threading.current_thread().name.startswith("memplan-compile")])
    compile_in_a_child(kernel, signature)


jit._compile_child = spy

params = [torch.nn.Parameter(torch.randn(64, 32))]
params[0].grad = torch.randn(64, 32)
for optimizer in (SMMF(params, impl="compiled"), SM3(params, momentum=0.0, impl="compiled"),
                  ExtremeTensoring(params, index="et2", impl="compiled"), ETInfinity(params, impl="compiled")):
    optimizer.step()

from memplan.kernels import extreme_numba, sm3_numba, smmf_numba

stats = {}
for module in (smmf_numba, sm3_numba, extreme_numba):
    for name, kernel in vars(module).items():
        if isinstance(kernel, Dispatcher):
            stats[f"{module.__name__.rsplit('.', 1)[-1]}.{name}"] = [sum(kernel.stats.cache_hits.values()),
                                                                     sum(kernel.stats.cache_misses.values())]
print(json.dumps({"stats": stats, "children": children}))
"""
"""Steps each method's compiled kernels once and prints, per numba kernel, its cache hits and misses,
and the kernels compiled in child processes (with whether :func:`memplan.kernels.jit.compile_ahead`
started the child)."""


CALLED_FROM_PYTHON = {"smmf_numba.walk", "smmf_numba.combine", "sm3_numba.walk", "sm3_numba.combine",
                      "extreme_numba.square_walk", "extreme_numba.finish_sums", "extreme_numba.update_walk",
                      "extreme_numba.infinity_squared_norm", "extreme_numba.infinity_scale"}
"""The kernels that a step of SMMF, SM3, ET2 and ET-infinity calls from Python (the others are
called, and compiled, from inside them)."""


def _step_in_new_process(cache: Path) -> tuple[dict[str, list[int]], list[list]]:
    result = subprocess.run([sys.executable, "-c", STEP_EVERY_METHOD], cwd=REPO, capture_output=True, text=True,
                            env={**os.environ, "NUMBA_CACHE_DIR": str(cache)}, timeout=300)
    assert result.returncode == 0, result.stderr
    printed = json.loads(result.stdout.splitlines()[-1])
    return printed["stats"], printed["children"]


def _files(directory: Path) -> dict[str, tuple[int, int]]:
    return {str(path.relative_to(directory)): (path.stat().st_size, path.stat().st_mtime_ns)
            for path in directory.rglob("*") if path.is_file()}


@pytest.mark.slow
def test_a_new_process_loads_every_kernel_from_the_cache(tmp_path):
    # the first process finds the cache empty: child processes compile the kernels it calls, and it loads
    # them from the cache, compiling nothing itself (the code it would compile runs slower: see
    # memplan.kernels.jit.compile_in_child)
    first, children = _step_in_new_process(tmp_path)
    assert {name for name, (_, misses) in first.items() if misses} == set(), first
    assert {name for name, (hits, _) in first.items() if hits} == CALLED_FROM_PYTHON, first
    # one child per kernel and dtype; a step's kernels all compiled ahead (the signatures it foresaw
    # were the ones called: a wrong one would have started another child when the kernel was called)
    assert {name for name, ahead in children if ahead} == CALLED_FROM_PYTHON, children
    assert [name for name, ahead in children if not ahead] == [], children
    assert len(children) == len({name for name, _ in children}), children
    written = _files(tmp_path)
    assert written

    loaded, children = _step_in_new_process(tmp_path)
    assert {name for name, (_, misses) in loaded.items() if misses} == set(), loaded
    assert {name for name, (hits, _) in loaded.items() if hits} == CALLED_FROM_PYTHON, loaded
    assert children == []
    assert _files(tmp_path) == written   # nothing compiled, so nothing saved
