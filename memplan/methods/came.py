"""CAME (Luo et al., 2023), as implemented by pytorch_optimizer: Adafactor plus a factored confidence.

State: ``exp_avg`` of N; for d >= 2 the factored second moment and the factored confidence
(``exp_avg_sq_row/col``, ``exp_avg_res_row/col``, each pair of shapes (..., n_{d-1}) and
(..., n_d)); for d <= 1 a full ``exp_avg_sq`` only. Bytes for fp32: 4N + 8 (n_1 ... n_{d-2})
(n_{d-1} + n_d) for d >= 2 and 8N for d <= 1. (The confidence is only defined for factored
moments, in the paper's code and in pytorch_optimizer alike, so a vector costs 8N, not 12N.)
pytorch_optimizer also keeps the parameter's RMS as a 0-d tensor in the parameter's dtype
(``RMS``, 4 bytes for fp32), which the model counts since it is a real storage.
"""

from __future__ import annotations

from typing import Any

from memplan.methods.adafactor import factored_second_moment
from memplan.methods.base import (Layout, Method, Options, StateTensor, beta_option, full_like, impl_option,
                                  weight_decay_option)
from memplan.methods.shapes import Shape


class Came(Method):
    """CAME: confidence-guided Adafactor with a full first moment."""

    name = "came"
    summary = "CAME, factored second moment and confidence plus full first moment"
    implementation = "pytorch_optimizer"
    optimizer = "pytorch_optimizer:CAME"
    extra = "baselines"
    gradient_passes = 3
    lr_ratio = 0.2  # pytorch_optimizer's default, 2e-4
    options = (
        beta_option("beta1", 0.9, "first-moment decay", variant=True),
        beta_option("beta2", 0.999, "second-moment decay"),
        beta_option("beta3", 0.9999, "confidence decay"),
        weight_decay_option(),
        impl_option(("pytorch_optimizer",), "pytorch_optimizer's CAME"),
    )

    def state_tensors(self, shape: Shape, param_dtype: str, options: Options, layout: Layout) -> tuple[StateTensor, ...]:
        moments = (full_like("exp_avg", shape, param_dtype),) + factored_second_moment(
            shape, param_dtype, "exp_avg_sq_row", "exp_avg_sq_col", "exp_avg_sq")
        rms = (StateTensor("RMS", (), param_dtype),)
        if len(shape) < 2:
            return moments + rms
        confidence = factored_second_moment(shape, param_dtype, "exp_avg_res_row", "exp_avg_res_col", "")
        return moments + confidence + rms

    def momentum_kind(self, options: Options, layout: Layout) -> str:
        return "full"

    def moment_estimate(self, options: Options, layout: Layout) -> str:
        return "trailing_rank_one"

    def sharded_alternative(self, options: Options) -> str | None:
        return "smmf"  # pytorch_optimizer's CAME mixes DTensors with plain tensors

    def optimizer_kwargs(self, options: Options, params: list[Any]) -> dict[str, Any]:
        return {"betas": (options["beta1"], options["beta2"], options["beta3"]),
                "weight_decay": options["weight_decay"]}


CAME = Came()
