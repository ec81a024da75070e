"""A deeper character-level transformer language model on the docstrings of Python's standard library.

Held out from the bundled priors (``benchmarks/fit_priors.py`` never reads it). It was added, and its
design fixed, before it was ever trained, when the first held-out workloads (``source_lm``,
``source_gru``) had been looked at and then joined the fit: it is the fresh test of whether the
priors rank the methods as training does on a model they were not fitted on.

The text is every module, class and function docstring of 29 standard-library modules that no other
workload reads (about 360,000 characters of English prose about code, read from the running
interpreter's installation, so the workload needs no download). Each module's first 90% of
docstring text trains and its last 10% is held out. Characters outside printable ASCII (and newline)
share one symbol, as in ``source_gru``.

The model is ``char_lm``'s transformer made deeper and narrower: 3 pre-norm layers of width 48,
4 heads, GELU, a 40-character context. Used by ``memplan trial``
(``training_batch``/``loss``/``eval_batches``) and by ``benchmarks/plan_quality.py``.
"""

from __future__ import annotations

import ast
import importlib.util

import torch
from torch import nn

from char_lm import CharTransformer
from source_gru import VOCAB, encode
from text_windows import fixed_batches, next_token_loss, random_batch

MODULES = ("asyncio.base_events", "asyncio.streams", "asyncio.tasks", "collections", "datetime", "decimal",
           "doctest", "email._header_value_parser", "email.feedparser", "email.message", "email.utils",
           "ftplib", "http.client", "http.cookiejar", "http.server", "imaplib", "inspect", "logging",
           "logging.handlers", "mailbox", "optparse", "pathlib", "pdb", "shutil", "smtplib", "subprocess",
           "threading", "typing", "urllib.request")
CONTEXT = 40
BATCH = 16
EVAL_BATCHES = 8


def _docstrings(module: str) -> str:
    """Every docstring in ``module``'s source, in the order they appear, one blank line apart."""
    origin = importlib.util.find_spec(module).origin
    with open(origin, encoding="utf-8") as source:
        tree = ast.parse(source.read())
    nodes = (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)
    found = [node for node in ast.walk(tree) if isinstance(node, nodes) and ast.get_docstring(node)]
    found.sort(key=lambda node: getattr(node, "lineno", 0))
    return "\n\n".join(ast.get_docstring(node) for node in found)


def _corpus() -> tuple[torch.Tensor, torch.Tensor]:
    """The training and held-out characters: each module's first 90% and last 10%."""
    train, held_out = [], []
    for module in MODULES:
        tokens = encode(_docstrings(module))
        split = int(len(tokens) * 0.9)
        train.append(tokens[:split])
        held_out.append(tokens[split:])
    return torch.cat(train), torch.cat(held_out)


TRAIN_TOKENS, HELD_OUT_TOKENS = _corpus()


def build_model() -> nn.Module:
    """The model memplan trains: 3 layers of width 48, 4 heads, GELU, 40 characters of context."""
    return CharTransformer(VOCAB, width=48, heads=4, layers=3, context=CONTEXT, activation="gelu")


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
