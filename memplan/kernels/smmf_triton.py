"""SMMF's one-pass step on a flat range, as a Triton kernel (CUDA tensors; tested on CPU tensors
under ``TRITON_INTERPRET=1``).

The same update as :mod:`memplan.kernels.smmf_cpu`. Each program takes ``BLOCK`` consecutive
elements of the range (a multiple of 8, so it owns whole packed sign bytes: it reads them, and
writes the new ones packed in registers, one bit position at a time, without a reduction); the row and column sums go to the output vectors by
atomic adds (fp32; their order, hence the last bits of the sums, is not deterministic). No host
synchronisation: every scalar is a kernel argument.
"""

from __future__ import annotations

from functools import cache

import torch

from memplan.kernels.smmf_cpu import SMMFScalars

BLOCK = 1024
SIGN_MODES = {None: 0, torch.uint8: 1, torch.bool: 8}


@cache
def _kernel():
    import triton
    import triton.language as tl

    @triton.jit
    def smmf_kernel(weights, grads, signs, row_v, col_v, row_m, col_m, new_row_v, new_col_v, new_row_m, new_col_m,
                    start, length, cols, step_size, eps, decay, coupled, grad_sign,
                    SIGN_MODE: tl.constexpr, BLOCK: tl.constexpr):
        program = tl.program_id(0)
        byte = program * (BLOCK // 8) + tl.arange(0, BLOCK // 8)
        if SIGN_MODE == 1:
            old_bytes = tl.load(signs + byte, mask=byte < (length + 7) // 8, other=0).to(tl.int32)
        new_bytes = tl.full((BLOCK // 8,), 0, tl.int32)  # tl.full: a builtin (tl.zeros is a jit function)
        for bit in tl.static_range(8):  # element 8 b + bit of every byte b of the block: no reduction needed
            offsets = byte * 8 + bit
            inside = offsets < length
            element = start + offsets
            row = element // cols
            col = element % cols
            weight = tl.load(weights + offsets, mask=inside, other=0.0)
            compute = weight.dtype if weight.dtype == tl.float64 else tl.float32
            weight = weight.to(compute)
            gradient = tl.load(grads + offsets, mask=inside, other=0.0).to(compute) * grad_sign + coupled * weight
            second = gradient * gradient + (tl.load(row_v + row, mask=inside, other=0.0)
                                            * tl.load(col_v + col, mask=inside, other=0.0))
            if SIGN_MODE == 0:
                moment = gradient
            else:
                if SIGN_MODE == 1:
                    positive = ((old_bytes >> bit) & 1) != 0
                else:
                    positive = tl.load(signs + offsets, mask=inside, other=0).to(tl.int32) != 0
                scale = tl.load(row_m + row, mask=inside, other=0.0)
                moment = gradient + tl.where(positive, scale, -scale) * tl.load(col_m + col, mask=inside, other=0.0)
            updated = weight * decay + step_size * (moment / (tl.sqrt(second) + eps))
            tl.store(weights + offsets, updated.to(weights.dtype.element_ty), mask=inside)
            tl.atomic_add(new_row_v + row, second, mask=inside)
            tl.atomic_add(new_col_v + col, second, mask=inside)
            if SIGN_MODE != 0:
                now_positive = (moment > 0) & inside
                magnitude = tl.abs(moment)
                tl.atomic_add(new_row_m + row, magnitude, mask=inside)
                tl.atomic_add(new_col_m + col, magnitude, mask=inside)
                if SIGN_MODE == 1:
                    new_bytes = new_bytes | (now_positive.to(tl.int32) << bit)
                else:
                    tl.store(signs + offsets, now_positive.to(signs.dtype.element_ty), mask=inside)
        if SIGN_MODE == 1:
            tl.store(signs + byte, new_bytes.to(tl.uint8), mask=byte < (length + 7) // 8)

    return smmf_kernel


def smmf_range(weights: torch.Tensor, grads: torch.Tensor, signs: torch.Tensor | None, start: int, cols: int,
               scaled_v: tuple[torch.Tensor, torch.Tensor], scaled_m: tuple[torch.Tensor, torch.Tensor] | None,
               new_v: tuple[torch.Tensor, torch.Tensor], new_m: tuple[torch.Tensor, torch.Tensor] | None,
               scalars: SMMFScalars) -> None:
    """The Triton counterpart of :func:`memplan.kernels.smmf_cpu.smmf_range` (same arguments;
    bool signs are stored as one byte each, 0 or 1). fp32 math for fp32 and narrower weights,
    float64 for float64 (with fp32 scalars)."""
    length = weights.numel()
    if length == 0:
        return
    mode = SIGN_MODES[None if signs is None else signs.dtype]
    sign_storage = weights if signs is None else signs.view(-1)
    if mode == 8:
        sign_storage = sign_storage.view(torch.uint8)
    row_m, col_m = scaled_m if scaled_m is not None else scaled_v
    new_row_m, new_col_m = new_m if new_m is not None else new_v
    grid = (-(-length // BLOCK),)
    _kernel()[grid](weights, grads, sign_storage, scaled_v[0], scaled_v[1], row_m, col_m, new_v[0], new_v[1],
                    new_row_m, new_col_m, start, length, cols, scalars.step_size, scalars.eps, scalars.decay,
                    scalars.coupled_decay, scalars.grad_sign, SIGN_MODE=mode, BLOCK=BLOCK)


__all__ = ["smmf_range"]
