"""SMMF (Park & Lee, 2025): moments of a square-matricized view, kept as rank-one factors.

The parameter is viewed as an n x m matrix (:func:`square_matricization` by default; a plan may
choose another matricization). State, all fp32 but the signs:
- with first moment: ``row_m`` (n), ``col_m`` (m), ``sign`` (the first moment's signs),
  ``row_v`` (n), ``col_v`` (m); ``sign_bits=1`` packs 8 signs per byte into a uint8 vector of
  ceil(N / 8), ``sign_bits=8`` keeps an n x m bool matrix (the original code's layout);
- without first moment (``beta1=none``): ``row_v``, ``col_v``;
- a vector with ``vector_reshape=false``: plain ``exp_avg`` (with first moment) and ``exp_avg_sq``.
Bytes: 8(n + m) + ceil(N / 8) with 1-bit signs, 8(n + m) + N with 8-bit signs, 4(n + m)
without first moment.
"""

from __future__ import annotations

import math

from memplan.errors import LayoutError
from memplan.methods.base import (STATE_DTYPE, Layout, Method, Options, StateTensor, beta_option, eps_option,
                                  full_like, kernel_option, weight_decay_mode_option, weight_decay_option)
from memplan.methods.shapes import Shape, numel, square_matricization
from memplan.methods.spec import Option


def sign_tensor(rows: int, cols: int, sign_bits: int) -> StateTensor:
    """Storage of an n x m sign matrix: packed bits (uint8, ceil(nm/8)) or one bool per element."""
    if sign_bits == 1:
        return StateTensor("sign", (math.ceil(rows * cols / 8),), "uint8", shard="bits")
    return StateTensor("sign", (rows, cols), "bool", shard="elements")


def smmf_layout(shape: Shape, vector_reshape: bool = True) -> Layout:
    """SMMF's default matrix view of ``shape``; None for a vector kept unfactored."""
    if len(shape) <= 1 and not vector_reshape:
        return None
    return square_matricization(numel(shape))


class SMMF(Method):
    """Square-matricized momentum factorization with 1-bit or 8-bit signs."""

    name = "smmf"
    summary = "SMMF, rank-one factors of square-matricized moments plus sign bits"
    implementation = "memplan"
    auto_kernels = ("compiled", "triton")   # Triton's speed on CUDA is unmeasured (no GPU run yet)
    optimizer = "memplan.optim.smmf:SMMF"
    accepts_layout = True
    planner_variants = ("smmf:beta1=none", "smmf:vector_reshape=false", "smmf:vector_reshape=false,beta1=none")
    options = (
        beta_option("beta1", 0.9, "first-moment decay; none keeps no first moment", nullable=True, variant=True),
        Option("sign_bits", "int", 1, "bits per stored sign: 1 (packed) or 8 (one bool each)", choices=(1, 8),
               variant=True),
        Option("decay_rate", "float", -0.5, "second-moment decay exponent: beta2_t = 1 - t^decay_rate",
               check=lambda value: None if -1.0 <= value <= 0.0 else "must be in [-1, 0]"),
        Option("growth_rate", "float", 0.999, "first-moment growth: beta1_t = beta1 * growth^(t-1)",
               check=lambda value: None if 0.0 < value <= 1.0 else "must be in (0, 1]"),
        eps_option(1e-8),
        weight_decay_option(),
        weight_decay_mode_option(),
        Option("vector_reshape", "bool", True, "square-matricize vectors too (false: full moments)", variant=True),
        kernel_option(),
    )

    def default_layout(self, shape: Shape, options: Options) -> Layout:
        return smmf_layout(shape, options["vector_reshape"])

    def candidate_layouts(self, shape: Shape, options: Options) -> list[Layout]:
        """The square-most matricization, and for d >= 2 the natural ones: first dim x rest and
        rest x last dim. With ``vector_reshape=false`` only vectors differ from plain SMMF, so
        a tensor of d >= 2 gets no candidate of its own (it would repeat plain SMMF's)."""
        if not options["vector_reshape"] and len(shape) > 1:
            return []
        default = self.default_layout(shape, options)
        layouts = [default]
        count = numel(shape)
        if len(shape) >= 2 and count:
            for layout in ((shape[0], count // shape[0]), (count // shape[-1], shape[-1])):
                if layout not in layouts:
                    layouts.append(layout)
        return layouts

    def check_layout(self, shape: Shape, layout: Layout) -> None:
        super().check_layout(shape, layout)
        if layout is not None and len(layout) != 2:
            raise LayoutError(f"smmf needs a matricization [n, m], got {list(layout)}")

    def state_tensors(self, shape: Shape, param_dtype: str, options: Options, layout: Layout) -> tuple[StateTensor, ...]:
        first_moment = options["beta1"] is not None
        if layout is None:
            second = (full_like("exp_avg_sq", shape, STATE_DTYPE),)
            return ((full_like("exp_avg", shape, STATE_DTYPE),) if first_moment else ()) + second
        rows, cols = layout
        second = (StateTensor("row_v", (rows,), STATE_DTYPE, reduce="sum"),
                  StateTensor("col_v", (cols,), STATE_DTYPE, reduce="sum"))
        if not first_moment:
            return second
        first = (StateTensor("row_m", (rows,), STATE_DTYPE, reduce="sum"),
                 StateTensor("col_m", (cols,), STATE_DTYPE, reduce="sum"),
                 sign_tensor(rows, cols, options["sign_bits"]))
        return first + second

    def momentum_kind(self, options: Options, layout: Layout) -> str:
        if options["beta1"] is None:
            return "none"
        return "full" if layout is None else "sign_factored"

    def prior_key(self, options: Options) -> str:
        return "smmf_no_momentum" if options["beta1"] is None else "smmf"

    def moment_estimate(self, options: Options, layout: Layout) -> str:
        return "exact" if layout is None else "rank_one"

    def layout_argument(self, options: Options) -> str | None:
        return "matricization"

    def fused_work_options(self, options: Options) -> tuple[str, ...]:
        if options["beta1"] is None:
            return ("beta1",)   # no signs, no first moment
        return ("sign_bits",) if options["sign_bits"] != 1 else ()

    def fused_kernel_variants(self) -> tuple[str, ...]:
        return ("smmf", "smmf:sign_bits=8", "smmf:beta1=none")


SMMF_METHOD = SMMF()
