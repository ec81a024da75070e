"""Third-party optimizers for the baseline specs (adam, adamw, adagrad, sgd, adafactor, came, sm3 via
pytorch_optimizer), built with the options a spec gives.

memplan does not re-implement these: torch.optim and pytorch_optimizer are well kept and are the
reference users compare against. The byte model in :mod:`memplan.methods` follows each one's
allocation exactly, which the tests check tensor by tensor.
"""

from __future__ import annotations

from typing import Any, Iterable

import torch

from memplan.errors import SpecError
from memplan.methods import as_spec, get_method
from memplan.methods.spec import MethodSpec


def _impl_flags(impl: str) -> dict[str, Any]:
    return {"foreach": {"foreach": True}, "fused": {"fused": True}, "forloop": {"foreach": False}}[impl]


def _pytorch_optimizer() -> Any:
    try:
        import pytorch_optimizer
    except ImportError:
        raise SpecError("this method needs pytorch_optimizer: pip install 'memplan[baselines]'") from None
    return pytorch_optimizer


def build_baseline(spec: str | MethodSpec, params: Iterable[Any], lr: float = 1e-3) -> torch.optim.Optimizer:
    """A torch.optim or pytorch_optimizer optimizer configured by ``spec`` (``adam:impl=fused``, ``came``, ...)."""
    parsed = as_spec(spec)
    method = get_method(parsed.name)
    options = method.resolve(parsed)
    name = parsed.name
    if name in {"adam", "adamw"}:
        cls = torch.optim.Adam if name == "adam" else torch.optim.AdamW
        return cls(params, lr=lr, betas=(options["beta1"], options["beta2"]), eps=options["eps"],
                   weight_decay=options["weight_decay"], amsgrad=options["amsgrad"], **_impl_flags(options["impl"]))
    if name == "adagrad":
        return torch.optim.Adagrad(params, lr=lr, lr_decay=options["lr_decay"], eps=options["eps"],
                                   weight_decay=options["weight_decay"], **_impl_flags(options["impl"]))
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=options["momentum"], nesterov=options["nesterov"],
                               weight_decay=options["weight_decay"], **_impl_flags(options["impl"]))
    if name == "adafactor":
        if method.resolved_impl(options) == "torch":  # type: ignore[attr-defined]
            return torch.optim.Adafactor(params, lr=lr, beta2_decay=options["decay_rate"],
                                         weight_decay=options["weight_decay"], foreach=True)
        params = list(params)
        dtype = params[0].dtype if params and isinstance(params[0], torch.Tensor) else torch.float32
        return _pytorch_optimizer().AdaFactor(params, lr=lr, betas=(options["beta1"], 0.999),
                                              decay_rate=options["decay_rate"], weight_decay=options["weight_decay"],
                                              relative_step=False, scale_parameter=False, momentum_dtype=dtype)
    if name == "came":
        return _pytorch_optimizer().CAME(params, lr=lr, betas=(options["beta1"], options["beta2"], options["beta3"]),
                                         weight_decay=options["weight_decay"])
    if name == "sm3" and options["impl"] == "pytorch_optimizer":
        return _pytorch_optimizer().SM3(params, lr=lr, momentum=options["momentum"], eps=options["eps"])
    raise SpecError(f"{parsed} is implemented by memplan, not by a third-party library")
