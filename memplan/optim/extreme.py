"""Extreme tensoring (Chen, Hazan et al., 2019): AdaGrad with a tensor-product preconditioner.

A parameter is reshaped (row-major) to a tensor index (d_1, ..., d_p) and keeps one accumulator
per slice of every axis. One step, with G reshaped to the index::

    S_i[j] += sum of G^2 over the slice (axis i, index j)          (every axis i)
    W      <- W - lr * (eps + prod_k S_k[i_k]) ^ (-1 / (2p)) * G

``beta2`` turns the sums into moving averages (S_i <- beta2 S_i + (1 - beta2) sums), and
``momentum`` adds a heavy-ball buffer (m <- momentum m + update; W <- W - lr m).
ET-infinity keeps one accumulated squared norm per tensor (:class:`ETInfinity`).

The step makes two passes over a parameter in blocks (slice statistics, then the update), so
temporaries never exceed a block. The product of p accumulators is computed on per-axis
vectors scaled by their maxima (at least 1), which keeps it finite in fp32 for any p; the scale
is put back exactly, so the result is the formula's.
"""

from __future__ import annotations

from typing import Any, Iterable, Mapping

import torch

from memplan.kernels.select import COMPILED, EAGER, resolve
from memplan.methods.extreme import ET1, ET_INF, PRESETS
from memplan.methods.shapes import et_index
from memplan.optim.base import (DEFAULT_CHUNK_BYTES, LayoutSource, MemplanOptimizer, block_budget,
                                block_bytes_per_element, effective_gradient, flat_view, kernel_chunk_elements,
                                kernel_decay, learning_rate, updating, working_copy, working_dtype)
from memplan.optim.blocks import Block, axis_pieces, combine_pieces, granule_of, partition, reduce_granules
_TINY = torch.finfo(torch.float32).tiny


def _bytes_per_element(group: Mapping[str, Any], param: torch.Tensor) -> int:
    # the update's product and G^2 (or the gradient copy) alive together, and the momentum update
    return block_bytes_per_element(group, param, 8 + (4 if group["momentum"] else 0))


class ExtremeTensoring(MemplanOptimizer):
    """AdaGrad (or RMSprop-style, with ``beta2``) with a tensor-index preconditioner.

    Args:
        params: parameters or named parameters.
        lr: learning rate.
        eps: added to the product of accumulators before the root.
        beta2: ``None`` for AdaGrad sums; a decay in [0, 1) for moving averages.
        momentum: heavy-ball momentum in [0, 1) (a full buffer when > 0).
        index: ``"et1"``, ``"et2"`` or ``"et3"`` (the paper's levels), a mapping from parameter
            name or tensor to a tensor index, a function ``(name, shape) -> index``, or a list
            with one index (or None) per parameter of the group; parameters given none get ET1.
            Every index must have the parameter's number of elements. A mapping or function is
            resolved into the list form when the group is added.
        weight_decay, weight_decay_mode: "adamw" (decoupled) or "adam" (added to the gradient).
        chunk_bytes: bound on the extra memory of one step.
        maximize: maximize the objective instead of minimizing.
        impl: "eager" (the reference), "compiled" (CPU kernels, needs numba), "triton" or "auto".
    """

    method = ET1

    def __init__(self, params: Iterable[Any], lr: float = 1e-2, eps: float = 1e-8, beta2: float | None = None,
                 momentum: float = 0.0, index: str | LayoutSource = "et1", weight_decay: float = 0.0,
                 weight_decay_mode: str = "adamw", chunk_bytes: int = DEFAULT_CHUNK_BYTES,
                 maximize: bool = False, impl: str = EAGER) -> None:
        defaults = dict(lr=lr, eps=eps, beta2=beta2, momentum=momentum, index=index, weight_decay=weight_decay,
                        weight_decay_mode=weight_decay_mode, chunk_bytes=chunk_bytes, maximize=maximize, impl=impl)
        super().__init__(params, defaults)

    def _check_group(self, group: Mapping[str, Any]) -> None:
        super()._check_group(group)
        index = group["index"]
        if isinstance(index, str) and index not in PRESETS:
            raise ValueError(f"Invalid index: {index!r} (a preset among {', '.join(PRESETS)}, a mapping or a function)")

    def _default_layout(self, group: Mapping[str, Any], shape: tuple[int, ...]) -> tuple[int, ...]:
        index = group["index"]
        return et_index(shape, PRESETS[index] if isinstance(index, str) else 1)

    def _layout_source(self, group: Mapping[str, Any]) -> Any:
        return None if isinstance(group["index"], str) else super()._layout_source(group)

    def _update(self, group: Mapping[str, Any], param: torch.Tensor, grad: torch.Tensor,
                state: dict[str, Any]) -> None:
        index = state["layout"]
        accumulators = [state[f"acc_{axis}"] for axis in range(len(index))]
        weights, grads = flat_view(param), flat_view(grad)
        if resolve(group["impl"], param.device, (COMPILED,)) == COMPILED:
            _update_compiled(group, weights, grads, index, accumulators, state, working_dtype(param.dtype))
            return
        plan = partition(index, block_budget(group, 12 * sum(index)), _bytes_per_element(group, param))
        alpha = decay_accumulators(accumulators, group["beta2"])
        for block, granules in plan:
            _accumulate_block(group, weights, grads, block, granules, accumulators, alpha)
        scaled, scale, offset = _scaled_factors(accumulators, group["eps"], working_dtype(param.dtype))
        buffer = state["momentum_buffer"].view(-1) if group["momentum"] else None
        for block, _ in plan:
            _update_block(group, weights, grads, block, scaled, scale, offset, buffer)


def _kernel_scalars(group: Mapping[str, Any]):
    from memplan.kernels.extreme_cpu import ETScalars

    decay, coupled, negate = kernel_decay(group)
    return ETScalars(lr=learning_rate(group), momentum=group.get("momentum", 0.0), decay=decay, coupled_decay=coupled,
                     negate=negate)


def _update_compiled(group: Mapping[str, Any], weights: torch.Tensor, grads: torch.Tensor, index: tuple[int, ...],
                     accumulators: list[torch.Tensor], state: dict[str, Any], dtype: torch.dtype) -> None:
    """Both passes as whole-tensor ranges of the CPU kernels (:mod:`memplan.kernels.extreme_cpu`)."""
    from memplan.kernels.extreme_cpu import et_square_sums_range, et_update_range

    scalars = _kernel_scalars(group)
    chunk = kernel_chunk_elements(group)
    alpha = decay_accumulators(accumulators, group["beta2"])
    sums = [torch.zeros_like(accumulator) for accumulator in accumulators]
    et_square_sums_range(weights, grads, 0, index, sums, scalars, chunk)
    for accumulator, total in zip(accumulators, sums):
        accumulator.add_(total, alpha=alpha)
    scaled, scale, offset = _scaled_factors(accumulators, group["eps"], dtype)
    buffer = state["momentum_buffer"].view(-1) if group["momentum"] else None
    et_update_range(weights, grads, buffer, 0, index, scaled, float(scale), float(offset), scalars, chunk)


def _accumulate_block(group: Mapping[str, Any], weights: torch.Tensor, grads: torch.Tensor, block: Block,
                      granules: list[Block], accumulators: list[torch.Tensor], alpha: float) -> None:
    """First pass: add this block's slice sums of G^2 to every axis's accumulator."""
    window = slice(block.flat_start, block.flat_stop)
    gradient = effective_gradient(grads[window], working_copy(weights[window]), group)
    reduce_granules((gradient * gradient).view(block.shape), block, granules, accumulators, torch.sum, "add", alpha)


def _update_block(group: Mapping[str, Any], weights: torch.Tensor, grads: torch.Tensor, block: Block,
                  scaled: list[torch.Tensor], scale: torch.Tensor, offset: torch.Tensor,
                  buffer: torch.Tensor | None) -> None:
    """Second pass: W -= lr * (eps + prod S)^(-1/2p) * G on this block (through momentum if any)."""
    window = slice(block.flat_start, block.flat_stop)
    with updating(weights, grads, window, group) as (weight, gradient):
        prefix, views = axis_pieces(scaled, block)
        product = combine_pieces(prefix, views, torch.mul).reshape(-1)
        # a lone piece is a view of the scaled accumulator: add out of place then
        product = product.add_(offset) if prefix or len(views) > 1 else product.add(offset)
        step_size = _inverse_root_(product, len(scaled)).mul_(gradient)
        if buffer is None:
            weight.addcmul_(step_size, scale, value=-learning_rate(group))
        else:
            moving = buffer[window].mul_(group["momentum"]).addcmul_(step_size, scale)
            weight.add_(moving, alpha=-learning_rate(group))


def _inverse_root_(values: torch.Tensor, order: int) -> torch.Tensor:
    """values ** (-1 / (2 order)), in place: one or two square roots for orders 1 and 2, else
    exp(log(x) / (-2 order)) (torch.pow with a fractional exponent is several times slower on CPU)."""
    if order == 1:
        return values.rsqrt_()
    if order == 2:
        return values.sqrt_().rsqrt_()
    return values.log_().mul_(-1.0 / (2 * order)).exp_()


def _scaled_factors(accumulators: list[torch.Tensor], eps: float, dtype: torch.dtype):
    """Per-axis accumulators divided by max(their maximum, 1), and the exact corrections.

    With c_k = max(max S_k, 1), C = prod c_k and s_k = S_k / c_k,
    (eps + prod S_k)^(-1/2p) = C^(-1/2p) (eps / C + prod s_k)^(-1/2p). Returns the s_k (in the
    working ``dtype``, so the block math runs in it), the 0-d tensor C^(-1/2p), and the 0-d offset
    eps / C (at least fp32's smallest normal, so a product that underflows can never give an
    infinite step).
    """
    maxima = [accumulator.amax().clamp(min=1.0) for accumulator in accumulators]
    scaled = [(accumulator / maximum).to(dtype) for accumulator, maximum in zip(accumulators, maxima)]
    log_scale = torch.stack(maxima).log().sum()
    exponent = -1.0 / (2 * len(accumulators))
    scale = torch.exp(exponent * log_scale)
    offset = torch.clamp(eps * torch.exp(-log_scale), min=_TINY)
    return scaled, scale, offset


class ETInfinity(MemplanOptimizer):
    """ET-infinity: one scalar per tensor, s += ||G||^2, W <- W - lr G / sqrt(eps + s).

    With ``beta2``, s <- beta2 s + (1 - beta2) ||G||^2.
    """

    method = ET_INF

    def __init__(self, params: Iterable[Any], lr: float = 1e-2, eps: float = 1e-8, beta2: float | None = None,
                 weight_decay: float = 0.0, weight_decay_mode: str = "adamw",
                 chunk_bytes: int = DEFAULT_CHUNK_BYTES, maximize: bool = False, impl: str = EAGER) -> None:
        defaults = dict(lr=lr, eps=eps, beta2=beta2, weight_decay=weight_decay, weight_decay_mode=weight_decay_mode,
                        chunk_bytes=chunk_bytes, maximize=maximize, impl=impl)
        super().__init__(params, defaults)

    def _update(self, group: Mapping[str, Any], param: torch.Tensor, grad: torch.Tensor,
                state: dict[str, Any]) -> None:
        weights, grads = flat_view(param), flat_view(grad)
        if resolve(group["impl"], param.device, (COMPILED,)) == COMPILED:
            from memplan.kernels.extreme_cpu import scale_range, squared_norm_range

            scalars = _kernel_scalars(group)
            total = state["sum_sq"]
            total.add_(squared_norm_range(weights, grads, scalars), alpha=decay_accumulators([total], group["beta2"]))
            scale_range(weights, grads, float((total + group["eps"]).rsqrt()), scalars)
            return
        plan = partition((weights.numel(),), block_budget(group, 0), 16)
        total = state["sum_sq"]
        alpha = decay_accumulators([total], group["beta2"])
        for block, granules in plan:
            _add_squared_norm(group, weights, grads, block, granules, total, alpha)
        inverse_root = (total + group["eps"]).rsqrt()
        for block, _ in plan:
            _scale_block(group, weights, grads, block, inverse_root)


def decay_accumulators(accumulators: list[torch.Tensor], beta2: float | None) -> float:
    """With ``beta2``, decay the accumulators in place; return the weight of this step's statistics."""
    if beta2 is None:
        return 1.0
    for accumulator in accumulators:
        accumulator.mul_(beta2)
    return 1.0 - beta2


def _scale_block(group: Mapping[str, Any], weights: torch.Tensor, grads: torch.Tensor, block: Block,
                 inverse_root: torch.Tensor) -> None:
    with updating(weights, grads, slice(block.flat_start, block.flat_stop), group) as (weight, gradient):
        weight.addcmul_(gradient, inverse_root, value=-learning_rate(group))


def _add_squared_norm(group: Mapping[str, Any], weights: torch.Tensor, grads: torch.Tensor, block: Block,
                      granules: list[Block], total: torch.Tensor, alpha: float) -> None:
    window = slice(block.flat_start, block.flat_stop)
    gradient = effective_gradient(grads[window], working_copy(weights[window]), group)
    for granule in granules:
        part = granule_of(gradient, block, granule)
        total.add_(torch.dot(part, part), alpha=alpha)


__all__ = ["ETInfinity", "ExtremeTensoring", "PRESETS"]
