"""A small character-level transformer language model on Python's own standard-library source code.

Held out from the bundled priors (``benchmarks/fit_priors.py`` never reads it). It is the kind of
model the priors were fitted on (``char_lm``: a small pre-norm transformer over characters) trained
on different text: the Python source of ``source_gru``'s nine modules instead of the language
reference's prose. It asks whether the priors carry over to another transformer on other data, the
case of a user who plans a transformer with the bundled priors; ``source_gru`` (same text, a
recurrent network) and ``source_words`` (a window MLP over words) ask the same across architectures.

The model differs from ``char_lm``'s in its details: 2 heads instead of 4, GELU instead of ReLU,
a 48-character context, and 97 symbols (printable ASCII, newline, one unknown). Used by
``memplan trial`` (``training_batch``/``loss``/``eval_batches``) and by ``benchmarks/plan_quality.py``.
"""

from __future__ import annotations

import torch
from torch import nn

from source_gru import HELD_OUT_TOKENS, TRAIN_TOKENS, VOCAB

CONTEXT = 48
BATCH = 16
EVAL_BATCHES = 8


class SourceTransformer(nn.Module):
    """Token and position embeddings, pre-norm GELU transformer blocks with a causal mask, a final
    norm and an untied linear head over the characters."""

    def __init__(self, vocab: int = VOCAB, width: int = 64, heads: int = 2, layers: int = 2) -> None:
        super().__init__()
        self.tokens = nn.Embedding(vocab, width)
        self.positions = nn.Embedding(CONTEXT, width)
        block = nn.TransformerEncoderLayer(width, heads, 4 * width, dropout=0.0, activation="gelu", batch_first=True,
                                           norm_first=True)
        self.blocks = nn.TransformerEncoder(block, layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(width)
        self.head = nn.Linear(width, vocab)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        length = tokens.shape[1]
        hidden = self.tokens(tokens) + self.positions(torch.arange(length, device=tokens.device))
        mask = nn.Transformer.generate_square_subsequent_mask(length, device=tokens.device)
        return self.head(self.norm(self.blocks(hidden, mask=mask, is_causal=True)))


def build_model() -> nn.Module:
    """The model memplan trains."""
    return SourceTransformer()


def _windows(tokens: torch.Tensor, start: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    offsets = start[:, None] + torch.arange(CONTEXT + 1)
    chunk = tokens[offsets]
    return chunk[:, :-1], chunk[:, 1:]


def training_batch(step: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Random windows of the training text (memplan seeds torch's generator per step)."""
    return _windows(TRAIN_TOKENS, torch.randint(0, len(TRAIN_TOKENS) - CONTEXT - 1, (BATCH,)))


def eval_batches() -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Fixed windows of the held-out text."""
    generator = torch.Generator().manual_seed(1234)
    return [_windows(HELD_OUT_TOKENS, torch.randint(0, len(HELD_OUT_TOKENS) - CONTEXT - 1, (BATCH,),
                                                    generator=generator))
            for _ in range(EVAL_BATCHES)]


def loss(model: nn.Module, batch: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    """Mean next-character cross-entropy (nats)."""
    inputs, targets = batch
    logits = model(inputs)
    return nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1))


def calibration_loss(model: nn.Module) -> torch.Tensor:
    """For ``memplan plan --calibrate``: the loss on a fresh training batch."""
    return loss(model, training_batch(0))
