"""SGD (torch.optim.SGD): no state, or one momentum buffer of N."""

from __future__ import annotations

from typing import Any

from memplan.errors import SpecError
from memplan.methods.base import (Layout, Method, Options, StateTensor, full_like, impl_option, non_negative,
                                  torch_kernel_flags, weight_decay_option)
from memplan.methods.shapes import Shape
from memplan.methods.spec import Option


class SGD(Method):
    """torch.optim.SGD: ``momentum_buffer`` exists only when momentum is non-zero."""

    name = "sgd"
    summary = "SGD, optionally with heavy-ball or Nesterov momentum"
    implementation = "torch"
    optimizer = "torch.optim:SGD"
    lr_ratio = 10.0
    options = (
        Option("momentum", "float", 0.0, "momentum factor (a buffer of N when > 0)", check=non_negative,
               variant=True),
        Option("nesterov", "bool", False, "Nesterov momentum"),
        weight_decay_option(),
        impl_option(("foreach", "forloop", "fused"), "torch's multi-tensor, per-tensor or fused kernels"),
    )

    def check_options(self, options: Options) -> None:
        if options["nesterov"] and options["momentum"] == 0:
            raise SpecError("sgd: nesterov=true needs momentum > 0")

    def state_tensors(self, shape: Shape, param_dtype: str, options: Options, layout: Layout) -> tuple[StateTensor, ...]:
        return (full_like("momentum_buffer", shape, param_dtype),) if options["momentum"] > 0 else ()

    def momentum_kind(self, options: Options, layout: Layout) -> str:
        return "full" if options["momentum"] > 0 else "none"

    def prior_key(self, options: Options) -> str:
        return "sgd_momentum" if options["momentum"] > 0 else "sgd"

    def moment_estimate(self, options: Options, layout: Layout) -> str:
        return "scalar"  # one learning rate for the whole tensor

    def optimizer_kwargs(self, options: Options, params: list[Any]) -> dict[str, Any]:
        return {"momentum": options["momentum"], "nesterov": options["nesterov"],
                "weight_decay": options["weight_decay"], **torch_kernel_flags(options["impl"])}


SGD_METHOD = SGD()
