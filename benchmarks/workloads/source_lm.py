"""A small character-level transformer language model on Python's own standard-library source code.

One of the workloads the bundled priors are fitted on (``benchmarks/fit_priors.py``). It was first
held out from them, like ``source_gru``, and joined the fit once that check was spent;
``docstring_lm`` is the held-out transformer now. It is ``char_lm``'s kind of model (a small
pre-norm transformer over characters) on different text: the Python source of ``source_gru``'s nine
modules instead of the language reference's prose.

The model differs from ``char_lm``'s in its details: 2 heads instead of 4, GELU instead of ReLU,
a 48-character context, and 97 symbols (printable ASCII, newline, one unknown). Used by
``memplan trial`` (``training_batch``/``loss``/``eval_batches``) and by ``benchmarks/plan_quality.py``.
"""

from __future__ import annotations

import torch
from torch import nn

from char_lm import CharTransformer
from source_gru import HELD_OUT_TOKENS, TRAIN_TOKENS, VOCAB
from text_windows import fixed_batches, next_token_loss, random_batch

CONTEXT = 48
BATCH = 16
EVAL_BATCHES = 8


def build_model() -> nn.Module:
    """The model memplan trains: char_lm's transformer with 2 heads, GELU and a 48-character context."""
    return CharTransformer(VOCAB, heads=2, context=CONTEXT, activation="gelu")


def training_batch(step: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Random windows of the training text (memplan seeds torch's generator per step)."""
    return random_batch(TRAIN_TOKENS, CONTEXT, BATCH)


def eval_batches() -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Fixed windows of the held-out text."""
    return fixed_batches(HELD_OUT_TOKENS, CONTEXT, BATCH, EVAL_BATCHES)


def loss(model: nn.Module, batch: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    """Mean next-character cross-entropy (nats)."""
    return next_token_loss(model, batch)


def calibration_loss(model: nn.Module) -> torch.Tensor:
    """For ``memplan plan --calibrate``: the loss on a fresh training batch."""
    return loss(model, training_batch(0))
