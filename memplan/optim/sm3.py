"""SM3 (Anil, Gupta, Koren & Singer, 2019), variants I and II, as in ALGORITHMS.md.

One accumulator per slice of every axis of a cover view (the parameter's natural shape, or
any tensor index given per parameter). With mu from the previous step::

    SM3-II:  nu = min_i mu_i[i_i] + G^2;  W <- W - lr G / sqrt(nu + eps);  mu_i[j] = max over slice of nu
    SM3-I:   mu_i[j] += max over slice of G^2;  nu = min_i mu_i[i_i];  W <- W - lr G / sqrt(nu + eps)

With ``momentum`` > 0: m <- momentum m + (1 - momentum) G / sqrt(nu + eps), W <- W - lr m; the
buffer exists only then. SM3-II takes one pass over a parameter in blocks (the new maxima go to
small per-axis vectors until the pass ends); SM3-I takes two (maxima, then the update).
"""

from __future__ import annotations

import functools
from typing import Any, Iterable, Mapping

import torch

from memplan.kernels.select import COMPILED, EAGER, TRITON, resolve
from memplan.methods.sm3 import SM3_METHOD
from memplan.optim.base import (DEFAULT_CHUNK_BYTES, LayoutSource, MemplanOptimizer, block_budget,
                                block_bytes_per_element, effective_gradient, flat_view, kernel_chunk_elements,
                                kernel_decay, learning_rate, updating, working_copy, working_dtype)
from memplan.optim.blocks import Block, axis_pieces, combine_pieces, partition, reduce_granules


def _bytes_per_element(group: Mapping[str, Any], param: torch.Tensor) -> int:
    # nu and its minimum-of-accumulators pieces, and SM3-I's G^2 in its first pass
    return block_bytes_per_element(group, param, 8 + (4 if group["variant"] == "I" else 0))


class SM3(MemplanOptimizer):
    """SM3-II (default) or SM3-I with optional momentum.

    Args:
        params: parameters or named parameters.
        lr: learning rate.
        momentum: first-moment decay in [0, 1); 0 keeps no buffer.
        eps: added to nu under the root.
        variant: "II" (tighter, default) or "I".
        cover: optional per-parameter cover views (tensor indices), keyed by name or tensor, a
            function ``(name, shape) -> view``, or a list with one view (or None) per parameter;
            the natural shape by default. Resolved into the list form when the group is added.
        weight_decay, weight_decay_mode: "adamw" (decoupled) or "adam" (added to the gradient).
        chunk_bytes: bound on the extra memory of one step.
        maximize: maximize the objective instead of minimizing.
        impl: "eager" (the reference), "compiled" (one-pass CPU kernel, needs numba), "triton" or
            "auto" (see :mod:`memplan.kernels.select`).
    """

    method = SM3_METHOD

    def __init__(self, params: Iterable[Any], lr: float = 0.1, momentum: float = 0.0, eps: float = 1e-30,
                 variant: str = "II", cover: LayoutSource = None, weight_decay: float = 0.0,
                 weight_decay_mode: str = "adamw", chunk_bytes: int = DEFAULT_CHUNK_BYTES,
                 maximize: bool = False, impl: str = EAGER) -> None:
        defaults = dict(lr=lr, momentum=momentum, eps=eps, variant=variant, cover=cover, weight_decay=weight_decay,
                        weight_decay_mode=weight_decay_mode, chunk_bytes=chunk_bytes, maximize=maximize, impl=impl)
        super().__init__(params, defaults)

    def _update(self, group: Mapping[str, Any], param: torch.Tensor, grad: torch.Tensor,
                state: dict[str, Any]) -> None:
        view = state["layout"]
        accumulators = [state[f"acc_{axis}"] for axis in range(len(view))]
        weights, grads = flat_view(param), flat_view(grad)
        implementation = resolve(group["impl"], param.device, (COMPILED, TRITON))
        if implementation != EAGER:
            _update_kernel(implementation, group, weights, grads, view, accumulators, state)
            return
        plan = partition(view, block_budget(group, 8 * sum(view)), _bytes_per_element(group, param))
        new_accumulators = None
        if group["variant"] == "I":
            maxima = [torch.zeros_like(accumulator) for accumulator in accumulators]
            for block, granules in plan:
                _add_slice_maxima(group, weights, grads, block, granules, maxima)
            for accumulator, maximum in zip(accumulators, maxima):
                accumulator.add_(maximum)
        else:
            new_accumulators = [torch.zeros_like(accumulator) for accumulator in accumulators]
        buffer = state["momentum_buffer"].view(-1) if group["momentum"] else None
        # the minima of slice accumulators are read in the working dtype (a no-op for fp32)
        readable = [accumulator.to(working_dtype(param.dtype)) for accumulator in accumulators]
        for block, granules in plan:
            _update_block(group, weights, grads, block, granules, readable, new_accumulators, buffer)
        if new_accumulators is not None:
            for accumulator, new in zip(accumulators, new_accumulators):
                accumulator.copy_(new)


def _update_kernel(implementation: str, group: Mapping[str, Any], weights: torch.Tensor, grads: torch.Tensor,
                   view: tuple[int, ...], accumulators: list[torch.Tensor], state: dict[str, Any]) -> None:
    """The whole tensor as one range of the kernels (:mod:`memplan.kernels.sm3_cpu` or
    :mod:`memplan.kernels.sm3_triton`): one pass for SM3-II, the maxima of G^2 and then the
    update for SM3-I."""
    from memplan.kernels import sm3_cpu, sm3_triton

    decay, coupled, negate = kernel_decay(group)
    scalars = sm3_cpu.SM3Scalars(lr=learning_rate(group), eps=group["eps"], momentum=group["momentum"], decay=decay,
                                 coupled_decay=coupled, negate=negate)
    if implementation == COMPILED:
        chunk = kernel_chunk_elements(group)
        sm3_range = functools.partial(sm3_cpu.sm3_range, chunk_elements=chunk)
        sm3_square_maxima_range = functools.partial(sm3_cpu.sm3_square_maxima_range, chunk_elements=chunk)
    else:
        sm3_range, sm3_square_maxima_range = sm3_triton.sm3_range, sm3_triton.sm3_square_maxima_range
    buffer = state["momentum_buffer"].view(-1) if group["momentum"] else None
    if group["variant"] == "I":
        maxima = [torch.zeros_like(accumulator) for accumulator in accumulators]
        sm3_square_maxima_range(weights, grads, 0, view, maxima, scalars)
        for accumulator, maximum in zip(accumulators, maxima):
            accumulator.add_(maximum)
        sm3_range(weights, grads, 0, view, accumulators, None, buffer, scalars)
        return
    new_accumulators = [torch.zeros_like(accumulator) for accumulator in accumulators]
    sm3_range(weights, grads, 0, view, accumulators, new_accumulators, buffer, scalars)
    for accumulator, new in zip(accumulators, new_accumulators):
        accumulator.copy_(new)


def _add_slice_maxima(group: Mapping[str, Any], weights: torch.Tensor, grads: torch.Tensor, block: Block,
                      granules: list[Block], maxima: list[torch.Tensor]) -> None:
    """SM3-I's first pass: the maximum of G^2 over every slice."""
    window = slice(block.flat_start, block.flat_stop)
    gradient = effective_gradient(grads[window], working_copy(weights[window]), group)
    reduce_granules((gradient * gradient).view(block.shape), block, granules, maxima, torch.amax, "max")


def _update_block(group: Mapping[str, Any], weights: torch.Tensor, grads: torch.Tensor, block: Block,
                  granules: list[Block], accumulators: list[torch.Tensor],
                  new_accumulators: list[torch.Tensor] | None, buffer: torch.Tensor | None) -> None:
    """nu from the accumulators (plus G^2 and the new slice maxima for SM3-II), then the update."""
    window = slice(block.flat_start, block.flat_stop)
    with updating(weights, grads, window, group) as (weight, gradient):
        nu = combine_pieces(*axis_pieces(accumulators, block), torch.minimum).expand(block.shape)
        if new_accumulators is not None:
            nu = torch.addcmul(nu, gradient.view(block.shape), gradient.view(block.shape))
            reduce_granules(nu, block, granules, new_accumulators, torch.amax, "max")
            inverse_root = nu.add_(group["eps"]).rsqrt_().view(-1)
        else:
            inverse_root = nu.add(group["eps"]).rsqrt_().reshape(-1)
        del nu
        if buffer is None:
            weight.addcmul_(gradient, inverse_root, value=-learning_rate(group))
        else:
            momentum = group["momentum"]
            moving = buffer[window].mul_(momentum).addcmul_(gradient, inverse_root, value=1.0 - momentum)
            weight.add_(moving, alpha=-learning_rate(group))
