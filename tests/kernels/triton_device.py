"""Where the Triton kernel tests run: on a CUDA GPU where there is one (the kernels compiled for
it), else on CPU tensors through Triton's interpreter.

The tests build their cases on CPU; :func:`on_device` runs a kernel call on copies of every tensor
of its arguments on :data:`DEVICE` and copies the results back, so each test reads and compares CPU
tensors either way.
"""

from __future__ import annotations

import os
from typing import Any, Callable

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")  # before the kernels are first built

DEVICE = torch.device("cuda" if torch.cuda.is_available() and os.environ.get("TRITON_INTERPRET") != "1" else "cpu")
"""The device the Triton tests run their kernels on."""


def _moved(value: Any, pairs: list[tuple[torch.Tensor, torch.Tensor]]) -> Any:
    if isinstance(value, torch.Tensor):
        copy = value.to(DEVICE)
        pairs.append((value, copy))
        return copy
    if isinstance(value, tuple) and hasattr(value, "_fields"):  # a NamedTuple such as SMMFTensor
        return type(value)(*(_moved(item, pairs) for item in value))
    if isinstance(value, (list, tuple)):
        return type(value)(_moved(item, pairs) for item in value)
    return value


def on_device(function: Callable[..., Any], *arguments: Any) -> Any:
    """``function(*arguments)`` with every tensor in ``arguments`` (inside tuples, lists and named
    tuples too) on :data:`DEVICE`; what the call wrote is copied back into the CPU tensors."""
    if DEVICE.type == "cpu":
        return function(*arguments)
    pairs: list[tuple[torch.Tensor, torch.Tensor]] = []
    result = function(*(_moved(argument, pairs) for argument in arguments))
    for original, copy in pairs:
        original.copy_(copy.cpu())
    return result
