"""Host-side tables of the multi-tensor Triton launches (:func:`memplan.kernels.smmf_triton.smmf_many`,
:func:`memplan.kernels.sm3_triton.sm3_many`): which tensor and block each program steps, and the
upload of a table to the device."""

from __future__ import annotations

import numpy as np
import torch

TRITON_DTYPES = {torch.float32: "float32", torch.float64: "float64", torch.bfloat16: "bfloat16",
                 torch.float16: "float16"}
"""The weights dtypes the multi-tensor Triton steps take, by ``triton.language``'s names (their
math is fp32, float64's float64)."""


def program_table(blocks: np.ndarray) -> np.ndarray:
    """int32 (sum(blocks), 2): tensor t's blocks 0 ... blocks[t] - 1, one row per program."""
    tensor = np.repeat(np.arange(len(blocks), dtype=np.int64), blocks)
    first_program = np.cumsum(blocks) - blocks
    block = np.arange(len(tensor), dtype=np.int64) - np.repeat(first_program, blocks)
    return np.stack([tensor, block], axis=1).astype(np.int32)


def import_triton_helpers(module_globals: dict) -> None:
    """Put the kernels' shared jit helpers (:mod:`memplan.kernels.triton_entries`, which imports
    Triton) into a kernel module's globals as ``_entries``: a kernel's calls are looked up there by
    Triton's compiler and by its interpreter alike, not among its factory's locals. Each kernel
    factory calls this before it defines its kernels."""
    from memplan.kernels import triton_entries

    module_globals["_entries"] = triton_entries


def upload(array: np.ndarray, device: torch.device) -> torch.Tensor:
    """``array`` on ``device``; to a CUDA device through pinned memory, without waiting (a copy from
    pageable memory would wait for the stream's queued work)."""
    host = torch.from_numpy(np.ascontiguousarray(array))
    if device.type != "cuda":
        return host.to(device)
    return host.pin_memory().to(device, non_blocking=True)


__all__ = ["TRITON_DTYPES", "import_triton_helpers", "program_table", "upload"]
