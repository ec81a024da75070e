"""A small character-level GRU language model on Python's own standard-library source code.

One of the workloads the bundled priors are fitted on (``benchmarks/fit_priors.py``). It was
first held out from them, to check that the priors rank the methods as training does; that check
spent, it joined the fit, and ``docstring_lm`` is the held-out workload now. It differs from ``char_lm`` in architecture (a recurrent network, no attention, no
normalisation layer, no position table) and in text (Python code, not the prose of the language
reference), but it is still a character-level language model.

The text is the source of nine pure-Python standard-library modules (about 500,000 characters),
read from the running interpreter's installation, so the workload needs no download; the exact
characters follow the Python version. Each module's first 90% trains and its last 10% is held out.
Characters outside printable ASCII (and newline) share one symbol, so the vocabulary is the same
on every version. Used by ``memplan trial`` (``training_batch``/``loss``/``eval_batches``) and by
``benchmarks/plan_quality.py``.
"""

from __future__ import annotations

import importlib.util
import string

import torch
from torch import nn

from text_windows import fixed_batches, next_token_loss, random_batch

MODULES = ("argparse", "configparser", "dataclasses", "difflib", "enum", "functools", "heapq", "statistics",
           "textwrap")
CONTEXT = 32
BATCH = 16
EVAL_BATCHES = 8
ALPHABET = "\n" + "".join(char for char in string.printable if char.isprintable())
UNKNOWN = len(ALPHABET)
VOCAB = len(ALPHABET) + 1


def encode(text: str) -> torch.Tensor:
    """The symbols of ``text``: its place in ``ALPHABET``, or ``UNKNOWN``."""
    index = {char: position for position, char in enumerate(ALPHABET)}
    return torch.tensor([index.get(char, UNKNOWN) for char in text], dtype=torch.long)


def _corpus() -> tuple[torch.Tensor, torch.Tensor]:
    """The training and held-out characters: each module's first 90% and last 10%."""
    train, held_out = [], []
    for module in MODULES:
        origin = importlib.util.find_spec(module).origin
        with open(origin, encoding="utf-8") as source:
            tokens = encode(source.read())
        split = int(len(tokens) * 0.9)
        train.append(tokens[:split])
        held_out.append(tokens[split:])
    return torch.cat(train), torch.cat(held_out)


TRAIN_TOKENS, HELD_OUT_TOKENS = _corpus()


class SourceGRU(nn.Module):
    """A character embedding, one GRU layer and a linear head over the characters."""

    def __init__(self, vocab: int = VOCAB, width: int = 32, hidden: int = 128) -> None:
        super().__init__()
        self.tokens = nn.Embedding(vocab, width)
        self.gru = nn.GRU(width, hidden, batch_first=True)
        self.head = nn.Linear(hidden, vocab)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        states, _ = self.gru(self.tokens(tokens))
        return self.head(states)


def build_model() -> nn.Module:
    """The model memplan trains."""
    return SourceGRU()


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
