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
from typing import Any, Callable, Iterable, Mapping, NamedTuple, Sequence

import torch

from memplan.kernels.select import COMPILED, EAGER, TRITON, resolve
from memplan.methods.sm3 import SM3_METHOD
from memplan.optim.base import (DEFAULT_CHUNK_BYTES, LayoutSource, MemplanOptimizer, block_budget,
                                block_bytes_per_element, effective_gradient, flat_view, kernel_chunk_elements,
                                kernel_decay, learning_rate, updating, working_copy, working_dtype)
from memplan.optim.blocks import Block, axis_pieces, combine_pieces, partition, reduce_granules
from memplan.optim.sharding import PartialReductions, Shard, local_tensor


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
        sharding: for parameters sharded across ranks (FSDP2): "exact" (the single-device
            trajectory; partial statistics all-reduced once per step) or "local" (each rank's
            shard factorized on its own, no communication; depends on the world size).
        impl: "eager" (the reference), "compiled" (one-pass CPU kernel, needs numba), "triton" or
            "auto" (see :mod:`memplan.kernels.select`).
    """

    method = SM3_METHOD
    kernels = (COMPILED, TRITON)

    def __init__(self, params: Iterable[Any], lr: float = 0.1, momentum: float = 0.0, eps: float = 1e-30,
                 variant: str = "II", cover: LayoutSource = None, weight_decay: float = 0.0,
                 weight_decay_mode: str = "adamw", chunk_bytes: int = DEFAULT_CHUNK_BYTES,
                 maximize: bool = False, sharding: str = "exact", impl: str = EAGER) -> None:
        defaults = dict(lr=lr, momentum=momentum, eps=eps, variant=variant, cover=cover, weight_decay=weight_decay,
                        weight_decay_mode=weight_decay_mode, chunk_bytes=chunk_bytes, maximize=maximize,
                        sharding=sharding, impl=impl)
        super().__init__(params, defaults)

    def _steps_in_batches(self, group: Mapping[str, Any]) -> bool:
        """SM3-II's kernels step a group's whole parameters in one call (one launch on CUDA);
        SM3-I's two passes step one parameter at a time."""
        return group["variant"] == "II" and self.implementation(group) in (COMPILED, TRITON)

    def _prepare_batch(self, group: Mapping[str, Any],
                       batch: list[tuple[torch.Tensor, torch.Tensor, dict[str, Any]]]) -> "_PreparedCall":
        """The kernel's call for the batch, CPU or Triton, prepared once (see
        :mod:`memplan.optim.batches`)."""
        return _PreparedCall(group, batch, self.implementation(group))

    def _update_range(self, group: Mapping[str, Any], weights: torch.Tensor, grads: torch.Tensor,
                      state: dict[str, Any], shard: Shard, reductions: PartialReductions) -> Callable[[], None]:
        """SM3-II: the range's update and slice maxima of nu now, the new accumulators once the maxima
        are reduced across ranks. SM3-I: the range's slice maxima of G^2 now, the update after."""
        view = state["layout"]
        accumulators = [state[f"acc_{axis}"] for axis in range(len(view))]
        weights, grads = flat_view(weights), flat_view(grads)
        maxima = [torch.zeros_like(accumulator) for accumulator in accumulators]
        buffer = local_tensor(state["momentum_buffer"]).view(-1) if group["momentum"] else None
        if group["variant"] == "I":
            slice_maxima_range(group, weights, grads, maxima, shard.start, shard.stop, view)
        else:
            update_range(group, weights, grads, buffer, _readable(accumulators, weights), maxima, shard.start,
                         shard.stop, view)
        reductions.add(shard, maxima, op="max")

        def finish() -> None:
            if group["variant"] == "I":
                for accumulator, maximum in zip(accumulators, maxima):
                    accumulator.add_(maximum)
                update_range(group, weights, grads, buffer, _readable(accumulators, weights), None, shard.start,
                             shard.stop, view)
            else:
                for accumulator, new in zip(accumulators, maxima):
                    accumulator.copy_(new)

        return finish


def _kernel_scalars(group: Mapping[str, Any]) -> Any:
    """The kernels' scalars under the group's current hyperparameters."""
    from memplan.kernels import sm3_cpu

    decay, coupled, negate = kernel_decay(group)
    return sm3_cpu.SM3Scalars(lr=learning_rate(group), eps=group["eps"], momentum=group["momentum"], decay=decay,
                              coupled_decay=coupled, negate=negate)


def _batch_tensors(group: Mapping[str, Any], batch: list[tuple[torch.Tensor, torch.Tensor, dict[str, Any]]]) -> list:
    """The batch as a multi-tensor call's tensors (:class:`memplan.kernels.sm3_cpu.SM3Tensor`)."""
    from memplan.kernels import sm3_cpu

    scalars = _kernel_scalars(group)
    with_buffer = bool(group["momentum"])
    return [sm3_cpu.SM3Tensor(weights=param, grads=grad, view=state["layout"],
                              accumulators=tuple(state[f"acc_{axis}"] for axis in range(len(state["layout"]))),
                              buffer=state["momentum_buffer"] if with_buffer else None, scalars=scalars)
            for param, grad, state in batch]


class _PreparedCall:
    """The kernel's multi-tensor call for a batch (the CPU kernel's, or the Triton one's for
    ``implementation`` triton), prepared once and run each step with the step's gradients and the
    group's current scalars (see :mod:`memplan.optim.batches`)."""

    def __init__(self, group: Mapping[str, Any], batch: list[tuple[torch.Tensor, torch.Tensor, dict[str, Any]]],
                 implementation: str) -> None:
        from memplan.kernels import sm3_cpu, sm3_triton

        call = sm3_triton.SM3TritonCall if implementation == TRITON else sm3_cpu.SM3Call
        self._call = call(_batch_tensors(group, batch))

    def run(self, group: Mapping[str, Any], grads: Sequence[torch.Tensor], states: Sequence[dict[str, Any]]) -> None:
        """Step every parameter (see :class:`memplan.optim.batches.PreparedBatch`)."""
        self._call.run(grads, _kernel_scalars(group))


def _readable(accumulators: list[torch.Tensor], weights: torch.Tensor) -> list[torch.Tensor]:
    """The accumulators in the working dtype, where the minima of slice accumulators are read (a
    no-op for fp32)."""
    return [accumulator.to(working_dtype(weights.dtype)) for accumulator in accumulators]


def _range_partition(group: Mapping[str, Any], weights: torch.Tensor, start: int, stop: int,
                     view: tuple[int, ...]) -> list[tuple[Block, list[Block]]]:
    return partition(view, block_budget(group, 8 * sum(view)), _bytes_per_element(group, weights), start=start,
                     stop=stop)


def slice_maxima_range(group: Mapping[str, Any], weights: torch.Tensor, grads: torch.Tensor,
                       maxima: list[torch.Tensor], start: int, stop: int, view: tuple[int, ...]) -> None:
    """SM3-I's first pass over elements ``[start, stop)`` of ``view`` (``weights`` and ``grads``
    hold the range only): the maximum of G^2 over every slice, into the per-axis ``maxima``."""
    kernels = _kernels(group, weights.device)
    if kernels is not None:
        kernels.square_maxima(weights, grads, start, view, maxima, kernels.scalars)
        return
    for block, granules in _range_partition(group, weights, start, stop, view):
        _add_slice_maxima(group, weights, grads, block, granules, maxima, start)


def update_range(group: Mapping[str, Any], weights: torch.Tensor, grads: torch.Tensor, buffer: torch.Tensor | None,
                 accumulators: list[torch.Tensor], new_accumulators: list[torch.Tensor] | None, start: int,
                 stop: int, view: tuple[int, ...]) -> None:
    """The update of elements ``[start, stop)`` of ``view`` from the replicated ``accumulators``;
    for SM3-II (``new_accumulators`` given) the range's slice maxima of nu go into them."""
    kernels = _kernels(group, weights.device)
    if kernels is not None:
        kernels.update(weights, grads, start, view, accumulators, new_accumulators, buffer, kernels.scalars)
        return
    for block, granules in _range_partition(group, weights, start, stop, view):
        _update_block(group, weights, grads, block, granules, accumulators, new_accumulators, buffer, start)


class _Kernels(NamedTuple):
    """The one-pass kernels a step runs instead of the eager blocks, with the step's scalars."""

    update: Callable[..., None]
    square_maxima: Callable[..., None]
    scalars: Any


def _kernels(group: Mapping[str, Any], device: torch.device) -> _Kernels | None:
    """The kernels ``impl`` selects on ``device`` (:mod:`memplan.kernels.sm3_cpu` or
    :mod:`memplan.kernels.sm3_triton`), or None for the eager blocks."""
    implementation = resolve(group["impl"], device, SM3.kernels, SM3_METHOD.auto_kernels)
    if implementation == EAGER:
        return None
    from memplan.kernels import sm3_cpu, sm3_triton

    decay, coupled, negate = kernel_decay(group)
    scalars = sm3_cpu.SM3Scalars(lr=learning_rate(group), eps=group["eps"], momentum=group["momentum"], decay=decay,
                                 coupled_decay=coupled, negate=negate)
    if implementation == COMPILED:
        chunk = kernel_chunk_elements(group)
        return _Kernels(functools.partial(sm3_cpu.sm3_range, chunk_elements=chunk),
                        functools.partial(sm3_cpu.sm3_square_maxima_range, chunk_elements=chunk), scalars)
    return _Kernels(sm3_triton.sm3_range, sm3_triton.sm3_square_maxima_range, scalars)


def _add_slice_maxima(group: Mapping[str, Any], weights: torch.Tensor, grads: torch.Tensor, block: Block,
                      granules: list[Block], maxima: list[torch.Tensor], offset: int) -> None:
    """SM3-I's first pass on one block: the maximum of G^2 over every slice."""
    window = slice(block.flat_start - offset, block.flat_stop - offset)
    gradient = effective_gradient(grads[window], working_copy(weights[window]), group)
    reduce_granules((gradient * gradient).view(block.shape), block, granules, maxima, torch.amax, "max")


def _update_block(group: Mapping[str, Any], weights: torch.Tensor, grads: torch.Tensor, block: Block,
                  granules: list[Block], accumulators: list[torch.Tensor],
                  new_accumulators: list[torch.Tensor] | None, buffer: torch.Tensor | None, offset: int) -> None:
    """nu from the accumulators (plus G^2 and the new slice maxima for SM3-II), then the update."""
    window = slice(block.flat_start - offset, block.flat_stop - offset)
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
