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

from typing import Any, Callable, Iterable, Mapping, Sequence

import torch

from memplan.kernels.select import COMPILED, EAGER, resolve
from memplan.methods.extreme import ET1, ET_INF, PRESETS
from memplan.methods.shapes import et_index
from memplan.optim.base import (DEFAULT_CHUNK_BYTES, LayoutSource, MemplanOptimizer, block_budget,
                                block_bytes_per_element, effective_gradient, flat_view, kernel_chunk_elements,
                                kernel_decay, learning_rate, updating, working_copy, working_dtype)
from memplan.optim.blocks import Block, axis_pieces, combine_pieces, granule_of, partition, reduce_granules
from memplan.optim.sharding import PartialReductions, Shard, local_tensor

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
        sharding: for parameters sharded across ranks (FSDP2): "exact" (the single-device
            trajectory; partial statistics all-reduced once per step) or "local" (each rank's
            shard factorized on its own, no communication; depends on the world size).
        impl: "eager" (the reference), "compiled" (CPU kernels, needs numba), "triton" or "auto".
    """

    method = ET1
    kernels = (COMPILED,)

    def __init__(self, params: Iterable[Any], lr: float = 1e-2, eps: float = 1e-8, beta2: float | None = None,
                 momentum: float = 0.0, index: str | LayoutSource = "et1", weight_decay: float = 0.0,
                 weight_decay_mode: str = "adamw", chunk_bytes: int = DEFAULT_CHUNK_BYTES,
                 maximize: bool = False, sharding: str = "exact", impl: str = EAGER) -> None:
        defaults = dict(lr=lr, eps=eps, beta2=beta2, momentum=momentum, index=index, weight_decay=weight_decay,
                        weight_decay_mode=weight_decay_mode, chunk_bytes=chunk_bytes, maximize=maximize,
                        sharding=sharding, impl=impl)
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

    def _steps_in_batches(self, group: Mapping[str, Any]) -> bool:
        """The CPU kernels step a group's whole parameters together, one kernel call per pass."""
        return self.implementation(group) == COMPILED

    def _prepare_batch(self, group: Mapping[str, Any],
                       batch: list[tuple[torch.Tensor, torch.Tensor, dict[str, Any]]]) -> "_PreparedCall":
        """Every whole parameter of the group in one multi-tensor step of the CPU kernels (both
        passes, and the accumulators' update and rescaling between them), prepared once (see
        :mod:`memplan.optim.batches`)."""
        return _PreparedCall(group, batch)

    def _update_range(self, group: Mapping[str, Any], weights: torch.Tensor, grads: torch.Tensor,
                      state: dict[str, Any], shard: Shard, reductions: PartialReductions) -> Callable[[], None]:
        """Slice sums of this rank's range now; the update once they are reduced across ranks."""
        index = state["layout"]
        accumulators = [state[f"acc_{axis}"] for axis in range(len(index))]
        weights, grads = flat_view(weights), flat_view(grads)
        sums = [torch.zeros_like(accumulator) for accumulator in accumulators]
        accumulate_range(group, weights, grads, sums, shard.start, shard.stop, index)
        reductions.add(shard, sums)

        def finish() -> None:
            alpha = decay_accumulators(accumulators, group["beta2"])
            for accumulator, total in zip(accumulators, sums):
                accumulator.add_(total, alpha=alpha)
            scaled, scale, offset = _scaled_factors(accumulators, group["eps"], working_dtype(weights.dtype))
            buffer = local_tensor(state["momentum_buffer"]).view(-1) if group["momentum"] else None
            update_range(group, weights, grads, buffer, scaled, scale, offset, shard.start, shard.stop, index)

        return finish


class _PreparedCall:
    """The CPU kernels' multi-tensor call for a batch, prepared once and run each step with the
    step's gradients and the group's current scalars (see :mod:`memplan.optim.batches`)."""

    def __init__(self, group: Mapping[str, Any], batch: list[tuple[torch.Tensor, torch.Tensor, dict[str, Any]]]):
        from memplan.kernels import extreme_cpu

        scalars, beta2, eps = _kernel_scalars(group), group["beta2"], group["eps"]
        with_buffer = bool(group["momentum"])
        self._call = extreme_cpu.ETCall([extreme_cpu.ETTensor(
            weights=param, grads=grad, index=state["layout"],
            accumulators=tuple(state[f"acc_{axis}"] for axis in range(len(state["layout"]))),
            buffer=state["momentum_buffer"] if with_buffer else None, scalars=scalars, beta2=beta2, eps=eps)
            for param, grad, state in batch])

    def run(self, group: Mapping[str, Any], grads: Sequence[torch.Tensor], states: Sequence[dict[str, Any]]) -> None:
        """Step every parameter (see :class:`memplan.optim.batches.PreparedBatch`)."""
        self._call.run(grads, (_kernel_scalars(group), group["beta2"], group["eps"]))


def _range_partition(group: Mapping[str, Any], weights: torch.Tensor, start: int, stop: int,
                     index: tuple[int, ...]) -> list[tuple[Block, list[Block]]]:
    """The blocks of elements ``[start, stop)`` of ``index`` that both passes walk."""
    return partition(index, block_budget(group, 12 * sum(index)), _bytes_per_element(group, weights), start=start,
                     stop=stop)


def accumulate_range(group: Mapping[str, Any], weights: torch.Tensor, grads: torch.Tensor, sums: list[torch.Tensor],
                     start: int, stop: int, index: tuple[int, ...]) -> None:
    """First pass over elements ``[start, stop)`` of the tensor ``index`` (``weights`` and ``grads``
    hold the range only): add their slice sums of G^2 to the per-axis ``sums``."""
    if _compiled(group, weights):
        from memplan.kernels.extreme_cpu import et_square_sums_range

        et_square_sums_range(weights, grads, start, index, sums, _kernel_scalars(group), kernel_chunk_elements(group))
        return
    for block, granules in _range_partition(group, weights, start, stop, index):
        _accumulate_block(group, weights, grads, block, granules, sums, start)


def update_range(group: Mapping[str, Any], weights: torch.Tensor, grads: torch.Tensor, buffer: torch.Tensor | None,
                 scaled: list[torch.Tensor], scale: torch.Tensor, offset: torch.Tensor, start: int, stop: int,
                 index: tuple[int, ...]) -> None:
    """Second pass over elements ``[start, stop)``: W -= lr * (eps + prod S)^(-1/2p) * G (through
    the range's momentum ``buffer``, if any), from the replicated :func:`_scaled_factors`."""
    if _compiled(group, weights):
        from memplan.kernels.extreme_cpu import et_update_range

        et_update_range(weights, grads, buffer, start, index, scaled, float(scale), float(offset),
                        _kernel_scalars(group), kernel_chunk_elements(group))
        return
    for block, _ in _range_partition(group, weights, start, stop, index):
        _update_block(group, weights, grads, block, scaled, scale, offset, buffer, start)


# One function per block: its temporaries are freed before the next block allocates its own.

def _compiled(group: Mapping[str, Any], weights: torch.Tensor, preferred: tuple[str, ...] = ET1.auto_kernels) -> bool:
    """Whether ``impl`` selects the CPU kernels (:mod:`memplan.kernels.extreme_cpu`) for this
    range (ET-infinity's kernels are the same technology, ``auto`` picks them only where
    ``preferred`` says so); there are no Triton kernels for extreme tensoring yet."""
    return resolve(group["impl"], weights.device, ExtremeTensoring.kernels, preferred) == COMPILED


def _kernel_scalars(group: Mapping[str, Any]):
    from memplan.kernels.extreme_cpu import ETScalars

    decay, coupled, negate = kernel_decay(group)
    return ETScalars(lr=learning_rate(group), momentum=group.get("momentum", 0.0), decay=decay, coupled_decay=coupled,
                     negate=negate)


def _accumulate_block(group: Mapping[str, Any], weights: torch.Tensor, grads: torch.Tensor, block: Block,
                      granules: list[Block], sums: list[torch.Tensor], start: int) -> None:
    window = slice(block.flat_start - start, block.flat_stop - start)
    gradient = effective_gradient(grads[window], working_copy(weights[window]), group)
    reduce_granules((gradient * gradient).view(block.shape), block, granules, sums, torch.sum, "add")


def _update_block(group: Mapping[str, Any], weights: torch.Tensor, grads: torch.Tensor, block: Block,
                  scaled: list[torch.Tensor], scale: torch.Tensor, offset: torch.Tensor,
                  buffer: torch.Tensor | None, start: int) -> None:
    window = slice(block.flat_start - start, block.flat_stop - start)
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
    """values ** (-1 / (2 order)), in place: square roots for orders 1, 2 and 4, else
    exp(log(x) / (-2 order)) (torch.pow with a fractional exponent is several times slower on CPU).
    The CPU kernels (:mod:`memplan.kernels.extreme_cpu`) take the same roots."""
    if order == 1:
        return values.rsqrt_()
    if order == 2:
        return values.sqrt_().rsqrt_()
    if order == 4:
        return values.sqrt_().sqrt_().rsqrt_()
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

    With ``beta2``, s <- beta2 s + (1 - beta2) ||G||^2. ``sharding`` as for :class:`ExtremeTensoring`.
    """

    method = ET_INF
    kernels = (COMPILED,)

    def __init__(self, params: Iterable[Any], lr: float = 1e-2, eps: float = 1e-8, beta2: float | None = None,
                 weight_decay: float = 0.0, weight_decay_mode: str = "adamw",
                 chunk_bytes: int = DEFAULT_CHUNK_BYTES, maximize: bool = False, sharding: str = "exact",
                 impl: str = EAGER) -> None:
        defaults = dict(lr=lr, eps=eps, beta2=beta2, weight_decay=weight_decay, weight_decay_mode=weight_decay_mode,
                        chunk_bytes=chunk_bytes, maximize=maximize, sharding=sharding, impl=impl)
        super().__init__(params, defaults)

    def _steps_in_batches(self, group: Mapping[str, Any]) -> bool:
        """The CPU kernels step a group's whole parameters together, one kernel call per pass."""
        return self.implementation(group) == COMPILED

    def _step_batch(self, group: Mapping[str, Any],
                    batch: list[tuple[torch.Tensor, torch.Tensor, dict[str, Any]]]) -> None:
        """Every whole parameter of the group in one multi-tensor step of the CPU kernels (both
        passes, and the accumulators' update between them)."""
        from memplan.kernels import extreme_cpu

        scalars = _kernel_scalars(group)
        beta2, eps = group["beta2"], group["eps"]
        extreme_cpu.et_inf_many([extreme_cpu.ETInfinityTensor(
            weights=param, grads=grad, sum_sq=state["sum_sq"], scalars=scalars, beta2=beta2, eps=eps)
            for param, grad, state in batch])

    def _update_range(self, group: Mapping[str, Any], weights: torch.Tensor, grads: torch.Tensor,
                      state: dict[str, Any], shard: Shard, reductions: PartialReductions) -> Callable[[], None]:
        """This rank's squared norm now; the update once it is summed across ranks."""
        weights, grads = flat_view(weights), flat_view(grads)
        compiled = _compiled(group, weights, ET_INF.auto_kernels)
        plan = partition((weights.numel(),), block_budget(group, 0), 16)
        squared_norm = torch.zeros_like(state["sum_sq"])
        if compiled:
            from memplan.kernels.extreme_cpu import scale_range, squared_norm_range

            squared_norm.add_(squared_norm_range(weights, grads, _kernel_scalars(group)))
        else:
            for block, granules in plan:
                _add_squared_norm(group, weights, grads, block, granules, squared_norm)
        reductions.add(shard, [squared_norm])

        def finish() -> None:
            total = state["sum_sq"]
            total.add_(squared_norm, alpha=decay_accumulators([total], group["beta2"]))
            inverse_root = (total + group["eps"]).rsqrt()
            if compiled:
                scale_range(weights, grads, float(inverse_root), _kernel_scalars(group))
                return
            for block, _ in plan:
                _scale_block(group, weights, grads, block, inverse_root)

        return finish


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
                      granules: list[Block], total: torch.Tensor) -> None:
    window = slice(block.flat_start, block.flat_stop)
    gradient = effective_gradient(grads[window], working_copy(weights[window]), group)
    for granule in granules:
        part = granule_of(gradient, block, granule)
        total.add_(torch.dot(part, part))


__all__ = ["ETInfinity", "ExtremeTensoring", "PRESETS"]
