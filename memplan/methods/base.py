"""What every method family provides: the one description of it that every layer consults.

A :class:`Method` answers, for one parameter shape and dtype, which tensors its optimizer keeps
(:class:`StateTensor`: key, shape, dtype) under a given layout. State bytes are the sum of those
tensors' bytes, so the byte model and the optimizers, which allocate from the same list, cannot
disagree. It also says everything else the planner, the priors, the moment measurement, the
census and the optimizer factory need to know about the family: its options with their ranges
(one validation, reused by the optimizers' hyperparameter checks), candidate layouts, planner
variants, quality prior, default learning rate relative to Adam's, how its state represents a
second moment, how its step is structured, and a lazy ``"module:Class"`` reference to the
optimizer that implements it (so nothing imports torch until an optimizer is built).
"""

from __future__ import annotations

import importlib
import importlib.util
import inspect
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Iterator, Mapping

from memplan.dtypes import item_size
from memplan.errors import LayoutError, SpecError
from memplan.methods.shapes import Shape, numel
from memplan.methods.spec import MethodSpec, Option

if TYPE_CHECKING:
    from memplan.priors import Priors

Layout = tuple[int, ...] | None
Options = Mapping[str, Any]

STATE_DTYPE = "float32"
"""memplan's own optimizers keep all state in fp32, whatever the parameter's dtype."""

MOMENTUM_KINDS = ("none", "full", "sign_factored")
"""How a layout keeps its first moment: not at all, as a full buffer, or as SMMF's signs and factors."""

MOMENT_ESTIMATES = ("exact", "scalar", "trailing_rank_one", "rank_one", "cover")
"""What a method's state can represent of a parameter's second moment V (see memplan.moments):
V itself, one scalar per tensor, a rank-one factorization of the last two dims per leading index,
a rank-one factorization of the layout's view, or SM3's min of slice maxima over the layout's view."""

SHARD_KINDS = ("replicated", "elements", "bits")
"""How a state tensor is held when its parameter is sharded across ranks: whole on every rank
(factors, accumulators, scalars), or split like the parameter with one element ("elements":
momentum buffers, full moments, one bool per sign) or one bit ("bits": packed signs) per parameter
element of the rank's own range (see :mod:`memplan.sharding`)."""

STEP_STRUCTURES = ("per_parameter", "whole", "fused")
"""How a step's kernels are organised, which decides how the census counts it: one parameter at
a time (memplan's optimizers; each distinct shape is counted once and repeated), over the whole
list at once (torch's foreach kernels interleave parameters), or one fused kernel per tensor."""

ADAM_LR = 1e-3
"""Adam's default learning rate; every method's default is this times its ``lr_ratio``."""


@dataclass(frozen=True)
class StateTensor:
    """One persistent state tensor of one parameter, as the optimizer allocates it."""

    key: str
    shape: Shape
    dtype: str
    shard: str = "replicated"
    """How a sharded parameter's ranks hold it (see :data:`SHARD_KINDS`)."""
    reduce: str | None = None
    """For replicated state that an exact sharded step rebuilds from every rank's partial vectors
    (of this tensor's size and dtype): how they combine, "sum" or "max"; None if no step reduces it."""

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
    layout of their own. Every other hook has a default that suits a plain full-state method.
    """

    name: str
    summary: str
    options: tuple[Option, ...]
    implementation: str
    """Who implements the update: ``memplan`` or the library it comes from."""
    auto_kernels: tuple[str, ...] = ()
    """memplan's one-pass kernels (``compiled``, ``triton``) that ``impl=auto`` picks: those
    measured faster than the eager step (``benchmarks/RESULTS.md``)."""
    optimizer: str
    """The optimizer class, as ``"module:Class"``, imported only when an optimizer is built."""
    family: str = ""
    """The family several spec names share (``adam`` for adam and adamw, ``et`` for et1..et3);
    the spec name itself when empty."""
    extra: str | None = None
    """The pip extra of memplan that installs the optimizer's library, when it is optional."""
    accepts_layout: bool = False
    gradient_passes: int = 1
    """Full passes over the gradient one step makes (for the compulsory traffic estimate)."""
    lr_ratio: float = 1.0
    """The default learning rate relative to Adam's (:data:`ADAM_LR`)."""
    default_quality: float | None = None
    """The quality prior used when the priors have no entry for :meth:`prior_key`."""
    quality_reference: bool = False
    """True for the quality scale's reference (Adam): a probe keeps it on every other role, so it
    scores its own quality on every role."""
    planner_variants: tuple[str, ...] = ()
    """Other specs of this family the planner tries when ``--methods`` names the bare family."""

    @property
    def family_name(self) -> str:
        """:attr:`family`, or the spec name when the method is a family of its own."""
        return self.family or self.name

    @property
    def default_lr(self) -> float:
        """The learning rate a new plan starts from: Adam's times :attr:`lr_ratio`."""
        return ADAM_LR * self.lr_ratio

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


    # -- planning ---------------------------------------------------------------------------

    def prior_key(self, options: Options) -> str:
        """The entry of the quality priors that scores this method with these options."""
        return self.family_name

    def prior_quality(self, priors: "Priors", options: Options, shape: Shape, layout: Layout,
                      role: str | None = None) -> float:
        """Predicted quality of this method for a parameter of ``shape`` and ``role`` under ``layout``."""
        return priors.method_quality(self.prior_key(options), self.default_quality,
                                     None if self.quality_reference else role)

    def prior_std(self, priors: "Priors", options: Options, role: str | None = None) -> float:
        """The standard error the priors record for :meth:`prior_quality` (0 when unmeasured)."""
        return priors.quality_std(self.prior_key(options), None if self.quality_reference else role)

    def prior_seeds(self, priors: "Priors", options: Options, shape: Shape, layout: Layout,
                    role: str | None = None) -> tuple[float, ...]:
        """The per-seed qualities behind :meth:`prior_quality`, seed 0 first (() when not recorded)."""
        return priors.quality_seeds(self.prior_key(options), None if self.quality_reference else role)

    def prior_depth(self, shape: Shape, options: Options) -> float | None:
        """Where a measured quality of this method lands on the priors' extreme-tensoring depth curve
        for a parameter of ``shape`` (None: the method has a priors entry of its own, not a curve point)."""
        return None

    def learning_rate_ratio(self, priors: "Priors", options: Options) -> float:
        """This method's learning rate over Adam's: measured in the priors, else :attr:`lr_ratio`."""
        measured = priors.lr_ratio(self.prior_key(options))
        return self.lr_ratio if measured is None else measured

    def moment_estimate(self, options: Options, layout: Layout) -> str:
        """One of :data:`MOMENT_ESTIMATES`: what this state can represent of a second moment."""
        return "exact"

    def hyperparameter_defaults(self) -> dict[str, Any]:
        """Every option that is not a :attr:`Option.variant`, at its default: the shared
        hyperparameters a new plan writes for this method (its learning rate is the plan's
        Adam-equivalent rate times its ratio, see :class:`memplan.plan.Plan`)."""
        return {option.name: option.default for option in self.options if not option.variant}

    # -- measuring --------------------------------------------------------------------------

    def step_structure(self, options: Options, device_kind: str = "cpu") -> str:
        """One of :data:`STEP_STRUCTURES` for the implementation these options select on a device
        of ``device_kind``: memplan's one-pass kernels (``impl=compiled`` or ``triton``, and
        ``auto`` where it picks one: the compiled kernel on CPU when numba is installed, the Triton
        one on CUDA when Triton is, as :func:`memplan.kernels.select.resolve` does) are fused
        steps, as torch's ``fused`` ones are."""
        impl = options.get("impl")
        if impl == "fused":
            return "fused"
        if self.implementation == "memplan" and (impl in ("compiled", "triton") or
                                                 (impl == "auto" and self._auto_picks_a_kernel(device_kind))):
            return "fused"
        return "per_parameter" if self.optimizer_reference(options).startswith("memplan.") else "whole"

    def _auto_picks_a_kernel(self, device_kind: str) -> bool:
        """Whether ``impl=auto`` runs one of this method's kernels on a device of ``device_kind``."""
        kernel, module = ("triton", "triton") if device_kind == "cuda" else ("compiled", "numba")
        return kernel in self.auto_kernels and importlib.util.find_spec(module) is not None

    def fused_kernel(self, options: Options, device_kind: str = "cpu") -> str | None:
        """The key of the one-pass memplan kernel these options run (a spec string naming only the
        options that change its work per element), under which a calibrated device profile keeps
        that kernel's measured rate (:attr:`memplan.costmodel.DeviceProfile.fused_element_seconds`);
        None when the step is not one of memplan's fused kernels."""
        if self.implementation != "memplan" or self.step_structure(options, device_kind) != "fused":
            return None
        work = [(name, options[name]) for name in self.fused_work_options(options)]
        return str(MethodSpec(self.name, tuple(work)))

    def fused_work_options(self, options: Options) -> tuple[str, ...]:
        """The options (given a value other than their default) that change the work per element
        of this method's one-pass kernel: they name its calibrated rate (see :meth:`fused_kernel`)."""
        return ()

    def fused_kernel_variants(self) -> tuple[str, ...]:
        """The kernels whose rates ``memplan bench --calibrate`` measures, as :meth:`fused_kernel` keys."""
        return ()

    # -- building the optimizer ------------------------------------------------------------

    def optimizer_reference(self, options: Options) -> str:
        """The ``"module:Class"`` of the optimizer these options select."""
        return self.optimizer

    def optimizer_class(self, options: Options) -> type:
        """Import and return the optimizer class (SpecError naming the extra when it is missing)."""
        module_name, _, class_name = self.optimizer_reference(options).partition(":")
        try:
            module = importlib.import_module(module_name)
        except ImportError as error:
            hint = f": pip install 'memplan[{self.extra}]'" if self.extra else ""
            raise SpecError(f"{self.name} needs {module_name.split('.')[0]}{hint} ({error})") from None
        return getattr(module, class_name)

    def sharded_alternative(self, options: Options) -> str | None:
        """None when this method's optimizer steps sharded (DTensor) parameters, as memplan's and
        torch's do; otherwise the spec of a method to use instead under FSDP2."""
        return None

    def layout_argument(self, options: Options) -> str | None:
        """The constructor argument that takes per-parameter layouts, when the optimizer has one."""
        return None

    def optimizer_kwargs(self, options: Options, params: list[Any]) -> dict[str, Any]:
        """Constructor keyword arguments (besides params and lr) that give the optimizer these
        options; by default the options themselves, less ``impl`` unless memplan implements the method
        (its optimizers take ``impl``: eager, compiled, triton or auto)."""
        return {key: value for key, value in options.items() if key != "impl" or self.implementation == "memplan"}

    def takes(self, key: str, options: Options) -> bool:
        """Whether ``key`` is an option of this method or an argument of its optimizer."""
        if any(option.name == key for option in self.options):
            return True
        parameters = inspect.signature(self.optimizer_class(options)).parameters
        return key in parameters or any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values())

    def check_values(self, values: Mapping[str, Any]) -> None:
        """Raise ``ValueError("Invalid <name>: ...")``, as torch.optim does, for any of this
        method's options in ``values`` (an optimizer's param group) that is out of type or range."""
        for option in self.options:
            if option.name in values:
                problem = option.problem(values[option.name])
                if problem:
                    raise ValueError(f"Invalid {option.name}: {values[option.name]!r} ({problem})")


def tensors_of(params: list[Any]) -> Iterator[Any]:
    """The tensors in an optimizer's ``params`` (tensors, (name, tensor) pairs or param groups)."""
    for item in params:
        if isinstance(item, dict):
            group = item["params"]
            yield from tensors_of([group] if hasattr(group, "shape") else list(group))
        else:
            yield item[1] if isinstance(item, tuple) else item


def is_sharded(tensor: Any) -> bool:
    """Whether ``tensor`` is a DTensor (told apart without importing torch.distributed)."""
    return hasattr(tensor, "device_mesh") and hasattr(tensor, "placements")


def full_like(key: str, shape: Shape, dtype: str) -> StateTensor:
    """A state tensor with the parameter's own shape (Adam's moments, a momentum buffer), sharded like it."""
    return StateTensor(key, tuple(shape), dtype, shard="elements")


def axis_accumulators(view: Shape, reduce: str) -> tuple[StateTensor, ...]:
    """One fp32 accumulator vector per axis of ``view``: ``acc_0`` (d_0,), ``acc_1`` (d_1,), ... (SM3, ET),
    whose partial vectors a sharded step combines by ``reduce``."""
    return tuple(StateTensor(f"acc_{axis}", (dim,), STATE_DTYPE, reduce=reduce) for axis, dim in enumerate(view))


def in_unit_interval(value: float) -> str | None:
    """Check for decay rates: 0 <= value < 1."""
    return None if 0.0 <= value < 1.0 else "must be in [0, 1)"


def non_negative(value: float) -> str | None:
    """Check for eps, weight decay and momentum."""
    return None if value >= 0.0 else "must be >= 0"


KERNEL_IMPLEMENTATIONS = ("eager", "compiled", "triton", "auto")
"""How memplan's own optimizers run a step: the eager reference (torch ops over cache-sized blocks),
the CPU JIT's one-pass kernels, the Triton kernels (CUDA), or the best one available
(:mod:`memplan.kernels.select`)."""


def kernel_option(extra: tuple[str, ...] = ()) -> Option:
    """The ``impl`` option of a method memplan implements: :data:`KERNEL_IMPLEMENTATIONS`, then ``extra``."""
    return impl_option(KERNEL_IMPLEMENTATIONS + extra,
                       "eager (reference), compiled (CPU JIT), triton (CUDA) or auto" + (
                           "; " + ", ".join(extra) + ": that library's optimizer" if extra else ""))


def impl_option(choices: tuple[str, ...], help_text: str) -> Option:
    """Which implementation runs the method (the first choice is the default)."""
    return Option("impl", "str", choices[0], help_text, choices=choices, variant=True)


def beta_option(name: str, default: float | None, help_text: str, nullable: bool = False,
                variant: bool = False) -> Option:
    """A decay-rate option in [0, 1)."""
    return Option(name, "float", default, help_text, nullable=nullable, check=in_unit_interval, variant=variant)


def eps_option(default: float) -> Option:
    """The usual numerical-stability constant."""
    return Option("eps", "float", default, "numerical-stability constant", check=non_negative)


def weight_decay_option(default: float = 0.0) -> Option:
    """The usual weight-decay factor."""
    return Option("weight_decay", "float", default, "weight-decay factor", check=non_negative)


DECOUPLED_DECAY, COUPLED_DECAY = "adamw", "adam"
"""The two weight-decay modes of memplan's optimizers, named after the optimizers that made them
known: decoupled (W <- W (1 - lr wd), as AdamW) and coupled (G <- G + wd W, as Adam's L2)."""


def weight_decay_mode_option() -> Option:
    """How memplan's optimizers apply weight decay: decoupled (adamw) or added to the gradient (adam)."""
    return Option("weight_decay_mode", "str", DECOUPLED_DECAY, "adamw (decoupled) or adam (added to the gradient)",
                  choices=(DECOUPLED_DECAY, COUPLED_DECAY))


def torch_kernel_flags(impl: str) -> dict[str, bool]:
    """torch.optim's constructor flags for an ``impl`` of foreach, fused or forloop."""
    return {"foreach": {"foreach": True}, "fused": {"fused": True}, "forloop": {"foreach": False}}[impl]
