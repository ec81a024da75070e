"""The method registry, the byte model and the optimizer factory.

A spec string and a parameter shape give the exact state tensors (:func:`param_state`); a spec
and parameters give the optimizer (:func:`build`). Everything about a family lives in its
:class:`Method` (one module per family in this package). The registry, :data:`METHODS`, holds every
:class:`Method` instance defined at the top level of this package's modules: a new family is one
more module here, found without editing anything else (code outside the package can add one with
:func:`register_method`).

>>> state_bytes("smmf", (30522, 768))          # 8 * (5087 + 4608) + ceil(23440896 / 8)
3007672
>>> str(parse_spec("adafactor:beta1=0.9"))
'adafactor:beta1=0.9'
"""

from __future__ import annotations

import importlib
import pkgutil
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Iterable, Mapping

from memplan.errors import SpecError
from memplan.methods.base import ADAM_LR, Layout, Method, StateTensor, is_sharded, tensors_of
from memplan.methods.shapes import Shape
from memplan.methods.spec import MethodSpec, format_value, split_spec


def _discover() -> dict[str, Method]:
    """Every Method instance at the top level of this package's modules, by spec name (modules in
    alphabetical order, methods in the order each module defines them)."""
    found: dict[str, Method] = {}
    for module_info in sorted(pkgutil.iter_modules(__path__), key=lambda info: info.name):
        module = importlib.import_module(f"{__name__}.{module_info.name}")
        for value in vars(module).values():
            if isinstance(value, Method):
                if found.setdefault(value.name, value) is not value:
                    raise SpecError(f"two methods are called {value.name!r} (one in {module.__name__})")
    return found


METHODS: dict[str, Method] = _discover()

REFERENCE_FAMILY = "adam"
"""The family every ratio is taken against (Adam's state, Adam's step time)."""

ANALYZE_METHODS = ("adam", "adagrad", "sgd", "adafactor", "came", "sm3", "smmf", "et1", "et2", "et3", "et_inf")
"""The methods ``memplan analyze`` totals unless told otherwise."""

def state_options(spec: str) -> str:
    """The options of ``spec``, defaults resolved, that pick its variant (which state it keeps,
    :attr:`Option.variant`), as ``key=value`` text (``sm3`` -> ``momentum=0.9,variant=II``); the
    implementation choice is left out. Empty when there are none."""
    parsed = parse_spec(spec)
    method = get_method(parsed.name)
    resolved = method.resolve(parsed)
    return ",".join(f"{option.name}={format_value(resolved[option.name])}" for option in method.options
                    if option.variant and option.name != "impl")


PLAN_METHODS = ("smmf", "et", "sm3", "et_inf", "adam", "adamw8bit", "adamw4bit", "adagrad", "adafactor", "sgd")
"""The families ``memplan plan`` searches unless told otherwise: memplan's own and the baselines."""

LAYOUT_COLUMNS = ("smmf", "et1")
"""The methods whose default layout ``memplan analyze`` lists for every parameter."""

BENCH_METHODS = ("adam", "adafactor", "sm3", "smmf", "et2", "et_inf")
"""The methods ``memplan bench`` measures unless told otherwise."""


def register_method(method: Method) -> Method:
    """Make ``method`` addressable by its spec name everywhere (analyze, plan, bench, from_plan)."""
    if method.name in METHODS and METHODS[method.name] is not method:
        raise SpecError(f"a method called {method.name!r} is already registered")
    METHODS[method.name] = method
    return method


def get_method(name: str) -> Method:
    """The registered method called ``name``; SpecError lists the valid names otherwise."""
    try:
        return METHODS[name]
    except KeyError:
        raise SpecError(f"unknown method {name!r} (valid: {', '.join(METHODS)})") from None


@lru_cache(maxsize=1024)
def parse_spec(text: str) -> MethodSpec:
    """Parse and validate ``name[:key=value,...]``; options come back in the method's declared order."""
    name, pairs = split_spec(text)
    method = get_method(name)
    given: dict[str, Any] = {}
    for key, raw in pairs:
        option = method.option(key)
        if key in given:
            raise SpecError(f"method spec {text!r}: option {key} given twice")
        given[key] = option.parse(raw)
    spec = MethodSpec(name, tuple((option.name, given[option.name]) for option in method.options
                                  if option.name in given))
    method.check_options(method.resolve(spec))
    return spec


def split_spec_list(texts: str | Iterable[str]) -> list[str]:
    """Split comma-separated spec lists, keeping each spec's own options together.

    ``"adam,smmf:sign_bits=8,beta1=none,et2"`` -> ``["adam", "smmf:sign_bits=8,beta1=none", "et2"]``:
    an item with ``=`` but no ``:`` continues the spec before it.
    """
    items = [texts] if isinstance(texts, str) else list(texts)
    specs: list[str] = []
    for text in items:
        for item in (part.strip() for part in text.split(",")):
            if not item:
                continue
            if "=" in item and ":" not in item:
                if not specs or ":" not in specs[-1]:
                    raise SpecError(f"option {item!r} does not follow a method spec with options")
                specs[-1] += "," + item
            else:
                specs.append(item)
    if not specs:
        raise SpecError("no methods given")
    return specs


def as_spec(spec: str | MethodSpec) -> MethodSpec:
    """Accept a spec string or an already parsed spec."""
    return spec if isinstance(spec, MethodSpec) else parse_spec(spec)


@dataclass(frozen=True)
class ParamState:
    """The optimizer state one method keeps for one parameter: layout, tensors, bytes, traffic."""

    spec: str
    shape: Shape
    param_dtype: str
    layout: Layout
    tensors: tuple[StateTensor, ...]
    momentum: str
    bytes_moved: int

    @property
    def state_bytes(self) -> int:
        """Exact bytes of persistent state (step counters excluded)."""
        return sum(tensor.nbytes for tensor in self.tensors)

    @property
    def state_dtype(self) -> str:
        """The dtypes of the state tensors, in order, joined by ``+`` (``float32+uint8``); ``none``."""
        dtypes = list(dict.fromkeys(tensor.dtype for tensor in self.tensors))
        return "+".join(dtypes) if dtypes else "none"


def param_state(spec: str | MethodSpec, shape: Iterable[int], param_dtype: str = "float32",
                layout: Iterable[int] | None = None) -> ParamState:
    """The state ``spec`` keeps for a parameter of ``shape`` and ``param_dtype``.

    ``layout`` overrides the method's default view (a matricization for SMMF, a tensor index for
    ET, a cover view for SM3); it must have the parameter's number of elements.
    """
    return _param_state(as_spec(spec), tuple(shape), param_dtype, None if layout is None else tuple(layout))


@lru_cache(maxsize=65536)
def _param_state(spec: MethodSpec, shape: Shape, param_dtype: str, layout: Layout) -> ParamState:
    method = METHODS[spec.name]
    options = method.resolve(spec)
    method.check_layout(shape, layout)
    chosen = layout if layout is not None else method.default_layout(shape, options)
    tensors = method.state_tensors(shape, param_dtype, options, chosen)
    return ParamState(
        spec=str(spec), shape=shape, param_dtype=param_dtype, layout=chosen, tensors=tensors,
        momentum=method.momentum_kind(options, chosen),
        bytes_moved=method.bytes_moved(shape, param_dtype, options, tensors),
    )


def state_bytes(spec: str | MethodSpec, shape: Iterable[int], param_dtype: str = "float32",
                layout: Iterable[int] | None = None) -> int:
    """Exact persistent state bytes of one parameter under ``spec`` (see :func:`param_state`)."""
    return param_state(spec, shape, param_dtype, layout).state_bytes


def build(spec: str | MethodSpec, params: Iterable[Any], lr: float | None = None,
          layouts: Mapping[Any, Iterable[int]] | None = None, **overrides: Any) -> Any:
    """The optimizer ``spec`` names, over ``params`` (tensors, named parameters or param groups).

    ``lr`` defaults to the method's own (:attr:`Method.default_lr`). ``layouts`` maps parameters
    (or their names) to planned layouts, for methods whose optimizer takes them. ``overrides``
    that are options of the method replace the spec's values (and are validated like them);
    the rest go to the optimizer's constructor as they are (``chunk_bytes``, ``maximize``, ...),
    and one the constructor does not take is a SpecError.
    """
    parsed = as_spec(spec)
    method = get_method(parsed.name)
    names = {option.name for option in method.options}
    options = method.resolve(parsed)
    for key in names & set(overrides):
        options[key] = method.option(key).validate(overrides[key])
    method.check_options(options)
    params = list(params)
    alternative = method.sharded_alternative(options)
    if alternative is not None and any(is_sharded(param) for param in tensors_of(params)):
        raise SpecError(f"{parsed}: {method.implementation}'s optimizer cannot step sharded (DTensor) parameters; "
                        f"use {alternative} instead")
    cls = method.optimizer_class(options)
    kwargs = method.optimizer_kwargs(options, params)
    argument = method.layout_argument(options)
    if layouts and argument is not None:
        kwargs[argument] = dict(layouts)
    for key in set(overrides) - names:
        if not method.takes(key, options):
            raise SpecError(f"{parsed}: {cls.__name__} takes no argument {key!r}")
        kwargs[key] = overrides[key]
    return cls(params, lr=method.default_lr if lr is None else lr, **kwargs)


def defaults_table() -> str:
    """A Markdown table of every method, its implementation and its options' defaults (for the README)."""
    lines = ["| spec | implementation | options (defaults) | what it keeps |", "|---|---|---|---|"]
    for method in METHODS.values():
        options = ", ".join(f"`{option.name}={format_value(option.default)}`" for option in method.options)
        lines.append(f"| `{method.name}` | {method.implementation} | {options or '-'} | {method.summary} |")
    return "\n".join(lines)


__all__ = ["ADAM_LR", "ANALYZE_METHODS", "BENCH_METHODS", "LAYOUT_COLUMNS", "METHODS", "Method", "MethodSpec", "PLAN_METHODS",
           "ParamState", "REFERENCE_FAMILY", "StateTensor", "as_spec", "build", "defaults_table", "get_method",
           "param_state", "parse_spec", "register_method", "split_spec_list", "state_bytes"]
