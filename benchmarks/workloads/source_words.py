"""A small word-level language model (a fixed-window MLP) on Python standard-library source code.

Held out from the bundled priors (``benchmarks/fit_priors.py`` never reads it): a workload on which
``benchmarks/plan_quality.py --summary`` checks that the priors rank the methods as training does.
It differs from ``char_lm`` in architecture (a Bengio-style neural language model: the embeddings
of the last eight tokens, concatenated, one tanh layer, no attention and no normalisation), in
tokens (words, numbers and punctuation over a vocabulary of 2,000, so the output head is most of
the model and its classes are heavy-tailed, where adaptive methods are known to beat SGD) and in
text (Python code, not the prose of the language reference).

The text is the source of 27 standard-library modules (about 1.1 million characters, read from the
running interpreter's installation, so the exact tokens follow the Python version), none of them
those of ``source_gru``. Each module's first 90% trains and its last 10% is held out. Used by
``memplan trial`` (``training_batch``/``loss``/``eval_batches``) and by ``benchmarks/plan_quality.py``.
"""

from __future__ import annotations

import collections
import importlib.util
import re

import torch
from torch import nn

MODULES = ("ast", "base64", "bisect", "calendar", "cmd", "codeop", "contextlib", "copy", "csv", "fnmatch",
           "fractions", "gettext", "glob", "graphlib", "ipaddress", "locale", "operator", "pickle", "pprint",
           "random", "shlex", "string", "tarfile", "tokenize", "zipfile", "json.decoder", "json.encoder")
CONTEXT = 8
BATCH = 64
EVAL_BATCHES = 8
VOCAB_WORDS = 2000
TOKEN = re.compile(r"[A-Za-z_]+|\d+|[^\sA-Za-z_\d]")


def _corpus() -> tuple[torch.Tensor, torch.Tensor, int]:
    """Training and held-out token ids (each module's first 90% and last 10%) and the vocabulary size:
    the training text's most frequent words, then one id for every other word."""
    train, held_out = [], []
    for module in MODULES:
        with open(importlib.util.find_spec(module).origin, encoding="utf-8") as source:
            words = TOKEN.findall(source.read())
        split = int(len(words) * 0.9)
        train.append(words[:split])
        held_out.append(words[split:])
    counts = collections.Counter(word for words in train for word in words)
    ranked = sorted(counts, key=lambda word: (-counts[word], word))[:VOCAB_WORDS]
    index = {word: position for position, word in enumerate(ranked)}

    def encode(parts: list[list[str]]) -> torch.Tensor:
        return torch.tensor([index.get(word, VOCAB_WORDS) for words in parts for word in words], dtype=torch.long)

    return encode(train), encode(held_out), VOCAB_WORDS + 1


TRAIN_TOKENS, HELD_OUT_TOKENS, VOCAB = _corpus()


class WindowLM(nn.Module):
    """Embeddings of the last ``CONTEXT`` tokens, concatenated, a tanh hidden layer and a linear head."""

    def __init__(self, vocab: int = VOCAB, width: int = 32, hidden: int = 128) -> None:
        super().__init__()
        self.tokens = nn.Embedding(vocab, width)
        self.hidden = nn.Linear(CONTEXT * width, hidden)
        self.head = nn.Linear(hidden, vocab)

    def forward(self, window: torch.Tensor) -> torch.Tensor:
        return self.head(torch.tanh(self.hidden(self.tokens(window).flatten(1))))


def build_model() -> nn.Module:
    """The model memplan trains."""
    return WindowLM()


def _windows(tokens: torch.Tensor, start: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    return tokens[start[:, None] + torch.arange(CONTEXT)], tokens[start + CONTEXT]


def training_batch(step: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Random windows of the training tokens and the token after each (memplan seeds torch's generator per step)."""
    return _windows(TRAIN_TOKENS, torch.randint(0, len(TRAIN_TOKENS) - CONTEXT, (BATCH,)))


def eval_batches() -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Fixed windows of the held-out tokens."""
    generator = torch.Generator().manual_seed(1234)
    return [_windows(HELD_OUT_TOKENS, torch.randint(0, len(HELD_OUT_TOKENS) - CONTEXT, (BATCH,), generator=generator))
            for _ in range(EVAL_BATCHES)]


def loss(model: nn.Module, batch: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    """Mean next-token cross-entropy (nats)."""
    window, target = batch
    return nn.functional.cross_entropy(model(window), target)


def calibration_loss(model: nn.Module) -> torch.Tensor:
    """For ``memplan plan --calibrate``: the loss on a fresh training batch."""
    return loss(model, training_batch(0))
