"""What every method family provides: options, a layout per parameter, and the exact state tensors.

A :class:`Method` answers, for one parameter shape and dtype, which tensors its optimizer keeps
(:class:`StateTensor`: key, shape, dtype) under a given layout. State bytes are the sum of those
tensors' bytes, so the byte model and the optimizers, which allocate from the same list, cannot
disagree.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any, Mapping

from memplan.dtypes import item_size
from memplan.errors import LayoutError, SpecError
from memplan.methods.shapes import Shape, numel
from memplan.methods.spec import MethodSpec, Option

Layout = tuple[int, ...] | None
Options = Mapping[str, Any]

STATE_DTYPE = "float32"
"""memplan's own optimizers keep all state in fp32, whatever the parameter's dtype."""

MOMENTUM_KINDS = ("none", "full", "sign_factored")
"""How a layout keeps its first moment: not at all, as a full buffer, or as SMMF's signs and factors."""


@dataclass(frozen=True)
class StateTensor:
    """One persistent state tensor of one parameter, as the optimizer allocates it."""

    key: str
    shape: Shape
    dtype: str

    @property
    def numel(self) -> int:
        """Number of elements."""
        return numel(self.shape)

    @property
    def nbytes(self) -> int:
        """Bytes the tensor's storage holds."""
        return self.numel * item_size(self.dtype)


class Method(ABC):
    """A family member addressable by a spec name (``adam``, ``smmf``, ``et2``, ...).

    Subclasses set the class attributes and implement :meth:`state_tensors`; those that
    reshape the parameter (SMMF, ET, SM3) also override :meth:`default_layout` and accept a
    layout of their own.
    """

    name: str
    summary: str
    options: tuple[Option, ...]
    implementation: str
    """Who implements the update: ``memplan`` or the library it comes from."""
    accepts_layout: bool = False
    gradient_passes: int = 1
    """Full passes over the gradient one step makes (for the compulsory traffic estimate)."""

    def option(self, name: str) -> Option:
        """The declared option ``name``; SpecError lists the valid ones when unknown."""
        for option in self.options:
            if option.name == name:
                return option
        valid = ", ".join(option.name for option in self.options) or "none"
        raise SpecError(f"{self.name} has no option {name!r} (valid: {valid})")

    def resolve(self, spec: MethodSpec) -> dict[str, Any]:
        """Every option's value for ``spec``: the given ones, defaults for the rest."""
        values = {option.name: option.default for option in self.options}
        values.update(spec.given())
        return values

    def check_options(self, options: Options) -> None:
        """Raise SpecError for options that are valid alone but not together."""

    def default_layout(self, shape: Shape, options: Options) -> Layout:
        """The view of a parameter of ``shape`` that this method uses unless a plan says otherwise."""
        return None

    def candidate_layouts(self, shape: Shape, options: Options) -> list[Layout]:
        """The layouts worth considering for a parameter of ``shape`` (the planner's search space)."""
        return [self.default_layout(shape, options)]

    def check_layout(self, shape: Shape, layout: Layout) -> None:
        """Raise LayoutError unless ``layout`` is a valid view of ``shape`` for this method."""
        if layout is None:
            return
        if not self.accepts_layout:
            raise LayoutError(f"{self.name} takes no layout, got {list(layout)}")
        if any(not isinstance(dim, int) or isinstance(dim, bool) or dim < 0 for dim in layout) or not layout:
            raise LayoutError(f"layout {list(layout)} must be a non-empty list of non-negative integers")
        if numel(layout) != numel(shape):
            raise LayoutError(
                f"layout {list(layout)} has {numel(layout)} elements but shape {list(shape)} has {numel(shape)}"
            )

    @abstractmethod
    def state_tensors(self, shape: Shape, param_dtype: str, options: Options, layout: Layout) -> tuple[StateTensor, ...]:
        """The state tensors kept for one parameter of ``shape`` and ``param_dtype`` under ``layout``."""

    def momentum_kind(self, options: Options, layout: Layout) -> str:
        """One of :data:`MOMENTUM_KINDS` for these options and this layout."""
        return "none"

    def grad_passes(self, options: Options) -> int:
        """Full passes over the gradient one step makes with these options."""
        return self.gradient_passes

    def bytes_moved(self, shape: Shape, param_dtype: str, options: Options, state: tuple[StateTensor, ...]) -> int:
        """Compulsory memory traffic of one step, in bytes.

        The parameter is read and written once, the gradient read :meth:`grad_passes` times,
        and every state tensor read and written once. Temporaries that stay in cache are not
        counted; the time model calibrates the rest per device.
        """
        element_bytes = numel(shape) * item_size(param_dtype)
        return element_bytes * (2 + self.grad_passes(options)) + 2 * sum(tensor.nbytes for tensor in state)


def full_like(key: str, shape: Shape, dtype: str) -> StateTensor:
    """A state tensor with the parameter's own shape (Adam's moments, a momentum buffer)."""
    return StateTensor(key, tuple(shape), dtype)


def axis_accumulators(view: Shape) -> tuple[StateTensor, ...]:
    """One fp32 accumulator vector per axis of ``view``: ``acc_0`` (d_0,), ``acc_1`` (d_1,), ... (SM3, ET)."""
    return tuple(StateTensor(f"acc_{axis}", (dim,), STATE_DTYPE) for axis, dim in enumerate(view))


def in_unit_interval(value: float) -> str | None:
    """Check for decay rates: 0 <= value < 1."""
    return None if 0.0 <= value < 1.0 else "must be in [0, 1)"


def non_negative(value: float) -> str | None:
    """Check for eps, weight decay and momentum."""
    return None if value >= 0.0 else "must be >= 0"


def impl_option(choices: tuple[str, ...], help_text: str) -> Option:
    """Which implementation runs the method (the first choice is the default)."""
    return Option("impl", "str", choices[0], help_text, choices=choices)


def beta_option(name: str, default: float | None, help_text: str, nullable: bool = False) -> Option:
    """A decay-rate option in [0, 1)."""
    return Option(name, "float", default, help_text, nullable=nullable, check=in_unit_interval)


def eps_option(default: float) -> Option:
    """The usual numerical-stability constant."""
    return Option("eps", "float", default, "numerical-stability constant", check=non_negative)


def weight_decay_option(default: float = 0.0) -> Option:
    """The usual weight-decay factor."""
    return Option("weight_decay", "float", default, "weight-decay factor", check=non_negative)
