"""Windows of a token sequence for the language-model workloads (``char_lm``, ``source_gru``,
``source_lm``): each window's inputs and its next tokens, random training batches, fixed held-out
batches, and the next-token loss. Not a workload itself: the workloads import it."""

from __future__ import annotations

import torch
from torch import nn


def windows(tokens: torch.Tensor, start: torch.Tensor, context: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The ``context`` tokens from each ``start`` and, shifted by one, the tokens that follow them."""
    chunk = tokens[start[:, None] + torch.arange(context + 1)]
    return chunk[:, :-1], chunk[:, 1:]


def random_batch(tokens: torch.Tensor, context: int, batch: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``batch`` windows at random places of ``tokens`` (torch's generator, which memplan seeds per step)."""
    return windows(tokens, torch.randint(0, len(tokens) - context - 1, (batch,)), context)


def fixed_batches(tokens: torch.Tensor, context: int, batch: int, count: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """``count`` batches of windows at places drawn once from a fixed seed: the same in every run."""
    generator = torch.Generator().manual_seed(1234)
    return [windows(tokens, torch.randint(0, len(tokens) - context - 1, (batch,), generator=generator), context)
            for _ in range(count)]


def next_token_loss(model: nn.Module, batch: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    """Mean next-token cross-entropy (nats) over every position of every window."""
    inputs, targets = batch
    logits = model(inputs)
    return nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1))
