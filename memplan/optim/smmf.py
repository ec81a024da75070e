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

from typing import Any, Iterable, Mapping

import torch

from memplan.methods.smmf import SMMF_METHOD
from memplan.optim.base import (DEFAULT_CHUNK_BYTES, LayoutSource, MemplanOptimizer, block_budget, check_choice,
                                check_range, decay_weights, effective_gradient, flat_view, working_copy)
from memplan.optim.blocks import axis_pieces, combine_pieces, partition, reduce_granules

_BIT_VALUES: dict[torch.device, torch.Tensor] = {}


def _bit_values(device: torch.device) -> torch.Tensor:
    """[1, 2, 4, ..., 128] as uint8: element j of a byte is bit j (little-endian within the byte)."""
    if device not in _BIT_VALUES:
        _BIT_VALUES[device] = torch.tensor([1, 2, 4, 8, 16, 32, 64, 128], dtype=torch.uint8, device=device)
    return _BIT_VALUES[device]


def unpack_signs(packed: torch.Tensor, count: int) -> torch.Tensor:
    """The first ``count`` bits of a packed uint8 vector, as a bool vector (True where positive)."""
    bits = torch.bitwise_and(packed.unsqueeze(1), _bit_values(packed.device))
    return bits.view(-1)[:count].bool()


def pack_signs(positive: torch.Tensor, out: torch.Tensor) -> None:
    """Pack a flat bool vector into ``out`` (uint8, ceil(len / 8) bytes), 8 signs per byte."""
    as_bytes = positive.view(torch.uint8)
    remainder = as_bytes.numel() % 8
    if remainder:
        as_bytes = torch.cat([as_bytes, as_bytes.new_zeros(8 - remainder)])
    torch.sum(as_bytes.view(-1, 8) * _bit_values(out.device), dim=1, dtype=torch.uint8, out=out)


def normalize_factors_(row: torch.Tensor, col: torch.Tensor) -> None:
    """Divide the shorter side's factor by its total (row when n < m, else column); 0 stays 0."""
    target = row if row.numel() < col.numel() else col
    total = target.sum()
    target.div_(torch.where(total > 0, total, torch.ones_like(total)))


def _bytes_per_element(group: Mapping[str, Any], param: torch.Tensor) -> int:
    """Peak temporaries of one block, per element (see _update_factored)."""
    per_element = 4 * 4 + 4  # decompressed M, -M, V, sqrt(V) + eps, and sign bytes
    if param.dtype != torch.float32:
        per_element += 8  # fp32 copies of the gradient and weight blocks
    if group["maximize"] or (group["weight_decay"] and group["weight_decay_mode"] == "adam"):
        per_element += 4
    return per_element


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
        matricization: optional per-parameter (n, m) views, keyed by name or tensor, or a
            function ``(name, shape) -> (n, m)``.
        chunk_bytes: bound on the extra memory of one step (None: each tensor in one piece).
        maximize: maximize the objective instead of minimizing.
    """

    method = SMMF_METHOD
    layout_key = "matricization"

    def __init__(self, params: Iterable[Any], lr: float = 1e-3, beta1: float | None = 0.9, eps: float = 1e-8,
                 weight_decay: float = 0.0, decay_rate: float = -0.5, growth_rate: float = 0.999,
                 vector_reshape: bool = True, weight_decay_mode: str = "adamw", sign_bits: int = 1,
                 matricization: LayoutSource = None, chunk_bytes: int = DEFAULT_CHUNK_BYTES,
                 maximize: bool = False) -> None:
        defaults = dict(lr=lr, beta1=beta1, eps=eps, weight_decay=weight_decay, decay_rate=decay_rate,
                        growth_rate=growth_rate, vector_reshape=vector_reshape, weight_decay_mode=weight_decay_mode,
                        sign_bits=sign_bits, matricization=matricization, chunk_bytes=chunk_bytes, maximize=maximize)
        super().__init__(params, defaults)

    def _check_group(self, group: Mapping[str, Any]) -> None:
        super()._check_group(group)
        check_range("beta1", group["beta1"], low=0.0, high=1.0, high_open=True, allow_none=True)
        check_range("decay_rate", group["decay_rate"], low=-1.0, high=0.0)
        check_range("growth_rate", group["growth_rate"], low=0.0, high=1.0, low_open=True)
        check_choice("sign_bits", group["sign_bits"], (1, 8))
        check_choice("vector_reshape", group["vector_reshape"], (False, True))

    def _update(self, group: Mapping[str, Any], param: torch.Tensor, grad: torch.Tensor,
                state: dict[str, Any]) -> None:
        step = state["step"]
        beta1 = group["beta1"]
        beta1_t = None if beta1 is None else beta1 * group["growth_rate"] ** (step - 1)
        beta2_t = 1.0 - step ** group["decay_rate"]
        if state["layout"] is None:
            _update_full(group, param, grad, state, beta1_t, beta2_t)
        else:
            _update_factored(group, param, grad, state, beta1_t, beta2_t)


def _update_factored(group: Mapping[str, Any], param: torch.Tensor, grad: torch.Tensor, state: dict[str, Any],
                     beta1_t: float | None, beta2_t: float) -> None:
    rows, cols = state["layout"]
    weights, grads = flat_view(param), flat_view(grad)
    row_v, col_v = state["row_v"], state["col_v"]
    first_moment = beta1_t is not None and "row_m" in state
    signs = state["sign"] if first_moment else None
    packed = signs is not None and signs.dtype == torch.uint8
    new_v = [torch.zeros_like(row_v), torch.zeros_like(col_v)]
    new_m = [torch.zeros_like(row_v), torch.zeros_like(col_v)] if first_moment else []
    scaled_v = [row_v * beta2_t, col_v]
    scaled_m = [state["row_m"] * beta1_t, state["col_m"]] if first_moment else []
    fixed_bytes = 4 * (rows + cols) * (len(new_v) + len(new_m) + len(scaled_v) + len(scaled_m))
    plan = partition((rows, cols), block_budget(group, fixed_bytes), _bytes_per_element(group, param),
                     row_multiple=8 if packed else 1)
    for block, granules in plan:
        window = slice(block.flat_start, block.flat_stop)
        weight_block = weights[window]
        weight = working_copy(weight_block)
        decay_weights(weight, group)
        gradient = effective_gradient(grads[window], weight, group).view(block.shape)
        second = combine_pieces(*axis_pieces(scaled_v, block), torch.mul)
        second.addcmul_(gradient, gradient, value=1.0 - beta2_t)
        if first_moment:
            magnitude = combine_pieces(*axis_pieces(scaled_m, block), torch.mul)
            if packed:
                positive = unpack_signs(signs[block.flat_start // 8:(block.flat_stop + 7) // 8],
                                        block.flat_stop - block.flat_start)
            else:
                positive = signs.view(-1)[window]
            first = torch.where(positive.view(block.shape), magnitude, magnitude.neg())
            first.add_(gradient, alpha=1.0 - beta1_t)
            del magnitude, positive
        else:
            first = gradient
        weight.view(block.shape).addcdiv_(first, second.sqrt().add_(group["eps"]), value=-group["lr"])
        if weight is not weight_block:
            weight_block.copy_(weight)
        reduce_granules(second, block, granules, new_v, torch.sum, "add")
        if first_moment:
            positive_now = first.gt(0).view(-1)
            if packed:
                pack_signs(positive_now, signs[block.flat_start // 8:(block.flat_stop + 7) // 8])
            else:
                signs.view(-1)[window].copy_(positive_now)
            reduce_granules(first.abs_(), block, granules, new_m, torch.sum, "add")
    _store_factors(row_v, col_v, new_v)
    if first_moment:
        _store_factors(state["row_m"], state["col_m"], new_m)


def _store_factors(row: torch.Tensor, col: torch.Tensor, sums: list[torch.Tensor]) -> None:
    row.copy_(sums[0])
    col.copy_(sums[1])
    normalize_factors_(row, col)


def _update_full(group: Mapping[str, Any], param: torch.Tensor, grad: torch.Tensor, state: dict[str, Any],
                 beta1_t: float | None, beta2_t: float) -> None:
    """Vectors kept unfactored (vector_reshape=False): Adam-like moments with SMMF's schedules."""
    weights, grads = flat_view(param), flat_view(grad)
    exp_avg_sq = state["exp_avg_sq"].view(-1)
    exp_avg = state["exp_avg"].view(-1) if "exp_avg" in state and beta1_t is not None else None
    for block, _ in partition((weights.numel(),), block_budget(group, 0), 16):
        window = slice(block.flat_start, block.flat_stop)
        weight_block = weights[window]
        weight = working_copy(weight_block)
        decay_weights(weight, group)
        gradient = effective_gradient(grads[window], weight, group)
        second = exp_avg_sq[window].mul_(beta2_t).addcmul_(gradient, gradient, value=1.0 - beta2_t)
        first = gradient if exp_avg is None else exp_avg[window].lerp_(gradient, 1.0 - beta1_t)
        weight.addcdiv_(first, second.sqrt().add_(group["eps"]), value=-group["lr"])
        if weight is not weight_block:
            weight_block.copy_(weight)
