"""Adafactor: second moment factored over the last two dims; optional full first moment.

Bytes for d >= 2: 4 * (n_1 ... n_{d-2}) * (n_{d-1} + n_d) in fp32, plus 4N with a first moment;
for d <= 1 a full second moment. Two implementations allocate the same bytes with different
tensor shapes, and the byte model follows each exactly:
- ``torch``: torch.optim.Adafactor (no first moment): ``row_var`` of shape (..., n_{d-1}, 1),
  ``col_var`` of shape (..., 1, n_d), or ``variance`` for d <= 1;
- ``pytorch_optimizer``: its AdaFactor, needed when ``beta1`` is set: ``exp_avg_sq_row`` of shape
  (..., n_{d-1}), ``exp_avg_sq_col`` of shape (..., n_d), or ``exp_avg_sq``; ``exp_avg`` when
  ``beta1`` is set (memplan builds it with ``momentum_dtype`` = the parameter's dtype).
"""

from __future__ import annotations

from typing import Any

from memplan.errors import SpecError
from memplan.methods.base import (Layout, Method, Options, StateTensor, beta_option, full_like, impl_option,
                                  weight_decay_option)
from memplan.methods.shapes import Shape
from memplan.methods.spec import Option


def factored_shapes(shape: Shape, keep_dims: bool) -> tuple[Shape, Shape] | None:
    """Row and column factor shapes over the last two dims, or None for d <= 1.

    ``keep_dims`` keeps the reduced axis as a size-1 dim (torch.optim.Adafactor's layout).
    """
    if len(shape) < 2:
        return None
    if keep_dims:
        return (*shape[:-1], 1), (*shape[:-2], 1, shape[-1])
    return tuple(shape[:-1]), (*shape[:-2], shape[-1])


def factored_second_moment(shape: Shape, dtype: str, row_key: str, col_key: str, full_key: str,
                           keep_dims: bool = False) -> tuple[StateTensor, ...]:
    """A factored second moment (two tensors) for d >= 2, or a full one for d <= 1."""
    factors = factored_shapes(shape, keep_dims)
    if factors is None:
        return (full_like(full_key, shape, dtype),)
    return StateTensor(row_key, factors[0], dtype), StateTensor(col_key, factors[1], dtype)


class Adafactor(Method):
    """Adafactor (Shazeer & Stern, 2018) as implemented by torch or pytorch_optimizer."""

    name = "adafactor"
    summary = "Adafactor, second moment factored over the last two dims"
    implementation = "torch; pytorch_optimizer when beta1 is set"
    optimizer = "torch.optim:Adafactor"
    extra = "baselines"
    gradient_passes = 2
    planner_variants = ("adafactor:beta1=0.9",)
    options = (
        beta_option("beta1", None, "first-moment decay; none keeps no first moment", nullable=True, variant=True),
        Option("decay_rate", "float", -0.8, "second-moment decay exponent: beta2_t = 1 - t^decay_rate",
               check=lambda value: None if -1.0 <= value <= 0.0 else "must be in [-1, 0]"),
        weight_decay_option(),
        impl_option(("auto", "torch", "pytorch_optimizer"),
                    "auto: torch.optim.Adafactor, or pytorch_optimizer's AdaFactor when beta1 is set"),
    )

    def check_options(self, options: Options) -> None:
        if options["impl"] == "torch" and options["beta1"] is not None:
            raise SpecError("adafactor: torch.optim.Adafactor keeps no first moment; use impl=pytorch_optimizer")

    def resolved_impl(self, options: Options) -> str:
        """``torch`` or ``pytorch_optimizer`` after resolving ``auto``."""
        if options["impl"] != "auto":
            return options["impl"]
        return "torch" if options["beta1"] is None else "pytorch_optimizer"

    def state_tensors(self, shape: Shape, param_dtype: str, options: Options, layout: Layout) -> tuple[StateTensor, ...]:
        if self.resolved_impl(options) == "torch":
            return factored_second_moment(shape, param_dtype, "row_var", "col_var", "variance", keep_dims=True)
        first = (full_like("exp_avg", shape, param_dtype),) if options["beta1"] is not None else ()
        return first + factored_second_moment(shape, param_dtype, "exp_avg_sq_row", "exp_avg_sq_col", "exp_avg_sq")

    def momentum_kind(self, options: Options, layout: Layout) -> str:
        return "none" if options["beta1"] is None else "full"

    def prior_key(self, options: Options) -> str:
        return "adafactor" if options["beta1"] is None else "adafactor_momentum"

    def moment_estimate(self, options: Options, layout: Layout) -> str:
        return "trailing_rank_one"

    def optimizer_reference(self, options: Options) -> str:
        return self.optimizer if self.resolved_impl(options) == "torch" else "pytorch_optimizer:AdaFactor"

    def sharded_alternative(self, options: Options) -> str | None:
        # torch 2.13's Adafactor updates its factors in place, which DTensor refuses for the
        # column factor (a partial norm); pytorch_optimizer's mixes DTensors and plain tensors
        return "smmf:beta1=none (factored second moment)" if options["beta1"] is None else "smmf"

    def optimizer_kwargs(self, options: Options, params: list[Any]) -> dict[str, Any]:
        if self.resolved_impl(options) == "torch":
            return {"beta2_decay": options["decay_rate"], "weight_decay": options["weight_decay"], "foreach": True}
        first = params[0] if params else None
        dtype = getattr(first, "dtype", None) or _float32()
        return {"betas": (options["beta1"], 0.999), "decay_rate": options["decay_rate"],
                "weight_decay": options["weight_decay"], "relative_step": False, "scale_parameter": False,
                "momentum_dtype": dtype}


def _float32() -> Any:
    import torch

    return torch.float32


ADAFACTOR = Adafactor()
