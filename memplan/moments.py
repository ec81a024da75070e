"""Gradient second moments: how far each candidate's factored second moment is from the exact one.

(This is ``memplan plan --calibrate``, data-aware quality; measuring a device for the cost model
is :mod:`memplan.timing`.)

Protocol: the model file defines ``calibration_loss(model) -> Tensor``, a scalar loss on a fresh
(random or real) batch each call, or ``memplan trial``'s ``training_batch(step)`` and
``loss(model, batch)`` (the batches of steps 0, 1, ... are used). memplan builds the model on the chosen device, takes K
gradient samples and forms the exact diagonal second moment V = mean_k G_k^2 of every
trainable parameter. Each candidate layout implies an estimate V_hat, of the kind its method declares
(:meth:`memplan.methods.Method.moment_estimate`):

- ``exact`` (adam, adagrad, unfactored vectors): V itself;
- ``scalar`` (sgd, et_inf): the mean of V;
- ``rank_one`` in the layout's view (SMMF's matricization, an ET tensor index) and
  ``trailing_rank_one`` (Adafactor's and CAME's last two dims per leading index):
  prod_i S_i / total^(p-1), with S_i the slice sums of V along axis i; exactly V when V is
  rank-one in that view;
- ``cover`` (SM3): min over axes of the slice maxima of V in the layout's view.

The distortion D is the variance over elements of the log-ratio of the implied step sizes,
0.5 * (log V - log V_hat): zero when V_hat is V up to a constant (a constant is the learning
rate's business), growing as the layout loses per-element information.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Mapping

import torch

from memplan.errors import SourceError, SpecError
from memplan.methods import ParamState, as_spec, get_method
from memplan.profile import ModelProfile

CALIBRATION_FUNCTION = "calibration_loss"


def measure_moments(path: Path, entry: str | None = None, device: str = "cpu", samples: int = 8,
                    seed: int = 0) -> "GradientMoments":
    """Measure the second moments of the model in ``path`` (see :func:`second_moments`)."""
    moments = second_moments(path, entry, device, samples, seed)
    return GradientMoments(moments=moments, source=str(path), samples=samples, device=device)


def second_moments(path: Path, entry: str | None = None, device: str = "cpu", samples: int = 8,
                   seed: int = 0) -> dict[str, torch.Tensor]:
    """Mean squared gradient of every trainable parameter over ``samples`` calls of the file's
    ``calibration_loss(model)``, keyed by parameter name (fp32, on ``device``)."""
    from memplan.loaders.python_file import load_model_file, user_code

    if samples < 1:
        raise SourceError(f"--samples must be at least 1, got {samples}")
    module, model = load_model_file(path, entry, device)
    loss_function = getattr(module, CALIBRATION_FUNCTION, None)
    batch, batch_loss = getattr(module, "training_batch", None), getattr(module, "loss", None)
    if not callable(loss_function) and callable(batch) and callable(batch_loss):
        # memplan trial's protocol serves too: the loss on the batches of steps 0, 1, ...
        steps = iter(range(samples))

        def loss_function(model: torch.nn.Module) -> torch.Tensor:
            return batch_loss(model, batch(next(steps)))
    if not callable(loss_function):
        raise SourceError(f"{path}: --calibrate needs a function {CALIBRATION_FUNCTION}(model) -> Tensor "
                          f"returning a scalar loss on a fresh batch (or memplan trial's training_batch(step) "
                          f"and loss(model, batch))")
    torch.manual_seed(seed)
    named = [(name, param) for name, param in model.named_parameters() if param.requires_grad]
    moments = {name: torch.zeros(param.shape, dtype=torch.float32, device=param.device) for name, param in named}
    for _ in range(samples):
        model.zero_grad(set_to_none=True)
        with user_code(path, f"calling {CALIBRATION_FUNCTION}"):
            loss = loss_function(model)
            if not isinstance(loss, torch.Tensor) or loss.numel() != 1:
                raise SourceError(f"{path}: {CALIBRATION_FUNCTION} must return a scalar tensor, got "
                                  f"{type(loss).__name__}{'' if not isinstance(loss, torch.Tensor) else list(loss.shape)}")
            loss.backward()
        for name, param in named:
            if param.grad is not None:
                moments[name].addcmul_(param.grad.float(), param.grad.float(), value=1.0 / samples)
    return moments


def estimate(state: ParamState, moment: torch.Tensor) -> torch.Tensor:
    """The second moment ``state`` can represent under its layout, in ``moment``'s shape."""
    shape = tuple(moment.shape)
    spec = as_spec(state.spec)
    method = get_method(spec.name)
    kind = method.moment_estimate(method.resolve(spec), state.layout)
    if kind == "exact":
        return moment
    if kind == "scalar":
        return moment.mean().expand(shape)
    if kind == "trailing_rank_one":
        if len(shape) < 2:
            return moment
        lead = math.prod(shape[:-2])
        return rank_one(moment.reshape(lead, shape[-2], shape[-1]), batched=True).reshape(shape)
    if kind == "cover":
        return cover_estimate(moment.reshape(state.layout)).reshape(shape)
    return rank_one(moment.reshape(state.layout)).reshape(shape)


def rank_one(values: torch.Tensor, batched: bool = False) -> torch.Tensor:
    """prod_i S_i / total^(p-1): the rank-one tensor with the same slice sums as ``values``
    (per leading index when ``batched``)."""
    axes = list(range(1 if batched else 0, values.dim()))
    total = values.sum(dim=axes, keepdim=True) if axes else values
    estimate = torch.ones_like(values)
    for axis in axes:
        others = [a for a in axes if a != axis]
        estimate = estimate * (values.sum(dim=others, keepdim=True) if others else values)
    safe_total = torch.where(total > 0, total, torch.ones_like(total))
    return estimate / safe_total ** (len(axes) - 1)


def cover_estimate(values: torch.Tensor) -> torch.Tensor:
    """SM3's estimate: the minimum over axes of each slice's maximum."""
    result = None
    for axis in range(values.dim()):
        others = [a for a in range(values.dim()) if a != axis]
        slice_max = values.amax(dim=others, keepdim=True) if others else values
        result = slice_max if result is None else torch.minimum(result, slice_max)
    return result.expand(values.shape)


def distortion(moment: torch.Tensor, estimated: torch.Tensor) -> float:
    """Variance over elements of 0.5 * (log V - log V_hat), with a tiny floor against zeros."""
    floor = moment.mean() * 1e-12 + torch.finfo(torch.float32).tiny
    log_ratio = 0.5 * (torch.log(moment.double() + floor) - torch.log(estimated.double() + floor))
    return float(log_ratio.var(unbiased=False)) if log_ratio.numel() > 1 else 0.0


def distortion_function(moment: torch.Tensor) -> Callable[[ParamState], float]:
    """For the planner: a candidate's distortion for this parameter's measured second moment."""
    cache: dict[tuple, float] = {}

    def measure(state: ParamState) -> float:
        key = (state.spec, state.layout)
        if key not in cache:
            cache[key] = distortion(moment, estimate(state, moment))
        return cache[key]

    return measure


@dataclass
class GradientMoments:
    """Measured second moments of a model's trainable parameters (see :mod:`memplan.moments`)."""

    moments: Mapping[str, torch.Tensor]
    source: str
    samples: int
    device: str

    def distortions(self, profile: ModelProfile) -> dict[str, Callable[[ParamState], float]]:
        """Per parameter, the function that measures a candidate's distortion."""
        missing = [spec.name for spec in profile.trainable_params if spec.name not in self.moments]
        if missing:
            raise SpecError(f"calibration of {self.source} has no gradient for {missing[0]}")
        return {spec.name: distortion_function(self.moments[spec.name]) for spec in profile.trainable_params}

    def summary(self) -> dict[str, object]:
        """What the plan records about the calibration."""
        return {"source": self.source, "samples": self.samples, "device": self.device,
                "quality": "calibrated: base * exp(-distortion_scale * distortion)"}
