"""A small convolutional classifier on real handwritten digits that ship with scikit-learn.

scikit-learn's ``load_digits`` holds 1,797 8x8 grey images of handwritten digits (the UCI
optical-recognition set), bundled in the package, so the workload needs no download. 1,500 images
train, the remaining 297 are held out. Two 3x3 convolutions, then a linear classifier (``fc``, the
output head). Needs ``pip install scikit-learn``.
"""

from __future__ import annotations

import torch
from torch import nn

BATCH = 32
TRAIN = 1500


def _images() -> tuple[torch.Tensor, torch.Tensor]:
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = torch.tensor(digits.images, dtype=torch.float32).unsqueeze(1) / 16.0
    return (images - images[:TRAIN].mean()) / images[:TRAIN].std(), torch.tensor(digits.target, dtype=torch.long)


IMAGES, LABELS = _images()


class DigitsNet(nn.Module):
    """conv 1->16, 2x2 max-pool, conv 16->32, linear 512->10 (no normalisation layer: with one, SGD
    matches Adam on this small task and the quality scale loses its meaning)."""

    def __init__(self, width: int = 16) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, width, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(width, 2 * width, 3, padding=1), nn.ReLU(), nn.Flatten())
        self.fc = nn.Linear(2 * width * 16, 10)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.fc(self.features(images))


def build_model() -> nn.Module:
    """The model memplan trains."""
    return DigitsNet()


def training_batch(step: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A random batch of training images (memplan seeds torch's generator per step)."""
    chosen = torch.randint(0, TRAIN, (BATCH,))
    return IMAGES[chosen], LABELS[chosen]


def eval_batches() -> list[tuple[torch.Tensor, torch.Tensor]]:
    """The held-out images, in one batch."""
    return [(IMAGES[TRAIN:], LABELS[TRAIN:])]


def loss(model: nn.Module, batch: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    """Mean cross-entropy of the digit classes (nats)."""
    images, labels = batch
    return nn.functional.cross_entropy(model(images), labels)


def calibration_loss(model: nn.Module) -> torch.Tensor:
    """For ``memplan plan --calibrate``: the loss on a fresh training batch."""
    return loss(model, training_batch(0))
