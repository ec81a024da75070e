"""Adam and AdamW (torch.optim): two full moments, in the parameter's dtype. Bytes: 8N for fp32."""

from __future__ import annotations

from typing import Any

from memplan.methods.base import (Layout, Method, Options, StateTensor, beta_option, eps_option, full_like,
                                  impl_option, torch_kernel_flags, weight_decay_option)
from memplan.methods.shapes import Shape
from memplan.methods.spec import Option


class Adam(Method):
    """torch.optim.Adam / AdamW: ``exp_avg`` and ``exp_avg_sq`` (plus ``max_exp_avg_sq`` with amsgrad)."""

    implementation = "torch"
    family = "adam"
    quality_reference = True

    def __init__(self, name: str, weight_decay: float, summary: str, optimizer: str) -> None:
        self.name = name
        self.summary = summary
        self.optimizer = optimizer
        self.options = (
            beta_option("beta1", 0.9, "first-moment decay", variant=True),
            beta_option("beta2", 0.999, "second-moment decay"),
            eps_option(1e-8),
            weight_decay_option(weight_decay),
            Option("amsgrad", "bool", False, "keep the running maximum of the second moment (+N)", variant=True),
            impl_option(("foreach", "fused", "forloop"), "torch's multi-tensor, fused or per-tensor kernels"),
        )

    def state_tensors(self, shape: Shape, param_dtype: str, options: Options, layout: Layout) -> tuple[StateTensor, ...]:
        keys = ("exp_avg", "exp_avg_sq", "max_exp_avg_sq") if options["amsgrad"] else ("exp_avg", "exp_avg_sq")
        return tuple(full_like(key, shape, param_dtype) for key in keys)

    def momentum_kind(self, options: Options, layout: Layout) -> str:
        return "full"

    def optimizer_kwargs(self, options: Options, params: list[Any]) -> dict[str, Any]:
        return {"betas": (options["beta1"], options["beta2"]), "eps": options["eps"],
                "weight_decay": options["weight_decay"], "amsgrad": options["amsgrad"],
                **torch_kernel_flags(options["impl"])}


ADAM = Adam("adam", 0.0, "Adam, full first and second moments", "torch.optim:Adam")
ADAMW = Adam("adamw", 0.01, "AdamW, decoupled weight decay", "torch.optim:AdamW")
