"""SM3's one-pass step on a flat range of its cover view, as a Triton kernel (CUDA tensors;
tested on CPU tensors under ``TRITON_INTERPRET=1``).

The same update as :mod:`memplan.kernels.sm3_cpu`. Each program takes ``BLOCK`` consecutive
elements; an element's index on every axis comes from its flat position and the axis strides
(the cover has at most :data:`MAX_AXES` axes), and the new slice maxima go to the output vectors
by atomic max (exact: max is order-free, and nu >= 0).
"""

from __future__ import annotations

import math
from functools import cache

import torch

from memplan.kernels.sm3_cpu import SM3Scalars

BLOCK = 1024
MAX_AXES = 8


@cache
def _kernel():
    import triton
    import triton.language as tl

    @triton.jit
    def sm3_kernel(weights, grads, buffer, accumulators, maxima, dims, strides, offsets, start, length, lr, eps,
                   momentum, dampening, decay, coupled, grad_sign, AXES: tl.constexpr, MODE: tl.constexpr,
                   WITH_BUFFER: tl.constexpr, BLOCK: tl.constexpr):
        program = tl.program_id(0)
        positions = program * BLOCK + tl.arange(0, BLOCK)
        inside = positions < length
        element = start + positions
        weight = tl.load(weights + positions, mask=inside, other=0.0)
        compute = weight.dtype if weight.dtype == tl.float64 else tl.float32
        weight = weight.to(compute)
        gradient = tl.load(grads + positions, mask=inside, other=0.0).to(compute) * grad_sign + coupled * weight
        nu = tl.full((BLOCK,), float("inf"), compute)
        for axis in tl.static_range(AXES):
            index = (element // tl.load(strides + axis)) % tl.load(dims + axis)
            slot = tl.load(offsets + axis) + index
            nu = tl.minimum(nu, tl.load(accumulators + slot, mask=inside, other=0.0).to(compute))
        if MODE == 2:  # SM3-I's first pass: slice maxima of G^2 only
            square = gradient * gradient
            for axis in tl.static_range(AXES):
                slot = tl.load(offsets + axis) + (element // tl.load(strides + axis)) % tl.load(dims + axis)
                tl.atomic_max(maxima + slot, square.to(tl.float32), mask=inside)
        else:
            if MODE == 0:
                nu = nu + gradient * gradient
                for axis in tl.static_range(AXES):
                    slot = tl.load(offsets + axis) + (element // tl.load(strides + axis)) % tl.load(dims + axis)
                    tl.atomic_max(maxima + slot, nu.to(tl.float32), mask=inside)
            scaled = gradient * (1.0 / tl.sqrt(nu + eps))
            if WITH_BUFFER:
                moving = tl.load(buffer + positions, mask=inside, other=0.0) * momentum + dampening * scaled
                tl.store(buffer + positions, moving, mask=inside)
                updated = weight * decay - lr * moving
            else:
                updated = weight * decay - lr * scaled
            tl.store(weights + positions, updated.to(weights.dtype.element_ty), mask=inside)

    return sm3_kernel


def _launch(weights, grads, start, view, accumulators, outputs, buffer, scalars, mode) -> None:
    length = weights.numel()
    if length == 0:
        return
    if len(view) > MAX_AXES:
        raise ValueError(f"the Triton SM3 kernel takes covers of at most {MAX_AXES} axes, got {len(view)}")
    device = weights.device
    dims = torch.tensor(view, dtype=torch.int64, device=device)
    strides = torch.tensor([math.prod(view[axis + 1:]) for axis in range(len(view))], dtype=torch.int64, device=device)
    offsets = torch.tensor([sum(view[:axis]) for axis in range(len(view))], dtype=torch.int64, device=device)
    stacked = torch.cat([accumulator.reshape(-1) for accumulator in accumulators])
    maxima = torch.cat([output.reshape(-1) for output in outputs]) if outputs is not None else stacked
    _kernel()[(-(-length // BLOCK),)](
        weights, grads, weights if buffer is None else buffer, stacked, maxima, dims, strides, offsets, start, length,
        scalars.lr, scalars.eps, scalars.momentum, 1.0 - scalars.momentum, scalars.decay, scalars.coupled_decay,
        scalars.grad_sign, AXES=len(view), MODE=mode, WITH_BUFFER=buffer is not None, BLOCK=BLOCK)
    if outputs is not None:
        for output, piece in zip(outputs, maxima.split(list(view))):
            output.view(-1).copy_(piece)


def sm3_range(weights: torch.Tensor, grads: torch.Tensor, start: int, view: tuple[int, ...],
              accumulators: list[torch.Tensor], new_maxima: list[torch.Tensor] | None,
              buffer: torch.Tensor | None, scalars: SM3Scalars) -> None:
    """The Triton counterpart of :func:`memplan.kernels.sm3_cpu.sm3_range` (same arguments)."""
    _launch(weights, grads, start, view, accumulators, new_maxima, buffer, scalars, 0 if new_maxima is not None else 1)


def sm3_square_maxima_range(weights: torch.Tensor, grads: torch.Tensor, start: int, view: tuple[int, ...],
                            maxima: list[torch.Tensor], scalars: SM3Scalars) -> None:
    """The Triton counterpart of :func:`memplan.kernels.sm3_cpu.sm3_square_maxima_range`."""
    _launch(weights, grads, start, view, maxima, maxima, None, scalars, 2)


__all__ = ["sm3_range", "sm3_square_maxima_range"]
