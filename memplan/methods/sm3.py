"""SM3 (Anil et al., 2019): one accumulator per slice of every axis of a cover view.

Bytes: 4 * (d_1 + ... + d_p) for a view (d_1, ..., d_p) of the parameter (its natural shape
by default; a scalar is seen as (1,)), plus 4N for the momentum buffer when momentum > 0.

``impl=pytorch_optimizer`` follows that library's SM3 exactly: it always allocates a
``momentum_buffer`` of N (even with momentum 0), and accumulator i has shape
[1, ..., n_i, ..., 1] on the natural axes, in the parameter's dtype.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from memplan.errors import SpecError
from memplan.methods.base import (STATE_DTYPE, Layout, Method, Options, StateTensor, axis_accumulators,
                                  eps_option, full_like, kernel_option, weight_decay_mode_option, weight_decay_option)
from memplan.methods.shapes import Shape, et_index, index_depth, natural_view
from memplan.methods.spec import Option

if TYPE_CHECKING:
    from memplan.priors import Priors


class SM3(Method):
    """SM3-I or SM3-II over a cover view, with optional momentum."""

    name = "sm3"
    summary = "SM3, one accumulator per slice of every axis"
    implementation = "memplan"
    auto_kernels = ("compiled", "triton")   # CPU: 4x faster than eager on ResNet-50 (RESULTS.md); Triton unmeasured
    optimizer = "memplan.optim.sm3:SM3"
    extra = "baselines"
    accepts_layout = True
    lr_ratio = 100.0  # AdaGrad-like accumulators: step sizes only shrink, so it starts high
    planner_variants = ("sm3:momentum=0",)
    options = (
        Option("momentum", "float", 0.9, "momentum factor (a buffer of N when > 0)",
               check=lambda value: None if 0.0 <= value < 1.0 else "must be in [0, 1)", variant=True),
        eps_option(1e-30),
        Option("variant", "str", "II", "SM3-I or the tighter SM3-II", choices=("II", "I"), variant=True),
        weight_decay_option(),
        weight_decay_mode_option(),
        kernel_option(("pytorch_optimizer",)),
    )

    def fused_work_options(self, options: Options) -> tuple[str, ...]:
        return tuple(name for name, changes in (("momentum", options["momentum"] == 0),
                                                ("variant", options["variant"] != "II")) if changes)

    def fused_kernel_variants(self) -> tuple[str, ...]:
        return ("sm3", "sm3:momentum=0")

    def grad_passes(self, options: Options) -> int:
        # SM3-I needs every slice maximum of G^2 before any update; SM3-II updates in one pass.
        return 2 if options["variant"] == "I" else 1

    def check_options(self, options: Options) -> None:
        if options["impl"] == "pytorch_optimizer" and options["variant"] != "II":
            raise SpecError("sm3: pytorch_optimizer implements SM3-II only; drop variant=I or use memplan's (impl=eager)")

    def default_layout(self, shape: Shape, options: Options) -> Layout:
        return natural_view(shape)

    def candidate_layouts(self, shape: Shape, options: Options) -> list[Layout]:
        """Covers on the natural axes, on the ET1 view (kernel dims merged) and on the ET2 view
        (dims above 32 split in two); pytorch_optimizer's SM3 covers the natural axes only."""
        if options["impl"] == "pytorch_optimizer":
            return [natural_view(shape)]
        return list(dict.fromkeys([natural_view(shape), et_index(shape, 1), et_index(shape, 2)]))

    def state_tensors(self, shape: Shape, param_dtype: str, options: Options, layout: Layout) -> tuple[StateTensor, ...]:
        if options["impl"] == "pytorch_optimizer":
            return _pytorch_optimizer_tensors(shape, param_dtype)
        view = layout if layout is not None else natural_view(shape)
        momentum = (full_like("momentum_buffer", shape, STATE_DTYPE),) if options["momentum"] > 0 else ()
        return axis_accumulators(view, "max") + momentum  # a sharded step reduces slice maxima

    def momentum_kind(self, options: Options, layout: Layout) -> str:
        return "full" if options["momentum"] > 0 or options["impl"] == "pytorch_optimizer" else "none"

    def prior_key(self, options: Options) -> str:
        return "sm3" if self.momentum_kind(options, None) == "full" else "sm3_no_momentum"

    def prior_quality(self, priors: "Priors", options: Options, shape: Shape, layout: Layout,
                      role: str | None = None) -> float:
        """The family's prior, scaled by the extreme-tensoring depth curve's ratio for covers on
        views finer than the natural shape."""
        return super().prior_quality(priors, options, shape, layout, role) * _depth_ratio(priors, shape, layout)

    def prior_seeds(self, priors: "Priors", options: Options, shape: Shape, layout: Layout,
                    role: str | None = None) -> tuple[float, ...]:
        """The family's per-seed qualities, scaled as :meth:`prior_quality` is."""
        ratio = _depth_ratio(priors, shape, layout)
        return tuple(value * ratio for value in super().prior_seeds(priors, options, shape, layout, role))

    def moment_estimate(self, options: Options, layout: Layout) -> str:
        return "cover"

    def optimizer_reference(self, options: Options) -> str:
        return "pytorch_optimizer:SM3" if options["impl"] == "pytorch_optimizer" else self.optimizer

    def layout_argument(self, options: Options) -> str | None:
        return None if options.get("impl") == "pytorch_optimizer" else "cover"

    def optimizer_kwargs(self, options: Options, params: list[Any]) -> dict[str, Any]:
        if options["impl"] == "pytorch_optimizer":
            return {"momentum": options["momentum"], "eps": options["eps"]}
        return super().optimizer_kwargs(options, params)


def _pytorch_optimizer_tensors(shape: Shape, dtype: str) -> tuple[StateTensor, ...]:
    rank = len(shape)
    if rank == 0:
        accumulators = (StateTensor("accumulator_0", (), dtype),)
    else:
        accumulators = tuple(
            StateTensor(f"accumulator_{axis}", (1,) * axis + (dim,) + (1,) * (rank - 1 - axis), dtype)
            for axis, dim in enumerate(shape)
        )
    return (full_like("momentum_buffer", shape, dtype),) + accumulators


SM3_METHOD = SM3()


def _depth_ratio(priors: "Priors", shape: Shape, layout: Layout) -> float:
    """The extreme-tensoring curve at this cover's depth over its value at depth 1 (1 for a cover of
    the natural shape, which needs no curve)."""
    depth = index_depth(shape, layout)
    return 1.0 if depth == 1.0 else priors.depth_quality(depth) / priors.depth_quality(1.0)
