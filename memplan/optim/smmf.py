"""SMMF: square-matricized momentum factorization (Park & Lee, AAAI 2025), as in ALGORITHMS.md.

For a parameter viewed as an n x m matrix (its square-matricization unless a plan says
otherwise), with beta1_t = beta1 * growth^(t-1) and beta2_t = 1 - t^decay_rate::

    M_prev = sign(S) * outer(r_M, c_M)            V_prev = outer(r_V, c_V)
    M_t = beta1_t M_prev + (1 - beta1_t) G        V_t = beta2_t V_prev + (1 - beta2_t) G^2
    W  <- W - lr * M_t / (sqrt(V_t) + eps)
    S = (M_t > 0);  r, c = row and column sums of |M_t| (and of V_t), one of them divided by its
    total so that outer(r, c) keeps A's row and column sums.

The step walks the matrix in blocks of rows: row sums are local to a block, column sums
accumulate across blocks, and every block decompresses, updates and recompresses in one pass,
so no temporary is ever larger than a block (``chunk_bytes`` bounds them; ``None`` processes each
tensor whole, with bit-identical results). Signs are stored one
bit per element (``sign_bits=1``, a packed uint8 vector) or one bool per element (``sign_bits=8``,
the original code's layout); both give identical trajectories.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Mapping, Sequence

import torch

from memplan.kernels.select import COMPILED, EAGER, TRITON, resolve
from memplan.methods.smmf import SMMF_METHOD
from memplan.optim.base import (DEFAULT_CHUNK_BYTES, LayoutSource, MemplanOptimizer, block_budget,
                                block_bytes_per_element, flat_view, kernel_chunk_elements, kernel_decay,
                                learning_rate, updating)
from memplan.optim.blocks import Block, axis_pieces, partition, reduce_granules
from memplan.optim.sharding import PartialReductions, Shard, local_tensor

# Packing gathers the low bit of 8 bytes of an int64 word into one byte with shifts and ors (no
# overflow, and no bool tensors: comparisons and torch.where are several times slower than
# integer and float ops on CPU). Unpacking looks each byte up in a 256 x 8 table of +-1.0.
_GATHER_SHIFTS = (7, 14, 28)
_SIGN_TABLES: dict[torch.device, torch.Tensor] = {}


def _sign_table(device: torch.device) -> torch.Tensor:
    """Row b: +1.0 for each set bit j of byte b, -1.0 for each clear bit."""
    if device not in _SIGN_TABLES:
        bits = (torch.arange(256)[:, None] >> torch.arange(8)) & 1
        _SIGN_TABLES[device] = (bits * 2 - 1).to(device=device, dtype=torch.float32)
    return _SIGN_TABLES[device]


def unpack_signs(packed: torch.Tensor, count: int, offset: int = 0) -> torch.Tensor:
    """``count`` packed signs from sign ``offset`` of ``packed``, as fp32 +-1.0; sign k is bit k % 8
    (little-endian) of byte k // 8."""
    first = offset // 8
    window = packed[first:(offset + count + 7) // 8]
    skip = offset - 8 * first
    return torch.index_select(_sign_table(packed.device), 0, window.long()).view(-1)[skip:skip + count]


def byte_signs(positive: torch.Tensor) -> torch.Tensor:
    """Signs stored one uint8 0/1 per element, as fp32 +-1.0."""
    return positive.to(torch.float32).mul_(2.0).sub_(1.0)


def pack_signs(positive: torch.Tensor, out: torch.Tensor) -> None:
    """Pack a flat uint8 (or bool) vector of 0/1 signs into ``out``, 8 per byte (ceil(len / 8) bytes)."""
    as_bytes = positive.view(torch.uint8)
    remainder = as_bytes.numel() % 8
    if remainder:
        as_bytes = torch.cat([as_bytes, as_bytes.new_zeros(8 - remainder)])
    words = as_bytes.view(torch.int64)
    for shift in _GATHER_SHIFTS:
        words = words | (words >> shift)
    out.copy_(words.bitwise_and_(0xFF))


def store_signs(packed: torch.Tensor, offset: int, positive: torch.Tensor, last: bool) -> None:
    """Write a flat uint8 vector of 0/1 signs into ``packed`` from sign ``offset`` on, keeping the
    other signs of bytes it shares with its neighbours (a rank's range, or a block of it, may start
    and end mid-byte). ``last``: nothing follows in ``packed``, so a trailing byte may be padded."""
    count = positive.numel()
    head = min(count, -offset % 8)
    if head:
        _merge_bits(packed, offset, positive[:head])
    body = count - head
    whole = body if last else body // 8 * 8
    start = offset + head
    if whole:
        pack_signs(positive[head:head + whole], packed[start // 8:(start + whole + 7) // 8])
    if whole < body:
        _merge_bits(packed, start + whole, positive[head + whole:])


def _merge_bits(packed: torch.Tensor, offset: int, positive: torch.Tensor) -> None:
    """Set the bits of signs ``offset ... offset + len(positive)`` (all in one byte) to ``positive``."""
    shift = offset % 8
    weights = torch.bitwise_left_shift(torch.ones(positive.numel(), dtype=torch.int32, device=packed.device),
                                       torch.arange(shift, shift + positive.numel(), device=packed.device))
    bits = (positive.to(torch.int32) * weights).sum()
    byte = packed[offset // 8:offset // 8 + 1]
    byte.copy_(byte.to(torch.int32).bitwise_and_(~weights.sum()).bitwise_or_(bits).to(torch.uint8))


_SAME_SIZE_INTEGERS = {torch.float32: torch.int32, torch.float64: torch.int64}


def positive_signs(values: torch.Tensor) -> torch.Tensor:
    """1 where ``values > 0`` else 0, as uint8: a float's bits read as a signed integer of the same
    size are > 0 exactly then (fp32 or float64 values)."""
    return torch.clamp(values.view(_SAME_SIZE_INTEGERS[values.dtype]), 0, 1).to(torch.uint8)


def normalize_factors_(row: torch.Tensor, col: torch.Tensor) -> None:
    """Divide the shorter side's factor by its total (row when n < m, else column); 0 stays 0."""
    target = row if row.numel() < col.numel() else col
    total = target.sum()
    target.div_(torch.where(total > 0, total, torch.ones_like(total)))


def _bytes_per_element(group: Mapping[str, Any], param: torch.Tensor) -> int:
    """Peak temporaries of one block, per element (see _FactoredStep.run)."""
    # S, G^2 or the unpacked signs, F, their sign bits, and the packed bytes' indices
    return block_bytes_per_element(group, param, 4 * 4 + 2)


class SMMF(MemplanOptimizer):
    """Square-matricized momentum factorization with 1-bit (packed) or 8-bit signs.

    Args:
        params: parameters or named parameters (names let ``matricization`` refer to them).
        lr: learning rate.
        beta1: first-moment decay; ``None`` keeps no first moment (and no signs).
        eps: added to sqrt(V_t).
        weight_decay: weight-decay factor; ``weight_decay_mode`` "adamw" (decoupled: W *= 1 - lr wd)
            or "adam" (coupled: G += wd W).
        decay_rate: beta2_t = 1 - t^decay_rate, in [-1, 0] (-0.5 for CNNs, -0.8 for transformers).
        growth_rate: beta1_t = beta1 * growth_rate^(t-1).
        vector_reshape: square-matricize vectors too; otherwise they keep full moments.
        sign_bits: 1 (8 signs per byte) or 8 (one bool per sign).
        matricization: optional per-parameter (n, m) views, keyed by name or tensor, a
            function ``(name, shape) -> (n, m)``, or a list with one view (or None) per parameter;
            resolved into the list form when the group is added.
        chunk_bytes: bound on the extra memory of one step (None: each tensor in one piece).
        maximize: maximize the objective instead of minimizing.
        sharding: for parameters sharded across ranks (FSDP2): "exact" (the single-device
            trajectory; partial statistics all-reduced once per step) or "local" (each rank's
            shard factorized on its own, no communication; depends on the world size).
        impl: "eager" (the reference: torch ops over blocks), "compiled" (one-pass CPU kernel,
            needs numba), "triton" or "auto" (see :mod:`memplan.kernels.select`).
    """

    method = SMMF_METHOD
    kernels = (COMPILED, TRITON)

    def __init__(self, params: Iterable[Any], lr: float = 1e-3, beta1: float | None = 0.9, eps: float = 1e-8,
                 weight_decay: float = 0.0, decay_rate: float = -0.5, growth_rate: float = 0.999,
                 vector_reshape: bool = True, weight_decay_mode: str = "adamw", sign_bits: int = 1,
                 matricization: LayoutSource = None, chunk_bytes: int = DEFAULT_CHUNK_BYTES,
                 maximize: bool = False, sharding: str = "exact", impl: str = EAGER) -> None:
        defaults = dict(lr=lr, beta1=beta1, eps=eps, weight_decay=weight_decay, decay_rate=decay_rate,
                        growth_rate=growth_rate, vector_reshape=vector_reshape, weight_decay_mode=weight_decay_mode,
                        sign_bits=sign_bits, matricization=matricization, chunk_bytes=chunk_bytes, maximize=maximize,
                        sharding=sharding, impl=impl)
        super().__init__(params, defaults)

    def _steps_in_batches(self, group: Mapping[str, Any]) -> bool:
        """The kernels step a group's whole parameters in one call (one launch on CUDA)."""
        return self.implementation(group) in (COMPILED, TRITON)

    def _batchable(self, param: torch.Tensor, grad: torch.Tensor, state: dict[str, Any]) -> bool:
        return state["layout"] is not None and super()._batchable(param, grad, state)

    def _prepare_batch(self, group: Mapping[str, Any],
                       batch: list[tuple[torch.Tensor, torch.Tensor, dict[str, Any]]]) -> "_PreparedCall":
        """The kernel's call for the batch, CPU or Triton (see :class:`_PreparedCall`)."""
        return _PreparedCall(group, batch, self.implementation(group))

    def _update_range(self, group: Mapping[str, Any], weights: torch.Tensor, grads: torch.Tensor,
                      state: dict[str, Any], shard: Shard, reductions: PartialReductions) -> Callable[[], None] | None:
        beta1_t, beta2_t = _betas(group, state["step"])
        if state["layout"] is None:
            _update_full(group, flat_view(weights), flat_view(grads), state, beta1_t, beta2_t)
            return None
        return _update_factored(group, flat_view(weights), flat_view(grads), state, shard, reductions,
                                beta1_t, beta2_t)


class _BatchScalars:
    """A batch's per-step scalars under the group's current hyperparameters, computed once per step
    count (a group's parameters mostly share one)."""

    def __init__(self, group: Mapping[str, Any]) -> None:
        from memplan.kernels import smmf_cpu

        self._group = group
        self._decay = kernel_decay(group)
        self._scalars_type = smmf_cpu.SMMFScalars
        self._at_step: dict[int, tuple[Any, float, float, float, float]] = {}

    def of(self, step: int) -> tuple[Any, float, float, float, float]:
        """(kernel scalars, prior_v, prior_m, keep_v, keep_m) at ``step``."""
        row = self._at_step.get(step)
        if row is None:
            scales = _FactoredScalars.of(self._group, *_betas(self._group, step))
            decay, coupled, negate = self._decay
            row = self._at_step[step] = (
                self._scalars_type(step_size=scales.step_size, eps=scales.eps, decay=decay, coupled_decay=coupled,
                                   negate=negate),
                scales.prior_v, scales.prior_m, scales.keep_v, scales.keep_m)
        return row


def _batch_tensor(group: Mapping[str, Any], param: torch.Tensor, grad: torch.Tensor, state: dict[str, Any],
                  row: tuple[Any, float, float, float, float]) -> Any:
    """One parameter of a multi-tensor call (:class:`memplan.kernels.smmf_cpu.SMMFTensor`)."""
    from memplan.kernels import smmf_cpu

    first_moment = group["beta1"] is not None
    scalars, prior_v, prior_m, keep_v, keep_m = row
    return smmf_cpu.SMMFTensor(
        weights=param, grads=grad, signs=state["sign"] if first_moment else None, cols=state["layout"][1],
        row_v=state["row_v"], col_v=state["col_v"], row_m=state["row_m"] if first_moment else None,
        col_m=state["col_m"] if first_moment else None, scalars=scalars, prior_v=prior_v, prior_m=prior_m,
        keep_v=keep_v, keep_m=keep_m)


class _PreparedCall:
    """The kernel's multi-tensor call for a batch (the CPU kernel's, or the Triton one's for
    ``implementation`` triton), prepared once (its addresses and checks) and run each step with the
    step's gradients and scalars (see :mod:`memplan.optim.batches`)."""

    def __init__(self, group: Mapping[str, Any], batch: list[tuple[torch.Tensor, torch.Tensor, dict[str, Any]]],
                 implementation: str) -> None:
        from memplan.kernels import smmf_cpu, smmf_triton

        scalars = _BatchScalars(group)
        call = smmf_triton.SMMFTritonCall if implementation == TRITON else smmf_cpu.SMMFCall
        self._call = call([_batch_tensor(group, param, grad, state, scalars.of(state["step"]))
                           for param, grad, state in batch])

    def run(self, group: Mapping[str, Any], grads: Sequence[torch.Tensor], states: Sequence[dict[str, Any]]) -> None:
        """Step every parameter (see :class:`memplan.optim.batches.PreparedBatch`)."""
        scalars = _BatchScalars(group)
        steps = [state["step"] for state in states]
        first = steps[0]
        if all(step == first for step in steps):
            self._call.run(grads, [scalars.of(first)])
            return
        index: dict[int, int] = {}
        which = [index.setdefault(step, len(index)) for step in steps]
        self._call.run(grads, [scalars.of(step) for step in index], which)


def _betas(group: Mapping[str, Any], step: int) -> tuple[float | None, float]:
    """beta1_t = beta1 growth^(t-1) (None without first moment) and beta2_t = 1 - t^decay_rate."""
    beta1 = group["beta1"]
    beta1_t = None if beta1 is None else beta1 * group["growth_rate"] ** (step - 1)
    return beta1_t, 1.0 - step ** group["decay_rate"]


@dataclass(frozen=True)
class _FactoredScalars:
    """The scalars of the factored step on scaled moments (see :func:`_update_factored`)."""

    keep_v: float
    """1 - beta2_t: what the new sums of S are multiplied by to give V_t's factors."""
    keep_m: float
    """1 - beta1_t (1.0 without first moment)."""
    prior_v: float
    """beta2_t / (1 - beta2_t): the previous row factor's weight in S."""
    prior_m: float
    """beta1_t / (1 - beta1_t) (0.0 without first moment)."""
    eps: float
    step_size: float

    @classmethod
    def of(cls, group: Mapping[str, Any], beta1_t: float | None, beta2_t: float) -> "_FactoredScalars":
        """The group's scalars at a step with these betas."""
        keep_v = 1.0 - beta2_t
        keep_m = 1.0 - beta1_t if beta1_t is not None else 1.0
        return cls(keep_v=keep_v, keep_m=keep_m, prior_v=beta2_t / keep_v,
                   prior_m=beta1_t / keep_m if beta1_t is not None else 0.0, eps=group["eps"] / math.sqrt(keep_v),
                   step_size=-learning_rate(group) * keep_m / math.sqrt(keep_v))


def _update_factored(group: Mapping[str, Any], weights: torch.Tensor, grads: torch.Tensor, state: dict[str, Any],
                     shard: Shard, reductions: PartialReductions, beta1_t: float | None,
                     beta2_t: float) -> Callable[[], None]:
    """The factored step, computed on scaled moments to save passes over the block:
    S = V_t / (1 - beta2_t) = G^2 + beta2_t / (1 - beta2_t) outer(r_V, c_V) is one addcmul, and
    F = M_t / (1 - beta1_t) = G + beta1_t / (1 - beta1_t) sign * outer(r_M, c_M) is one more; the
    factors (1 - beta) go back into the step size and the new row and column sums, which only
    vector-sized work touches. (1 - beta2_t) = t^decay_rate > 0 and 1 - beta1_t > 0 always.)

    This rank's range is updated now and its partial row and column sums are reduced with every
    other parameter's; the returned function stores the new factors from the totals."""
    first_moment = beta1_t is not None
    scales = _FactoredScalars.of(group, beta1_t, beta2_t)
    new_v = [torch.zeros_like(state["row_v"]), torch.zeros_like(state["col_v"])]
    new_m = [torch.zeros_like(state["row_v"]), torch.zeros_like(state["col_v"])] if first_moment else []
    update_range(
        group, weights, grads, local_tensor(state["sign"]) if first_moment else None,
        scaled_v=[state["row_v"] * scales.prior_v, state["col_v"]],
        scaled_m=[state["row_m"] * scales.prior_m, state["col_m"]] if first_moment else [],
        new_v=new_v, new_m=new_m, start=shard.start, stop=shard.stop, layout=state["layout"],
        eps=scales.eps, step_size=scales.step_size)
    reductions.add(shard, new_v + new_m)

    def store() -> None:
        _store_factors(state["row_v"], state["col_v"], new_v, scales.keep_v)
        if first_moment:
            _store_factors(state["row_m"], state["col_m"], new_m, scales.keep_m)

    return store


def update_range(group: Mapping[str, Any], weights: torch.Tensor, grads: torch.Tensor, signs: torch.Tensor | None,
                 scaled_v: list[torch.Tensor], scaled_m: list[torch.Tensor], new_v: list[torch.Tensor],
                 new_m: list[torch.Tensor], start: int, stop: int, layout: tuple[int, int], eps: float,
                 step_size: float) -> None:
    """SMMF's update of the elements ``[start, stop)`` of an n x m ``layout``: the per-range step
    that a sharded step runs on each rank, by the eager blocks or a one-pass kernel (``impl``).

    ``weights``, ``grads`` and ``signs`` (packed bits, or one bool each) hold the range only (signs
    packed from the range's own start); ``scaled_v`` and ``scaled_m`` are the replicated previous
    factors, row factor pre-scaled by beta_t / (1 - beta_t); the range's partial row and column
    sums of S = V_t / (1 - beta2_t) and |F| = |M_t| / (1 - beta1_t) are added to ``new_v`` and
    ``new_m``. ``eps`` and ``step_size`` are scaled the same way (see :func:`_update_factored`).
    """
    rows, cols = layout
    step = _FactoredStep(group=group, weights=weights, grads=grads, signs=signs, scaled_v=scaled_v,
                         scaled_m=scaled_m, new_v=new_v, new_m=new_m, eps=eps, step_size=step_size,
                         offset=start, stop=stop)
    implementation = resolve(group["impl"], weights.device, SMMF.kernels, SMMF_METHOD.auto_kernels)
    if implementation != EAGER:
        _run_kernel(implementation, step, cols)
        return
    fixed_bytes = 4 * (rows + cols) * (len(new_v) + len(new_m) + len(scaled_v) + len(scaled_m))
    packed = signs is not None and signs.dtype == torch.uint8
    for block, granules in partition((rows, cols), block_budget(group, fixed_bytes), _bytes_per_element(group, weights),
                                     row_multiple=8 if packed else 1, start=start, stop=stop):
        step.run(block, granules)


def _run_kernel(implementation: str, step: "_FactoredStep", cols: int) -> None:
    """The step's range through the one-pass kernel: :mod:`memplan.kernels.smmf_cpu` or
    :mod:`memplan.kernels.smmf_triton`."""
    from memplan.kernels import smmf_cpu, smmf_triton

    decay, coupled, negate = kernel_decay(step.group)
    first_moment = step.signs is not None
    arguments = (step.weights, step.grads, step.signs.view(-1) if first_moment else None, step.offset, cols,
                 tuple(step.scaled_v), tuple(step.scaled_m) if first_moment else None, tuple(step.new_v),
                 tuple(step.new_m) if first_moment else None,
                 smmf_cpu.SMMFScalars(step_size=step.step_size, eps=step.eps, decay=decay, coupled_decay=coupled,
                                      negate=negate))
    if implementation == COMPILED:
        smmf_cpu.smmf_range(*arguments, kernel_chunk_elements(step.group))
    else:
        smmf_triton.smmf_range(*arguments)


@dataclass
class _FactoredStep:
    """One SMMF step over one range of a parameter: the shared inputs, and the work on one block.

    The block's temporaries are locals of :meth:`run`, so they are freed before the next block
    allocates its own (a loop body would keep the previous block's alive). Blocks' flat offsets
    are the parameter's; ``offset`` is where the range (and the tensors holding it) starts.
    """

    group: Mapping[str, Any]
    weights: torch.Tensor
    grads: torch.Tensor
    signs: torch.Tensor | None
    scaled_v: list[torch.Tensor]
    scaled_m: list[torch.Tensor]
    new_v: list[torch.Tensor]
    new_m: list[torch.Tensor]
    eps: float
    step_size: float
    offset: int
    stop: int

    def run(self, block: Block, granules: list[Block]) -> None:
        """Decompress, update and recompress one block."""
        window = slice(block.flat_start - self.offset, block.flat_stop - self.offset)
        with updating(self.weights, self.grads, window, self.group) as (weight, gradient):
            gradient = gradient.view(block.shape)
            second = _outer_plus((gradient * gradient), self.scaled_v, block)
            reduce_granules(second, block, granules, self.new_v, torch.sum, "add")
            first = self._first_moment(block, gradient) if self.signs is not None else gradient
            weight.view(block.shape).addcdiv_(first, second.sqrt_().add_(self.eps), value=self.step_size)
            del second
        if self.signs is not None:
            self._store_signs(block, positive_signs(first).view(-1))
            reduce_granules(first.abs_(), block, granules, self.new_m, torch.sum, "add")

    def _first_moment(self, block: Block, gradient: torch.Tensor) -> torch.Tensor:
        """F = G + c * sign * outer(r_M, c_M) for this block, from the stored signs."""
        signs = self.signs
        start, count = block.flat_start - self.offset, block.flat_stop - block.flat_start
        if signs.dtype == torch.uint8:
            signed = unpack_signs(signs, count, start)
        else:
            signed = byte_signs(signs.view(-1)[start:start + count].view(torch.uint8))
        return _outer_plus(gradient, self.scaled_m, block, signed.view(block.shape))

    def _store_signs(self, block: Block, positive: torch.Tensor) -> None:
        signs = self.signs
        start = block.flat_start - self.offset
        if signs.dtype == torch.uint8:
            store_signs(signs, start, positive, last=block.flat_stop == self.stop)
        else:
            signs.view(-1)[start:start + positive.numel()].view(torch.uint8).copy_(positive)


def _outer_plus(base: torch.Tensor, factors: list[torch.Tensor], block: Block,
                signs: torch.Tensor | None = None) -> torch.Tensor:
    """base + (signs *) outer(row, col) restricted to the block, in two passes at most.

    ``base`` may be a view of the gradient, so the result is always a new tensor.
    """
    prefix, views = axis_pieces(factors, block)
    row = views[0] if not prefix else views[0] * prefix[0]
    if signs is None:
        return torch.addcmul(base, row, views[1]) if len(views) > 1 else torch.add(base, row)
    signed = signs.mul_(row)
    return torch.addcmul(base, signed, views[1]) if len(views) > 1 else base.add(signed)


def _store_factors(row: torch.Tensor, col: torch.Tensor, sums: list[torch.Tensor], scale: float) -> None:
    """New factors from the row and column sums of a scaled moment (times ``scale``), normalised."""
    row.copy_(sums[0]).mul_(scale)
    col.copy_(sums[1]).mul_(scale)
    normalize_factors_(row, col)


def _update_full(group: Mapping[str, Any], weights: torch.Tensor, grads: torch.Tensor, state: dict[str, Any],
                 beta1_t: float | None, beta2_t: float) -> None:
    """Vectors kept unfactored (vector_reshape=False): Adam-like moments with SMMF's schedules,
    elementwise, so a shard steps its range with no reduction."""
    exp_avg_sq = local_tensor(state["exp_avg_sq"]).view(-1)
    exp_avg = local_tensor(state["exp_avg"]).view(-1) if beta1_t is not None else None
    for block, _ in partition((weights.numel(),), block_budget(group, 0), 16):
        _full_block(group, weights, grads, exp_avg, exp_avg_sq, block, beta1_t, beta2_t)


def _full_block(group: Mapping[str, Any], weights: torch.Tensor, grads: torch.Tensor, exp_avg: torch.Tensor | None,
                exp_avg_sq: torch.Tensor, block: Block, beta1_t: float | None, beta2_t: float) -> None:
    window = slice(block.flat_start, block.flat_stop)
    with updating(weights, grads, window, group) as (weight, gradient):
        second = exp_avg_sq[window].mul_(beta2_t).addcmul_(gradient, gradient, value=1.0 - beta2_t)
        first = gradient if exp_avg is None else exp_avg[window].mul_(beta1_t).add_(gradient, alpha=1.0 - beta1_t)
        weight.addcdiv_(first, second.sqrt().add_(group["eps"]), value=-learning_rate(group))
