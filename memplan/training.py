"""Short matched training runs on the user's own model: the training protocol and one run.

Protocol: the model file (a ``model.py``, see :mod:`memplan.loaders.python_file`) defines

- ``training_batch(step: int)``: the batch of training step ``step`` (anything ``loss`` takes).
  memplan seeds torch's random generator from (seed, step) before each call, so a batch drawn
  with torch's generator, or indexed by ``step``, is the same in every run of a seed;
- ``loss(model, batch) -> Tensor``: the scalar training loss of ``model`` on ``batch``;
- optionally ``eval_batches()``: an iterable of held-out batches. A run's loss is the mean of
  ``loss`` over them after training (in ``model.eval()`` mode); without them, the mean training
  loss of the last tenth of the steps.

Every run of a seed starts from the same initial weights (the model built once under that seed)
and sees the same batches; only the optimizer and its learning rate differ. A run whose loss
becomes NaN or infinite stops there and counts as diverged (loss ``inf``).
"""

from __future__ import annotations

import copy
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch

from memplan.errors import SourceError

PROTOCOL_FUNCTIONS = ("training_batch", "loss")
"""The functions a model file needs for ``memplan trial``."""

SCHEDULES = ("constant", "cosine", "linear")
"""Learning-rate shapes after warm-up: held, cosine decay to zero, linear decay to zero."""


@dataclass(frozen=True)
class Schedule:
    """How a run's learning rate moves: linear warm-up over ``warmup`` steps, then ``shape``; the
    gradient's global norm is clipped to ``clip`` (None: no clipping)."""

    steps: int
    shape: str = "cosine"
    warmup: int = 0
    clip: float | None = 1.0

    def __post_init__(self) -> None:
        if self.steps < 1:
            raise SourceError(f"--steps must be at least 1, got {self.steps}")
        if self.shape not in SCHEDULES:
            raise SourceError(f"unknown schedule {self.shape!r} (valid: {', '.join(SCHEDULES)})")
        if not 0 <= self.warmup < self.steps:
            raise SourceError(f"--warmup must be in [0, steps), got {self.warmup}")
        if self.clip is not None and not self.clip > 0:
            raise SourceError(f"--clip must be > 0, got {self.clip}")

    def factor(self, step: int) -> float:
        """The learning rate at ``step`` (0-based) as a fraction of the peak."""
        if step < self.warmup:
            return (step + 1) / (self.warmup + 1)
        if self.shape == "constant":
            return 1.0
        progress = (step - self.warmup) / max(1, self.steps - self.warmup)
        if self.shape == "linear":
            return 1.0 - progress
        return 0.5 * (1.0 + math.cos(math.pi * progress))


@dataclass
class Workload:
    """A model file's model, built once under one seed, and its training protocol."""

    path: Path
    model: torch.nn.Module
    initial: dict[str, torch.Tensor]
    training_batch: Callable[[int], Any]
    loss_function: Callable[[torch.nn.Module, Any], torch.Tensor]
    eval_batches: list[Any] | None
    seed: int

    @classmethod
    def load(cls, path: Path, entry: str | None = None, device: str = "cpu", seed: int = 0) -> "Workload":
        """Import ``path``, build its model on ``device`` under ``seed`` and check its protocol."""
        from memplan.loaders.python_file import load_model_file, user_code

        torch.manual_seed(seed)
        module, model = load_model_file(path, entry, device)
        missing = [name for name in PROTOCOL_FUNCTIONS if not callable(getattr(module, name, None))]
        if missing:
            raise SourceError(f"{path}: memplan trial needs {' and '.join(f'{name}()' for name in missing)}: "
                              f"training_batch(step) -> batch and loss(model, batch) -> scalar Tensor "
                              f"(see docs/trial.md)")
        if any(param.is_meta for param in model.parameters()):
            raise SourceError(f"{path}: the model has meta tensors on {device}: build it with real weights")
        evaluation = getattr(module, "eval_batches", None)
        batches = None
        if callable(evaluation):
            torch.manual_seed(seed)
            with user_code(path, "calling eval_batches()"):
                batches = list(evaluation())
            if not batches:
                raise SourceError(f"{path}: eval_batches() gave no batches")
        return cls(path=path, model=model, initial=copy.deepcopy(model.state_dict()),
                   training_batch=module.training_batch, loss_function=module.loss, eval_batches=batches, seed=seed)

    @property
    def named_trainable(self) -> list[tuple[str, torch.nn.Parameter]]:
        """The model's trainable parameters, by name."""
        return [(name, param) for name, param in self.model.named_parameters() if param.requires_grad]

    def reset(self) -> torch.nn.Module:
        """The model with its initial weights again, gradients cleared, in training mode."""
        self.model.load_state_dict(self.initial)
        self.model.zero_grad(set_to_none=True)
        self.model.train()
        return self.model

    def batch(self, step: int) -> Any:
        """The batch of ``step``, drawn with torch's generator seeded from (seed, step)."""
        from memplan.loaders.python_file import user_code

        torch.manual_seed(self.seed * 1_000_003 + step)
        with user_code(self.path, f"calling training_batch({step})"):
            return self.training_batch(step)

    def loss(self, batch: Any) -> torch.Tensor:
        """The model's loss on ``batch``; SourceError unless it is a scalar tensor."""
        from memplan.loaders.python_file import user_code

        with user_code(self.path, "calling loss(model, batch)"):
            value = self.loss_function(self.model, batch)
        if not isinstance(value, torch.Tensor) or value.numel() != 1:
            found = type(value).__name__ + (str(list(value.shape)) if isinstance(value, torch.Tensor) else "")
            raise SourceError(f"{self.path}: loss(model, batch) must return a scalar tensor, got {found}")
        return value

    def evaluate(self) -> float | None:
        """Mean held-out loss (None without ``eval_batches``)."""
        if self.eval_batches is None:
            return None
        self.model.eval()
        with torch.no_grad():
            total = sum(float(self.loss(batch)) for batch in self.eval_batches)
        self.model.train()
        return total / len(self.eval_batches)


@dataclass(frozen=True)
class RunResult:
    """The outcome of one training run."""

    loss: float
    """Held-out loss (or the last tenth's mean training loss); ``inf`` when the run diverged."""
    diverged: bool
    steps_run: int
    seconds: float
    state_bytes: int


def train(workload: Workload, make_optimizer: Callable[[torch.nn.Module], torch.optim.Optimizer],
          schedule: Schedule) -> RunResult:
    """Train ``workload``'s model from its initial weights with the optimizer ``make_optimizer``
    builds, under ``schedule``; the optimizer's learning rates are its groups' peaks."""
    from memplan.measure import state_storage_bytes

    model = workload.reset()
    optimizer = make_optimizer(model)
    peaks = [group["lr"] for group in optimizer.param_groups]
    params = [param for _, param in workload.named_trainable]
    tail = max(1, schedule.steps // 10)
    tail_losses: list[float] = []
    started = time.perf_counter()
    for step in range(schedule.steps):
        factor = schedule.factor(step)
        for group, peak in zip(optimizer.param_groups, peaks):
            group["lr"] = peak * factor
        optimizer.zero_grad(set_to_none=True)
        loss = workload.loss(workload.batch(step))
        value = loss.detach().item()
        if not math.isfinite(value):
            return RunResult(math.inf, True, step, time.perf_counter() - started, state_storage_bytes(optimizer))
        loss.backward()
        if schedule.clip is not None:
            torch.nn.utils.clip_grad_norm_(params, schedule.clip)
        optimizer.step()
        if step >= schedule.steps - tail:
            tail_losses.append(value)
    held_out = workload.evaluate()
    final = held_out if held_out is not None else sum(tail_losses) / len(tail_losses)
    diverged = not math.isfinite(final)
    return RunResult(math.inf if diverged else final, diverged, schedule.steps, time.perf_counter() - started,
                     state_storage_bytes(optimizer))

