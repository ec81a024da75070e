"""AdaGrad (torch.optim.Adagrad): one full sum of squared gradients. Bytes: 4N for fp32."""

from __future__ import annotations

from typing import Any

from memplan.methods.base import (Layout, Method, Options, StateTensor, eps_option, full_like, impl_option,
                                  non_negative, torch_kernel_flags, weight_decay_option)
from memplan.methods.shapes import Shape
from memplan.methods.spec import Option


class Adagrad(Method):
    """torch.optim.Adagrad: state ``sum`` of the parameter's shape and dtype."""

    name = "adagrad"
    summary = "AdaGrad, full sum of squared gradients"
    implementation = "torch"
    optimizer = "torch.optim:Adagrad"
    lr_ratio = 10.0  # torch's default, 1e-2: AdaGrad's step sizes only shrink
    options = (
        eps_option(1e-10),
        Option("lr_decay", "float", 0.0, "learning-rate decay", check=non_negative),
        weight_decay_option(),
        impl_option(("foreach", "forloop", "fused"), "torch's multi-tensor, per-tensor or fused kernels"),
    )

    def state_tensors(self, shape: Shape, param_dtype: str, options: Options, layout: Layout) -> tuple[StateTensor, ...]:
        return (full_like("sum", shape, param_dtype),)

    def optimizer_kwargs(self, options: Options, params: list[Any]) -> dict[str, Any]:
        return {"lr_decay": options["lr_decay"], "eps": options["eps"], "weight_decay": options["weight_decay"],
                **torch_kernel_flags(options["impl"])}


ADAGRAD = Adagrad()
