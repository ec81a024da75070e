"""A small model for memplan's examples, with a calibration loss and the trial protocol.

    memplan analyze examples/model.py
    memplan plan examples/model.py --budget 64KiB --calibrate
    memplan trial examples/model.py --steps 100
    python examples/train_with_plan.py plan.yaml

The task is synthetic and learnable: a sequence of CONTEXT tokens is labelled by its first token
(the others are noise), so the loss of a working optimizer falls quickly.
"""

import torch
from torch import nn

VOCAB = 64
CONTEXT = 8
DIM = 32
HIDDEN = 128
CLASSES = 10


class TinyClassifier(nn.Module):
    """Token embedding, flattened context, a two-layer MLP with a LayerNorm."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(VOCAB, DIM)
        self.hidden = nn.Linear(CONTEXT * DIM, HIDDEN)
        self.norm = nn.LayerNorm(HIDDEN)
        self.out = nn.Linear(HIDDEN, CLASSES)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        features = self.embed(tokens).flatten(1)
        return self.out(self.norm(torch.relu(self.hidden(features))))


def build_model() -> TinyClassifier:
    return TinyClassifier()


def synthetic_batch(size: int = 128, device: torch.device | str = "cpu",
                    generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Random token sequences, labelled by their first token modulo CLASSES (the other tokens are noise)."""
    tokens = torch.randint(0, VOCAB, (size, CONTEXT), generator=generator).to(device)
    labels = tokens[:, 0] % CLASSES
    return tokens, labels


def calibration_loss(model: nn.Module) -> torch.Tensor:
    """memplan's calibration protocol: the loss on a fresh batch, as a scalar tensor."""
    device = next(model.parameters()).device
    tokens, labels = synthetic_batch(device=device)
    return nn.functional.cross_entropy(model(tokens), labels)


def training_batch(step: int) -> tuple[torch.Tensor, torch.Tensor]:
    """memplan trial's protocol: the batch of training step ``step`` (memplan seeds torch's generator)."""
    return synthetic_batch()


def eval_batches() -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Held-out batches for memplan trial, fixed by their own generator."""
    return [synthetic_batch(generator=torch.Generator().manual_seed(index)) for index in range(4)]


def loss(model: nn.Module, batch: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    """memplan trial's protocol: the scalar loss of ``model`` on ``batch``."""
    tokens, labels = batch
    return nn.functional.cross_entropy(model(tokens.to(next(model.parameters()).device)), labels.to(tokens.device))
