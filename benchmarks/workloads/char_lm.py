"""A small character-level transformer language model on real text that ships with Python.

The text is CPython's own documentation of the language (``pydoc_data.topics``, about 465,000
characters), so the workload needs no download. The first 90% trains, the last 10% is held out.
The model is a 2-layer pre-norm transformer (d = 64, 4 heads, 32 characters of context) with learned positions and an
untied output head: every role memplan probes (embedding, head, vectors, hidden matrices) is
present. Used by ``memplan trial`` (``training_batch``/``loss``/``eval_batches``) and by the
quality benchmarks in ``benchmarks/plan_quality.py``.
"""

from __future__ import annotations

import torch
from torch import nn

from text_windows import fixed_batches, next_token_loss, random_batch

CONTEXT = 32
BATCH = 16
EVAL_BATCHES = 8


def _corpus() -> tuple[torch.Tensor, int]:
    import pydoc_data.topics

    text = "".join(pydoc_data.topics.topics[key] for key in sorted(pydoc_data.topics.topics))
    alphabet = sorted(set(text))
    index = {char: position for position, char in enumerate(alphabet)}
    return torch.tensor([index[char] for char in text], dtype=torch.long), len(alphabet)


TOKENS, VOCAB = _corpus()
SPLIT = int(len(TOKENS) * 0.9)


class CharTransformer(nn.Module):
    """Token and position embeddings, pre-norm transformer blocks with a causal mask, a final norm
    and a linear head over the characters."""

    def __init__(self, vocab: int = VOCAB, width: int = 64, heads: int = 4, layers: int = 2, context: int = CONTEXT,
                 activation: str = "relu") -> None:
        super().__init__()
        self.tokens = nn.Embedding(vocab, width)
        self.positions = nn.Embedding(context, width)
        block = nn.TransformerEncoderLayer(width, heads, 4 * width, dropout=0.0, activation=activation,
                                           batch_first=True, norm_first=True)
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
    return CharTransformer()


def training_batch(step: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Random windows of the training text (memplan seeds torch's generator per step)."""
    return random_batch(TOKENS[:SPLIT], CONTEXT, BATCH)


def eval_batches() -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Fixed windows of the held-out text."""
    return fixed_batches(TOKENS[SPLIT:], CONTEXT, BATCH, EVAL_BATCHES)


def loss(model: nn.Module, batch: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    """Mean next-character cross-entropy (nats)."""
    return next_token_loss(model, batch)


def calibration_loss(model: nn.Module) -> torch.Tensor:
    """For ``memplan plan --calibrate``: the loss on a fresh training batch."""
    return loss(model, training_batch(0))
