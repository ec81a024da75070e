"""Which implementation runs a step: the ``impl`` option resolved against what is installed.

``eager`` is the reference (torch ops over cache-sized blocks); ``compiled`` the CPU JIT kernels
(numba); ``triton`` the Triton kernels (CUDA tensors); ``auto`` picks, among the kernels a
method prefers (those measured faster than its eager step; see ``auto_kernels`` on
:class:`memplan.methods.base.Method`), ``compiled`` for CPU tensors when numba imports,
``triton`` for CUDA tensors when Triton imports, else ``eager``. A
technology that is asked for but cannot run falls back to ``eager`` with one warning per
technology and process.
"""

from __future__ import annotations

import importlib
import warnings
from functools import cache

import torch

from memplan.methods.base import KERNEL_IMPLEMENTATIONS

EAGER, COMPILED, TRITON, AUTO = KERNEL_IMPLEMENTATIONS

_WARNED: set[str] = set()


@cache
def _importable(module: str) -> bool:
    try:
        importlib.import_module(module)
    except ImportError:
        return False
    return True


def compiled_available() -> bool:
    """Whether the CPU JIT (numba) can be imported."""
    return _importable("numba")


def triton_available() -> bool:
    """Whether Triton can be imported and a CUDA device is present."""
    return torch.cuda.is_available() and _importable("triton")


def resolve(impl: str, device: torch.device, kernels: tuple[str, ...] = (COMPILED, TRITON),
            preferred: tuple[str, ...] | None = None) -> str:
    """The implementation that runs for ``impl`` on ``device``: eager, compiled or triton.

    ``kernels`` are the technologies the optimizer has kernels for; any other falls back to eager
    (a warning for an explicit choice, silently for ``auto``). ``auto`` picks among ``preferred``
    (default: all of ``kernels``): those measured faster than the eager step. ``impl`` values
    other than these four (a library's implementation) are returned unchanged.
    """
    if impl == AUTO:
        preferred = kernels if preferred is None else preferred
        if device.type == "cpu" and COMPILED in preferred and compiled_available():
            return COMPILED
        if device.type == "cuda" and TRITON in preferred and triton_available():
            return TRITON
        return EAGER
    if impl in (COMPILED, TRITON) and impl not in kernels:
        return _fall_back(impl, "this optimizer has no such kernels yet")
    if impl == COMPILED and (device.type != "cpu" or not compiled_available()):
        return _fall_back(impl, "numba is not installed (pip install 'memplan[kernels]')"
                          if device.type == "cpu" else f"it runs on CPU tensors, not {device.type}")
    if impl == TRITON and (device.type != "cuda" or not triton_available()):
        return _fall_back(impl, "triton is not installed" if device.type == "cuda"
                          else f"its kernels run on CUDA tensors, not {device.type}")
    return impl


def _fall_back(impl: str, reason: str) -> str:
    if impl not in _WARNED:
        _WARNED.add(impl)
        warnings.warn(f"impl={impl}: {reason}; using the eager implementation", RuntimeWarning, stacklevel=4)
    return EAGER
