"""What memplan's optimizers share: validation, lazily allocated state, fp32 math, exact state_dicts.

A :class:`MemplanOptimizer` allocates each parameter's state from the tensor list that
:mod:`memplan.methods` predicts (so measured bytes equal predicted bytes by construction), keeps
its step count and layout as plain Python values (no host synchronisation, and a step also runs
on the ``meta`` device), and restores every state tensor's own dtype when loading a state_dict.
"""

from __future__ import annotations

import contextlib
import math
from typing import Any, Callable, Iterable, Iterator, Mapping

import torch

from memplan.methods.base import COUPLED_DECAY, DECOUPLED_DECAY, Layout, Method

DEFAULT_CHUNK_BYTES = 32 * 2**20
"""The default bound on the extra memory one step may use, whatever the parameter's size."""

MIN_CHUNK_BYTES = 64 * 2**10

LayoutSource = Mapping[Any, Iterable[int]] | Callable[[str | None, tuple[int, ...]], Iterable[int]] | None
"""Per-parameter layouts: a mapping keyed by parameter name or tensor, or ``f(name, shape)``."""


def check_range(name: str, value: Any, low: float | None = None, high: float | None = None,
                low_open: bool = False, high_open: bool = False, allow_none: bool = False) -> None:
    """Raise ``ValueError(f"Invalid {name}: ...")`` unless ``value`` lies in the given interval."""
    if value is None and allow_none:
        return
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"Invalid {name}: {value!r} (expected a finite number)")
    too_low = low is not None and (value <= low if low_open else value < low)
    too_high = high is not None and (value >= high if high_open else value > high)
    if too_low or too_high:
        left = "(" if low_open else "["
        right = ")" if high_open else "]"
        interval = f"{left}{'-inf' if low is None else low}, {'inf' if high is None else high}{right}"
        raise ValueError(f"Invalid {name}: {value!r} (must be in {interval})")


def check_choice(name: str, value: Any, choices: tuple[Any, ...]) -> None:
    """Raise ``ValueError`` unless ``value`` is one of ``choices``."""
    if value not in choices:
        raise ValueError(f"Invalid {name}: {value!r} (must be one of {', '.join(map(repr, choices))})")


def check_common(group: Mapping[str, Any]) -> None:
    """Validate the hyperparameters every memplan optimizer has that are not method options."""
    check_range("learning rate", group["lr"], low=0.0)
    check_choice("maximize", group["maximize"], (False, True))
    chunk = group["chunk_bytes"]
    if chunk is not None and (isinstance(chunk, bool) or not isinstance(chunk, int) or chunk < MIN_CHUNK_BYTES):
        raise ValueError(f"Invalid chunk_bytes: {chunk!r} (must be None or an integer >= {MIN_CHUNK_BYTES})")


class MemplanOptimizer(torch.optim.Optimizer):
    """Base class: subclasses set ``method`` and implement ``_update``.

    Hyperparameters are validated by the method's own options (:meth:`Method.check_values`), the
    same ranges a spec string is checked against; the param-group key that holds per-parameter
    layouts is the method's :meth:`Method.layout_argument` (``index`` for ET).
    """

    method: Method

    @property
    def layout_key(self) -> str | None:
        """The param-group key that holds per-parameter layouts, if the method takes any."""
        return self.method.layout_argument(self.defaults)

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        """Add a group, validating its hyperparameters and every parameter's layout."""
        super().add_param_group(param_group)
        group = self.param_groups[-1]
        self._check_group(group)
        names = group.get("param_names")
        for position, param in enumerate(group["params"]):
            if param.is_complex():
                raise ValueError(f"{type(self).__name__} does not support complex parameters "
                                 f"({_describe(param, names, position)}); view them as real with torch.view_as_real")
            self._layout(group, param, names[position] if names else None, position)

    def _check_group(self, group: Mapping[str, Any]) -> None:
        """Raise ValueError for an invalid hyperparameter: the method's options, then
        :func:`check_common`."""
        self.method.check_values(group)
        check_common(group)

    def _options(self, group: Mapping[str, Any]) -> dict[str, Any]:
        """The method options (as in :mod:`memplan.methods`) that this group's hyperparameters give."""
        return {option.name: group.get(option.name, option.default) for option in self.method.options}

    def _default_layout(self, group: Mapping[str, Any], shape: tuple[int, ...]) -> Layout:
        return self.method.default_layout(shape, self._options(group))

    def _layout(self, group: Mapping[str, Any], param: torch.Tensor, name: str | None, position: int) -> Layout:
        """This parameter's layout: from the group's layout source, else the method's default."""
        shape = tuple(param.shape)
        source = group.get(self.layout_key) if self.layout_key else None
        layout: Any = None
        if callable(source):
            layout = source(name, shape)
        elif isinstance(source, Mapping):
            if name is not None and name in source:
                layout = source[name]
            else:
                layout = next((value for key, value in source.items() if key is param), None)
        if layout is None:
            return self._default_layout(group, shape)
        try:
            layout = tuple(int(dim) for dim in layout)
            self.method.check_layout(shape, layout)
        except (TypeError, ValueError) as error:
            raise ValueError(f"{self.layout_key} of {_describe(param, group.get('param_names'), position)}: "
                             f"{error}") from None
        return layout

    def _state(self, group: Mapping[str, Any], param: torch.Tensor, position: int) -> dict[str, Any]:
        """The parameter's state, allocated on first use exactly as the byte model predicts."""
        state = self.state[param]
        if not state:
            names = group.get("param_names")
            layout = self._layout(group, param, names[position] if names else None, position)
            dtype_name = str(param.dtype).removeprefix("torch.")
            for tensor in self.method.state_tensors(tuple(param.shape), dtype_name, self._options(group), layout):
                state[tensor.key] = torch.zeros(tensor.shape, dtype=getattr(torch, tensor.dtype), device=param.device)
            state["step"] = 0
            state["layout"] = layout
        return state

    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        """One optimization step; ``closure`` re-evaluates the model and returns the loss."""
        loss = run_closure(closure)
        for group in self.param_groups:
            for position, param in enumerate(group["params"]):
                if param.grad is None:
                    continue
                if param.grad.is_sparse:
                    raise RuntimeError(f"{type(self).__name__} does not support sparse gradients "
                                       f"({_describe(param, group.get('param_names'), position)})")
                state = self._state(group, param, position)
                state["step"] += 1
                if param.numel() == 0:
                    continue
                self._update(group, param, param.grad, state)
        return loss

    def _update(self, group: Mapping[str, Any], param: torch.Tensor, grad: torch.Tensor,
                state: dict[str, Any]) -> None:
        raise NotImplementedError

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Load a state_dict, keeping each state tensor's saved dtype.

        torch casts floating-point state to the parameter's dtype on load, which would turn
        packed uint8 signs into floats and round fp32 state of bf16 parameters; here every
        tensor comes back exactly as it was saved.
        """
        super().load_state_dict(state_dict)
        saved_ids = [index for group in state_dict["param_groups"] for index in group["params"]]
        params = [param for group in self.param_groups for param in group["params"]]
        for saved_id, param in zip(saved_ids, params):
            saved = state_dict["state"].get(saved_id)
            if saved is None:
                continue
            for key, value in saved.items():
                if isinstance(value, torch.Tensor):
                    self.state[param][key] = value.to(device=param.device, copy=True)


def _describe(param: torch.Tensor, names: list[str] | None, position: int) -> str:
    label = f"parameter {names[position]!r}" if names else f"parameter #{position}"
    return f"{label} of shape {list(param.shape)}"


@contextlib.contextmanager
def updating(weights: torch.Tensor, grads: torch.Tensor, window: slice,
             group: Mapping[str, Any]) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """The fp32 weight and effective gradient of one block, weight decay applied; on exit the
    weight is written back in the parameter's dtype (a no-op for fp32, updated in place)."""
    weight_block = weights[window]
    weight = working_copy(weight_block)
    gradient = effective_gradient(grads[window], weight, group)
    decay_weights(weight, group)
    yield weight, gradient
    if weight is not weight_block:
        weight_block.copy_(weight)


def block_bytes_per_element(group: Mapping[str, Any], param: torch.Tensor, own: int) -> int:
    """Peak temporary bytes per element of one block: the method's ``own`` temporaries, plus the
    fp32 copies of weight and gradient for low-precision parameters, plus the gradient copy that
    ``maximize`` or coupled weight decay makes (see :func:`updating`)."""
    per_element = own
    if param.dtype != torch.float32:
        per_element += 8
    if group["maximize"] or (group["weight_decay"] and group["weight_decay_mode"] == COUPLED_DECAY):
        per_element += 4
    return per_element


def run_closure(closure: Callable[[], Any] | None) -> Any:
    """Evaluate a step's closure with gradients enabled; None without one."""
    if closure is None:
        return None
    with torch.enable_grad():
        return closure()


def working_copy(block: torch.Tensor) -> torch.Tensor:
    """The block in fp32 for the math: itself when already fp32, else an fp32 copy."""
    return block if block.dtype == torch.float32 else block.float()


def effective_gradient(grad: torch.Tensor, weight: torch.Tensor, group: Mapping[str, Any]) -> torch.Tensor:
    """fp32 gradient block with maximize and coupled ("adam"-mode) weight decay applied."""
    gradient = working_copy(grad)
    if group["maximize"]:
        gradient = -gradient
    if group["weight_decay"] and group["weight_decay_mode"] == COUPLED_DECAY:
        gradient = gradient.add(weight, alpha=group["weight_decay"])
    return gradient


def decay_weights(weight: torch.Tensor, group: Mapping[str, Any]) -> None:
    """Decoupled ("adamw"-mode) weight decay: W <- W * (1 - lr * wd), in place."""
    if group["weight_decay"] and group["weight_decay_mode"] == DECOUPLED_DECAY:
        weight.mul_(1.0 - group["lr"] * group["weight_decay"])


def flat_view(tensor: torch.Tensor) -> torch.Tensor:
    """A flat view of a contiguous tensor (parameters and gradients are updated through views)."""
    if not tensor.is_contiguous():
        raise ValueError("memplan optimizers need contiguous parameters and gradients "
                         f"(got strides {tensor.stride()} for shape {list(tensor.shape)})")
    return tensor.view(-1)


def block_budget(group: Mapping[str, Any], fixed_bytes: int) -> int | None:
    """The group's chunk minus the step's fixed temporaries (per-axis vectors); None when unchunked."""
    chunk = group["chunk_bytes"]
    return None if chunk is None else max(1, chunk - fixed_bytes)
