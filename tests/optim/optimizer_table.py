"""The one table of optimizers that the conformance and generic tests run over.

``OPTIMIZER_CASES`` lists memplan's optimizers in the configurations the conformance tests train,
and ``from_plan`` over plans that mix memplan's methods with torch's. ``OPTIM_DB`` is the same
table as torch's own test database (``OptimizerInfo`` entries from
``torch.testing._internal.common_optimizers``): one entry per optimizer, whose inputs are that
optimizer's rows of ``OPTIMIZER_CASES`` plus inputs covering its other options, and whose error
inputs are the bad arguments it must refuse. A new optimizer is one more row (and, for a new
class, one more entry); every test over the table then covers it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Mapping

import torch
from torch.optim.lr_scheduler import ReduceLROnPlateau, StepLR
from torch.testing._internal.common_optimizers import (ErrorOptimizerInput, OptimizerErrorEnum, OptimizerInfo,
                                                       OptimizerInput)

from memplan.errors import SpecError
from memplan.methods import ParamState, get_method, param_state, parse_spec
from memplan.optim import SM3, SMMF, ETInfinity, ExtremeTensoring, from_plan
from memplan.plan import Plan, PlanEntry, PlanPrediction

CHUNKED = "chunked"
"""The implementation flag of memplan's own optimizers: ``chunk_bytes`` bounds a step's temporaries,
and a chunked step matches an unchunked one (memplan's counterpart of torch's foreach flag)."""


# -- from_plan over mixed plans ------------------------------------------------------------------


def mixed_plan(named: list[tuple[str, torch.Tensor]], specs: tuple[str, ...]) -> Plan:
    """A plan giving the parameters the method specs in turn, each with the last of its candidate
    layouts (so planned layouts other than the method's default occur)."""
    entries = []
    for index, (name, param) in enumerate(named):
        spec = parse_spec(specs[index % len(specs)])
        method = get_method(spec.name)
        shape, dtype = tuple(param.shape), str(param.dtype).removeprefix("torch.")
        layout = method.candidate_layouts(shape, method.resolve(spec))[-1]
        state = param_state(spec, shape, dtype, layout)
        entries.append(PlanEntry(name=name, shape=shape, dtype=dtype, method=str(spec), layout=state.layout,
                                 momentum=state.momentum, state_dtype="", state_bytes=state.state_bytes, quality=1.0))
    total = sum(entry.state_bytes for entry in entries)
    used = sorted({parse_spec(entry.method).name for entry in entries})
    return Plan(model_name="test", model_source="tests", fingerprint="test", budget_bytes=total, entries=tuple(entries),
                predicted=PlanPrediction(state_bytes=total, quality=1.0, objective=1.0, objective_bound=1.0),
                hyperparameters={name: get_method(name).hyperparameter_defaults() for name in used})


def named_parameters(params: Iterable[Any]) -> list[tuple[str, torch.Tensor]]:
    """``params`` as (name, tensor) pairs: names given are kept, others are ``p0``, ``p1``, ..."""
    named = []
    for index, item in enumerate(params):
        if isinstance(item, dict):
            raise TypeError("from_plan takes parameters or named parameters, not param groups")
        named.append(item if isinstance(item, tuple) else (f"p{index}", item))
    return named


def planned(*specs: str) -> Callable[..., torch.optim.Optimizer]:
    """An optimizer factory ``f(params, **kwargs)`` like an optimizer class: ``from_plan`` over a
    :func:`mixed_plan` of the parameters given, with ``kwargs`` as its learning rate and overrides."""

    def build(params: Iterable[Any], **kwargs: Any) -> torch.optim.Optimizer:
        named = named_parameters(params)
        return from_plan(named, mixed_plan(named, specs), **kwargs)

    build.__name__ = build.__qualname__ = "from_plan[" + "+".join(specs) + "]"
    build.specs = specs  # type: ignore[attr-defined]
    return build


PLAN_WITH_ADAM = planned("smmf", "adam:impl=forloop", "et2", "sm3")
PLAN_WITH_SGD = planned("sgd:momentum=0.9,impl=forloop", "et", "adagrad:impl=forloop", "sm3:momentum=0,variant=I")


# -- the conformance table ------------------------------------------------------------------------


@dataclass(frozen=True)
class Case:
    """One row: an optimizer (a class, or a factory called like one) with fixed keyword arguments."""

    id: str
    optim_cls: Callable[..., torch.optim.Optimizer]
    kwargs: Mapping[str, Any]
    lr: float
    """A learning rate that trains the conformance tests' small model."""
    spec: str | None
    """The spec the byte model knows every parameter's state by; None: each plan entry's own."""

    def build(self, params: Iterable[Any], **overrides: Any) -> torch.optim.Optimizer:
        """The optimizer over ``params``, the row's arguments updated by ``overrides``."""
        return self.optim_cls(params, **{**self.kwargs, **overrides})

    @property
    def planned(self) -> bool:
        """Whether the row is ``from_plan`` (one method per parameter) rather than one optimizer."""
        return self.spec is None

    def predicted_states(self, optimizer: torch.optim.Optimizer, params: list[torch.Tensor]) -> list[ParamState]:
        """The byte model's state for each of ``params`` (in the order the optimizer was given them)."""
        if self.planned:
            return [param_state(entry.method, entry.shape, entry.dtype, entry.layout)
                    for entry in optimizer.plan.entries]
        return [param_state(self.spec, tuple(param.shape), str(param.dtype).removeprefix("torch."))
                for param in params]


OPTIMIZER_CASES = [
    Case("smmf", SMMF, {}, 1e-2, "smmf"),
    Case("smmf-8bit", SMMF, {"sign_bits": 8}, 1e-2, "smmf:sign_bits=8"),
    Case("smmf-no-m", SMMF, {"beta1": None}, 1e-2, "smmf:beta1=none"),
    Case("et1", ExtremeTensoring, {"index": "et1"}, 0.3, "et1"),
    Case("et2", ExtremeTensoring, {"index": "et2"}, 0.3, "et2"),
    Case("et3-momentum", ExtremeTensoring, {"index": "et3", "momentum": 0.9}, 0.1, "et3:momentum=0.9"),
    Case("et_inf", ETInfinity, {}, 0.3, "et_inf"),
    Case("sm3", SM3, {"momentum": 0.9}, 0.3, "sm3"),
    Case("sm3-I", SM3, {"variant": "I", "momentum": 0.0}, 0.1, "sm3:momentum=0,variant=I"),
    Case("plan-smmf-adam-et2-sm3", PLAN_WITH_ADAM, {}, 1e-2, None),
    Case("plan-sgd-et-adagrad-sm3", PLAN_WITH_SGD, {}, 1e-2, None),  # Adam-equivalent: 0.1 for sgd and adagrad, 1 for et and sm3
]
IDS = [case.id for case in OPTIMIZER_CASES]
CORE_CASES = [case for case in OPTIMIZER_CASES if not case.planned]
CORE_IDS = [case.id for case in CORE_CASES]
PLANNED_OPTIMIZERS = {case.optim_cls for case in OPTIMIZER_CASES if case.planned}


# -- the same table as torch's OptimizerInfo database ---------------------------------------------


def column_matricization(name: str | None, shape: tuple[int, ...]) -> tuple[int, int]:
    """A layout function (module level, as in a real training script): every tensor as one column."""
    return (math.prod(shape), 1)


def flat_index(name: str | None, shape: tuple[int, ...]) -> tuple[int, ...]:
    """A layout function for ET and SM3 covers: every tensor as a vector (plain AdaGrad statistics)."""
    return (math.prod(shape),)


OPTION_INPUTS: dict[Any, list[OptimizerInput]] = {
    SMMF: [
        OptimizerInput(None, {"lr": 1e-2, "weight_decay": 0.1, "weight_decay_mode": "adam", "maximize": True},
                       "coupled decay, maximize"),
        OptimizerInput(None, {"lr": 1e-2, "vector_reshape": False, "decay_rate": -0.8, "growth_rate": 0.99,
                              "weight_decay": 0.01}, "unfactored vectors, schedules, decoupled decay"),
        OptimizerInput(None, {"lr": 1e-2, "matricization": column_matricization}, "layout function"),
    ],
    ExtremeTensoring: [
        OptimizerInput(None, {"lr": 0.1, "beta2": 0.99, "index": flat_index}, "moving averages, layout function"),
        OptimizerInput(None, {"lr": 0.1, "weight_decay": 0.1, "weight_decay_mode": "adam", "maximize": True},
                       "coupled decay, maximize"),
    ],
    ETInfinity: [
        OptimizerInput(None, {"lr": 0.1, "beta2": 0.9, "weight_decay": 0.01}, "moving average, decoupled decay"),
        OptimizerInput(None, {"lr": 0.1, "maximize": True}, "maximize"),
    ],
    SM3: [
        OptimizerInput(None, {"lr": 0.1, "momentum": 0.5, "cover": flat_index, "weight_decay": 0.01,
                              "weight_decay_mode": "adam"}, "layout function, coupled decay"),
        OptimizerInput(None, {"lr": 0.1, "maximize": True, "eps": 1e-8}, "maximize"),
    ],
    PLAN_WITH_ADAM: [OptimizerInput(None, {"lr": 1e-2, "maximize": True, "weight_decay": 0.01}, "maximize, decay"),
                     OptimizerInput(None, {"lr_scale": 0.5}, "the plan's learning rates, scaled")],
    PLAN_WITH_SGD: [OptimizerInput(None, {"lr": 1e-2, "maximize": True}, "maximize")],
}


def optim_inputs_for(optim_cls: Any) -> Callable[..., list[OptimizerInput]]:
    """``optim_inputs_func`` of an entry: its table rows, then its option inputs (fresh copies each call)."""

    def optim_inputs(device: Any = None, dtype: Any = None) -> list[OptimizerInput]:
        rows = [OptimizerInput(None, {**case.kwargs, "lr": case.lr}, case.id)
                for case in OPTIMIZER_CASES if case.optim_cls is optim_cls]
        options = [OptimizerInput(None, dict(item.kwargs), item.desc) for item in OPTION_INPUTS.get(optim_cls, [])]
        return rows + options

    return optim_inputs


def _param(*shape: int, dtype: torch.dtype = torch.float32, sparse_grad: bool = False) -> torch.nn.Parameter:
    param = torch.nn.Parameter(torch.randn(shape, dtype=dtype))
    if sparse_grad:
        param.grad = torch.randn(shape).to_sparse()
    return param


def _construction_error(kwargs: dict[str, Any], error_type: type, regex: str, desc: str,
                        params: list[torch.Tensor] | None = None) -> ErrorOptimizerInput:
    return ErrorOptimizerInput(OptimizerInput(params if params is not None else [_param(3)], kwargs, desc),
                               error_on=OptimizerErrorEnum.CONSTRUCTION_ERROR, error_type=error_type,
                               error_regex=regex)


def _common_errors() -> list[ErrorOptimizerInput]:
    """What every memplan optimizer refuses, with torch-style messages."""
    return [
        _construction_error({"lr": -1.0}, ValueError, "Invalid learning rate", "negative lr"),
        _construction_error({"lr": torch.tensor([0.1, 0.2])}, ValueError, "one element", "lr tensor of two elements"),
        _construction_error({"eps": float("nan")}, ValueError, "Invalid eps", "nan eps"),
        _construction_error({"weight_decay": -0.1}, ValueError, "Invalid weight_decay", "negative weight decay"),
        _construction_error({"weight_decay_mode": "l2"}, ValueError, "Invalid weight_decay_mode", "unknown decay mode"),
        _construction_error({"chunk_bytes": 100}, ValueError, "Invalid chunk_bytes", "tiny chunk"),
        _construction_error({}, ValueError, r"complex parameters .*view_as_real", "complex parameter",
                            params=[_param(3, dtype=torch.complex64)]),
        ErrorOptimizerInput(OptimizerInput([_param(4, 3, sparse_grad=True)], {}, "sparse gradient"),
                            error_on=OptimizerErrorEnum.STEP_ERROR, error_type=RuntimeError,
                            error_regex="does not support sparse gradients"),
    ]


ERROR_INPUTS: dict[Any, list[ErrorOptimizerInput]] = {
    SMMF: [
        _construction_error({"beta1": 1.5}, ValueError, r"Invalid beta1: 1.5 \(must be in \[0, 1\)\)", "beta1 >= 1"),
        _construction_error({"sign_bits": 4}, ValueError, "Invalid sign_bits", "sign bits"),
        _construction_error({"decay_rate": 0.5}, ValueError, "Invalid decay_rate", "decay rate > 0"),
        _construction_error({"matricization": lambda name, shape: (2, 5)}, ValueError,
                            r"matricization of parameter #0 of shape \[3\]", "wrong layout"),
        _construction_error({"matricization": 7}, ValueError, "Invalid matricization", "layout of no known form"),
    ],
    ExtremeTensoring: [
        _construction_error({"index": "et9"}, ValueError, "Invalid index: 'et9'", "unknown preset"),
        _construction_error({"index": [(3,), (3,)]}, ValueError, "2 layouts for a group of 1 parameters",
                            "layout list of the wrong length"),
        _construction_error({"momentum": 1.0}, ValueError, "Invalid momentum", "momentum 1"),
    ],
    ETInfinity: [_construction_error({"beta2": 1.0}, ValueError, "Invalid beta2", "beta2 1")],
    SM3: [
        _construction_error({"variant": "III"}, ValueError, "Invalid variant", "unknown variant"),
        _construction_error({"cover": {"nothing": (4,)}}, ValueError, "cover", "cover of the wrong size",
                            params=[("nothing", _param(3))]),
    ],
}


def _plan_errors() -> list[ErrorOptimizerInput]:
    """What from_plan refuses: bad learning rates and overrides that would reach no or only some methods."""
    return [
        _construction_error({"lr": -1.0}, ValueError, "Invalid learning rate", "negative lr"),
        _construction_error({"colour": 1}, SpecError, "no planned method takes 'colour'", "unknown override",
                            params=[_param(3), _param(2)]),
        _construction_error({"chunk_bytes": 2**20}, SpecError, "would reach only some planned methods",
                            "override some methods do not take", params=[_param(3), _param(2)]),
        ErrorOptimizerInput(OptimizerInput([_param(4, 3, sparse_grad=True), _param(2, sparse_grad=True)], {},
                                           "sparse gradient"),
                            error_on=OptimizerErrorEnum.STEP_ERROR, error_type=RuntimeError, error_regex="sparse"),
    ]


def error_inputs_for(optim_cls: Any) -> Callable[..., list[ErrorOptimizerInput]]:
    """``optim_error_inputs_func`` of an entry (fresh parameters each call)."""

    def error_inputs(device: Any = None, dtype: Any = None) -> list[ErrorOptimizerInput]:
        if optim_cls in PLANNED_OPTIMIZERS:
            return _plan_errors()
        return _common_errors() + ERROR_INPUTS.get(optim_cls, [])

    return error_inputs


SCHEDULERS = ([lambda optimizer: StepLR(optimizer, gamma=0.9, step_size=10),
               lambda optimizer: ReduceLROnPlateau(optimizer)],)


def _info(optim_cls: Any) -> OptimizerInfo:
    """The entry of one optimizer: from_plan's take no param groups and have no chunk flag of their own."""
    planned_optimizer = optim_cls in PLANNED_OPTIMIZERS
    return OptimizerInfo(
        optim_cls,
        optim_inputs_func=optim_inputs_for(optim_cls),
        optim_error_inputs_func=error_inputs_for(optim_cls),
        scheduler_inputs=SCHEDULERS,
        supported_impls=() if planned_optimizer else (CHUNKED,),
        not_og_supported_flags=(("maximize", "foreach", "differentiable", "capturable", "chunk_bytes")
                                if planned_optimizer else ("maximize", "chunk_bytes", "weight_decay_mode")),
        supports_complex=False,
        supports_param_groups=not planned_optimizer,
    )


OPTIM_DB = [_info(optim_cls) for optim_cls in dict.fromkeys(case.optim_cls for case in OPTIMIZER_CASES)]
"""One OptimizerInfo per optimizer of the table (memplan's four classes, from_plan over two plans)."""

OPTIM_INPUTS = [(info, optim_input) for info in OPTIM_DB for optim_input in info.optim_inputs_func()]
"""Every (entry, input) pair: the generic tests run once per pair."""


def input_id(pair: tuple[OptimizerInfo, OptimizerInput]) -> str:
    """``SMMF-smmf-8bit``, ``from_plan[...]-maximize``: the test id of one (entry, input) pair."""
    info, optim_input = pair
    return f"{info.name}-{optim_input.desc}"
