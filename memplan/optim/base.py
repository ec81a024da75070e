"""What memplan's optimizers share: validation, lazily allocated state, the working dtype, exact state_dicts.

A :class:`MemplanOptimizer` allocates each parameter's state from the tensor list that
:mod:`memplan.methods` predicts (so measured bytes equal predicted bytes by construction), keeps
its step count and layout as plain Python values (no host synchronisation, and a step also runs
on the ``meta`` device), and restores every state tensor's own dtype when loading a state_dict.

The math runs in the parameter's own dtype, except for bf16, fp16 and narrower types, which are
stepped through an fp32 working copy (float64 parameters are neither rounded nor computed in fp32).
Layouts are views of the parameter's row-major (logical) order, whatever its memory format.
"""

from __future__ import annotations

import contextlib
import functools
import math
from typing import Any, Callable, Iterable, Iterator, Mapping, Sequence

import torch

from memplan.methods.base import COUPLED_DECAY, DECOUPLED_DECAY, Layout, Method
from memplan.optim.batches import BatchMemo, PreparedBatch, same_options
from memplan.optim.sharding import (SHARDING_MODES, PartialReductions, Shard, distributed_like, is_distributed,
                                    is_packed_bits, local_tensor, packed_bits, portable_bits, shard_of)
from memplan.optim.state_dicts import keep_saved_dtype, load_state_dict, with_param_states
from memplan.sharding import local_state_tensors

DEFAULT_CHUNK_BYTES = 32 * 2**20
"""The default bound on the extra memory one step may use, whatever the parameter's size."""

MIN_CHUNK_BYTES = 64 * 2**10

BATCH_DTYPES = (torch.float32, torch.float64)
"""The dtypes of CPU parameters a multi-tensor step takes as they are (see
:meth:`MemplanOptimizer._batchable`)."""
CUDA_BATCH_DTYPES = BATCH_DTYPES + (torch.bfloat16, torch.float16)
"""The same for CUDA parameters: the Triton kernels load and store bf16 and fp16 weights too, with
fp32 math."""

LayoutSource = (Mapping[Any, Iterable[int]] | Callable[[str | None, tuple[int, ...]], Iterable[int]]
                | Sequence[Iterable[int] | None] | None)
"""Per-parameter layouts: a mapping keyed by parameter name or tensor, ``f(name, shape)``, or a list
with one entry per parameter of the group (None for the method's default). Whatever form is given,
the group keeps the list form once it is added (see :meth:`MemplanOptimizer.add_param_group`)."""


def check_range(name: str, value: Any, low: float | None = None, high: float | None = None,
                low_open: bool = False, high_open: bool = False, allow_none: bool = False) -> None:
    """Raise ``ValueError(f"Invalid {name}: ...")`` unless ``value`` lies in the given interval."""
    if value is None and allow_none:
        return
    if isinstance(value, torch.Tensor):
        if value.numel() != 1:
            raise ValueError(f"Invalid {name}: a tensor {name} must have one element (got shape {list(value.shape)})")
        value = float(value)  # once, at construction, as torch.optim checks a tensor learning rate
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
    """Validate the hyperparameters every memplan optimizer has that are not method options (the
    learning rate may be a one-element tensor, as in torch.optim)."""
    check_range("learning rate", group["lr"], low=0.0)
    check_choice("maximize", group["maximize"], (False, True))
    check_choice("sharding", group.get("sharding", "exact"), SHARDING_MODES)
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
    kernels: tuple[str, ...] = ()
    """The kernel technologies (:mod:`memplan.kernels.select`) that can run this optimizer's steps
    when a group's ``impl`` asks for them; eager otherwise."""

    @property
    def auto_kernels(self) -> tuple[str, ...]:
        """Those that ``impl="auto"`` picks: the method's (:attr:`Method.auto_kernels`)."""
        return self.method.auto_kernels

    def implementation(self, group: Mapping[str, Any]) -> str:
        """What steps ``group``: ``eager``, ``compiled`` or ``triton`` (its ``impl`` resolved
        against the group's device and what is installed)."""
        from memplan.kernels.select import EAGER, resolve

        if "impl" not in group:
            return EAGER
        device = group["params"][0].device if group["params"] else torch.device("cpu")
        return resolve(group["impl"], device, self.kernels, self.auto_kernels)

    @property
    def layout_key(self) -> str | None:
        """The param-group key that holds per-parameter layouts, if the method takes any."""
        return self.method.layout_argument(self.defaults)

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        """Add a group, validating its hyperparameters and every parameter's layout.

        A layout source given as a mapping or a function is resolved here, once, into a tuple with
        one layout per parameter (None where the method's default applies): param groups then hold
        only small, picklable values, so state_dicts save (also with ``weights_only``), print and
        compare like any torch optimizer's, and a resumed optimizer keeps every planned layout.
        """
        super().add_param_group(param_group)
        group = self.param_groups[-1]
        self._check_group(group)
        names = group.get("param_names")
        for position, param in enumerate(group["params"]):
            if param.is_complex():
                raise ValueError(f"{type(self).__name__} does not support complex parameters "
                                 f"({_describe(param, names, position)}); view them as real with torch.view_as_real")
        self._resolve_layouts(group)

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

    def _layout_source(self, group: Mapping[str, Any]) -> Any:
        """The group's per-parameter layouts (a mapping, a function or a list), or None to use defaults."""
        if self.layout_key is None:
            return None
        source = group.get(self.layout_key)
        if source is None or callable(source) or isinstance(source, (Mapping, list, tuple)):
            return source
        raise ValueError(f"Invalid {self.layout_key}: {source!r} (a mapping, a function (name, shape) -> layout, "
                         f"or a list with one layout per parameter)")

    def _resolve_layouts(self, group: dict[str, Any]) -> None:
        """Replace the group's layout source by one layout per parameter (see :meth:`add_param_group`)."""
        source = self._layout_source(group)
        if source is not None:
            group[self.layout_key] = self._resolved_layouts(group, source)

    def _resolved_layouts(self, group: Mapping[str, Any], source: Any) -> tuple[Layout, ...]:
        """One checked layout per parameter of the group (None where ``source`` gives none)."""
        params = group["params"]
        names = group.get("param_names")
        if isinstance(source, Mapping):
            # names and tensors looked up apart: a name is never compared with a tensor
            by_name = {key: value for key, value in source.items() if isinstance(key, str)}
            by_identity = {id(key): value for key, value in source.items() if not isinstance(key, str)}
            source = [by_name[names[position]] if names and names[position] in by_name else by_identity.get(id(param))
                      for position, param in enumerate(params)]
        elif callable(source):
            source = [source(names[position] if names else None, tuple(param.shape))
                      for position, param in enumerate(params)]
        elif len(source) != len(params):
            raise ValueError(f"{self.layout_key}: {len(source)} layouts for a group of {len(params)} parameters "
                             f"(give one per parameter, None for the default)")
        return tuple(self._checked_layout(layout, param, names, position)
                     for position, (layout, param) in enumerate(zip(source, params)))

    def _checked_layout(self, layout: Any, param: torch.Tensor, names: list[str] | None, position: int) -> Layout:
        """``layout`` as a tuple of ints, checked against the parameter's shape; None stays None."""
        if layout is None:
            return None
        try:
            layout = tuple(int(dim) for dim in layout)
            self.method.check_layout(tuple(param.shape), layout)
        except (TypeError, ValueError) as error:
            raise ValueError(f"{self.layout_key} of {_describe(param, names, position)}: {error}") from None
        return layout

    def _layout(self, group: Mapping[str, Any], param: torch.Tensor, position: int) -> Layout:
        """This parameter's layout: the group's, else the method's default."""
        source = self._layout_source(group)
        if source is None:
            layout = None
        elif isinstance(source, (list, tuple)) and len(source) == len(group["params"]):
            layout = self._checked_layout(source[position], param, group.get("param_names"), position)
        else:  # a mapping or function put into the group after it was added
            layout = self._resolved_layouts(group, source)[position]
        return self._default_layout(group, tuple(param.shape)) if layout is None else layout

    def _option_items(self, group: Mapping[str, Any]) -> tuple[tuple[str, Any], ...]:
        """The group's method options as (name, value) pairs, the key of its cached state lists."""
        return tuple((option.name, group.get(option.name, option.default)) for option in self.method.options)

    def _state(self, group: Mapping[str, Any], param: torch.Tensor, position: int, shard: Shard,
               options: tuple[tuple[str, Any], ...]) -> dict[str, Any]:
        """The parameter's state, allocated as the byte model predicts for the group's current options.

        State is created at the parameter's first step. A tensor that the options ask for later
        (momentum turned on after the first step, e.g. by a cyclic scheduler) is allocated, zeroed,
        when they first do; one they no longer ask for is kept, unused, so turning an option back
        on resumes from it. For a shard, per-element state covers this rank's range only
        (:func:`memplan.sharding.local_state_tensors`), held as a DTensor placed like the
        parameter; in local sharding mode the shard is a tensor of its own, with the method's
        default layout for its shape.
        """
        state = self.state[param]
        if "layout" not in state:
            state["step"] = 0
            local_mode = shard.shape != tuple(param.shape)
            state["layout"] = (self._default_layout(group, shard.shape) if local_mode
                               else self._layout(group, param, position))
        dtype_name = str(param.dtype).removeprefix("torch.")
        tensors = _state_tensors(self.method, shard.shape, dtype_name, options, state["layout"])
        if shard.sharded:
            tensors = local_state_tensors(tensors, shard.shape, shard.rows, shard.shards)
        device = local_tensor(param).device
        for tensor in tensors:
            if tensor.key not in state:
                zeros = torch.zeros(tensor.shape, dtype=getattr(torch, tensor.dtype), device=device)
                sharded = shard.sharded and tensor.shard != "replicated"
                state[tensor.key] = distributed_like(zeros, param, tensor.shard) if sharded else zeros
        return state

    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        """One optimization step; ``closure`` re-evaluates the model and returns the loss.

        Sharded parameters reduce their partial statistics in one packed collective per step
        (see :mod:`memplan.optim.sharding`); :meth:`last_communication` tells what it moved.
        """
        loss = run_closure(closure)
        reductions = PartialReductions()
        self._communication = reductions.finish(self.begin_step(reductions))
        return loss

    def last_communication(self) -> tuple[int, int]:
        """The collectives and the bytes (this rank's buffers) that the last step's reduction moved."""
        return getattr(self, "_communication", (0, 0))

    def begin_step(self, reductions: PartialReductions) -> list[Callable[[], None]]:
        """The first half of a step: every parameter's range updated (or its statistics gathered),
        its partial statistics added to ``reductions``; returns what finishes each sharded
        parameter once they are reduced (:class:`~memplan.optim.planned.PlannedOptimizer` reduces
        several optimizers' statistics together this way). A parameter this rank holds whole is
        finished at once, so a single-device step keeps one parameter's temporaries at a time;
        a sharded step keeps every sharded parameter's partial vectors (the size of the replicated
        state) until the all-reduce."""
        finishers = []
        for group in self.param_groups:
            mode = group.get("sharding", "exact")
            batched = self._steps_in_batches(group)
            options = self._option_items(group)   # once per group: the same for all its parameters
            if batched and self._step_memo(group, options):
                continue
            self.__dict__.get("_batch_memos", {}).pop(id(group), None)
            batch: list[tuple[torch.Tensor, torch.Tensor, dict[str, Any]]] | None = [] if batched else None
            ready = self._ready_states()
            for position, param in enumerate(group["params"]):
                grad = param.grad
                if grad is None:
                    continue
                if grad.layout != torch.strided:
                    raise RuntimeError(f"{type(self).__name__} does not support sparse gradients "
                                       f"({_describe(param, group.get('param_names'), position)}); "
                                       f"densify them with grad.to_dense()")
                state = self.state[param]
                known = ready.get(param)
                if (known is not None and known[0] is state and known[1] == len(state) and known[3] == mode
                        and same_options(known[2], options)):
                    shard = known[4]   # a whole tensor whose state was complete for these options
                else:
                    shard = shard_of(param, mode)
                    state = self._state(group, param, position, shard, options)
                    if not shard.sharded:
                        ready[param] = (state, len(state), options, mode, shard)
                state["step"] += 1
                if math.prod(shard.shape) == 0:
                    continue
                if batch is not None and not shard.sharded and self._batchable(param, grad, state):
                    batch.append((param, grad, state))
                    continue
                finish = self._step_shard(group, param, grad, state, shard, reductions)
                if finish is None:
                    continue
                if shard.sharded:
                    finishers.append(finish)
                else:
                    finish()  # nothing to reduce: finished now, as a single-device step is
                finish = None  # so its vectors are freed before the next parameter allocates its own
            by_dtype: dict[torch.dtype, list[tuple[torch.Tensor, torch.Tensor, dict[str, Any]]]] = {}
            for item in batch or ():
                by_dtype.setdefault(item[0].dtype, []).append(item)
            for same_dtype in by_dtype.values():   # a kernel call steps one dtype
                self._step_new_batch(group, same_dtype, options)
        return finishers

    def _step_memo(self, group: Mapping[str, Any], options: tuple[tuple[str, Any], ...]) -> bool:
        """Step the group through the call prepared at an earlier step, if it still fits (see
        :mod:`memplan.optim.batches`); False (nothing done) otherwise."""
        memo = self.__dict__.get("_batch_memos", {}).get(id(group))
        grads = None if memo is None else memo.gradients(group, self.state, options)
        if grads is None:
            return False
        for state in memo.states:
            state["step"] += 1
        memo.prepared.run(group, grads, memo.states)
        return True

    def _step_new_batch(self, group: Mapping[str, Any],
                        batch: list[tuple[torch.Tensor, torch.Tensor, dict[str, Any]]],
                        options: tuple[tuple[str, Any], ...]) -> None:
        """Step a batch that the general path collected: through a prepared call, kept for the next
        steps when the batch is the whole group (see :mod:`memplan.optim.batches`), or through
        :meth:`_step_batch` where the method prepares none."""
        memos = self.__dict__.setdefault("_batch_memos", {})
        live = {id(known) for known in self.param_groups}
        for stale in [key for key in memos if key not in live]:   # groups replaced by a loaded state_dict
            del memos[stale]
        prepared = self._prepare_batch(group, batch)
        if prepared is None:
            self._step_batch(group, batch)
            return
        prepared.run(group, [grad for _, grad, _ in batch], [state for _, _, state in batch])
        if len(batch) == len(group["params"]):
            memos[id(group)] = BatchMemo.of(group, batch, options, prepared)

    def _ready_states(self) -> dict[torch.Tensor, tuple[Any, ...]]:
        """Per whole (unsharded) parameter, the state dict that :meth:`_state` last completed, its
        number of entries then, and the options and sharding mode it completed it for: while all
        are the same, a step skips the check (a few microseconds a parameter, a fifth of a compiled
        step's Python on ResNet-50's 161 tensors). Loading a state_dict replaces the state dicts, and
        an entry deleted changes the count: either renews the check. Not part of the optimizer's
        state (torch pickles only defaults, state and param_groups)."""
        ready = self.__dict__.get("_ready")
        if ready is None:
            ready = self.__dict__["_ready"] = {}
        return ready

    def _steps_in_batches(self, group: Mapping[str, Any]) -> bool:
        """Whether this group's whole, unsharded parameters step together, in one multi-tensor
        kernel call per step (:meth:`_step_batch`) rather than one call each."""
        return False

    def _batchable(self, param: torch.Tensor, grad: torch.Tensor, state: dict[str, Any]) -> bool:
        """Whether a parameter held whole joins its group's batch: a plain contiguous fp32 or float64
        tensor (bf16 and fp16 too on CUDA) with a gradient of its own dtype and layout (any other
        steps on its own, through a working copy where needed)."""
        dtypes = CUDA_BATCH_DTYPES if param.is_cuda else BATCH_DTYPES
        return (param.dtype in dtypes and grad.dtype == param.dtype and param.is_contiguous()
                and grad.is_contiguous() and not is_distributed(param) and not is_distributed(grad))

    def _step_batch(self, group: Mapping[str, Any],
                    batch: list[tuple[torch.Tensor, torch.Tensor, dict[str, Any]]]) -> None:
        """Step the batch's parameters (each with its gradient and its state, its step already
        counted; all of one dtype) in one multi-tensor kernel call."""
        raise NotImplementedError

    def _prepare_batch(self, group: Mapping[str, Any],
                       batch: list[tuple[torch.Tensor, torch.Tensor, dict[str, Any]]]) -> PreparedBatch | None:
        """The batch's multi-tensor call, prepared to run this step and later ones (see
        :mod:`memplan.optim.batches`), or None where the method steps batches through
        :meth:`_step_batch` only."""
        return None

    def _step_shard(self, group: Mapping[str, Any], param: torch.Tensor, grad: torch.Tensor, state: dict[str, Any],
                    shard: Shard, reductions: PartialReductions) -> Callable[[], None] | None:
        """Step this rank's part of ``param`` in its row-major order: layouts and state are defined on
        that order, so a non-contiguous parameter (channels_last, a slice of a larger tensor) steps
        through a contiguous copy, written back once the step is finished, and follows the
        contiguous parameter's trajectory."""
        local = local_tensor(param)
        weights = local.contiguous()
        finish = self._update_range(group, weights, local_tensor(grad).contiguous(), state, shard, reductions)
        if weights is local:
            return finish

        def finish_and_write_back() -> None:
            if finish is not None:
                finish()
            local.copy_(weights)

        if finish is None:
            finish_and_write_back()
            return None
        return finish_and_write_back

    def _update_range(self, group: Mapping[str, Any], weights: torch.Tensor, grads: torch.Tensor,
                      state: dict[str, Any], shard: Shard, reductions: PartialReductions) -> Callable[[], None] | None:
        """Update elements ``[shard.start, shard.stop)`` (``weights`` and ``grads``: this rank's
        contiguous part), add their partial statistics to ``reductions``, and return what finishes
        the parameter after the reduction (None when nothing is left).

        The default serves methods that only implement :meth:`_update` (the whole tensor at once):
        they step unsharded and local-mode parameters, and refuse an exact shard.
        """
        if shard.sharded:
            raise NotImplementedError(f"{type(self).__name__} has no sharded step; pass sharding='local' to "
                                      f"step each rank's shard on its own")
        self._update(group, weights, grads, state)
        return None

    def _update(self, group: Mapping[str, Any], param: torch.Tensor, grad: torch.Tensor,
                state: dict[str, Any]) -> None:
        raise NotImplementedError

    def state_dict(self) -> dict[str, Any]:
        """torch's state_dict, except that the packed bits of a parameter sharded in exact mode
        (SMMF's 1-bit signs under FSDP2, whose packing depends on the world size) are saved as one
        bool per element, a DTensor placed like the parameter: a distributed checkpoint then
        reshards them like the parameter, and loads them on another world size."""
        return with_param_states(self, super().state_dict(), saved_state)

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Load a state_dict, keeping each state tensor's saved dtype.

        torch casts floating-point state to the parameter's dtype on load, which would turn
        packed uint8 signs into floats and round fp32 state of bf16 parameters; here every
        tensor comes back exactly as it was saved (signs saved one bool per element by
        :meth:`state_dict` are packed again for this rank). Load pre-hooks (whose returned dict is
        the one loaded) and post-hooks (which see, and may edit, the loaded state) run as in torch.
        """
        load_state_dict(self, with_param_states(self, state_dict, self.loaded_state), lambda param: keep_saved_dtype)

    def loaded_state(self, group: Mapping[str, Any], param: torch.Tensor, state: dict[str, Any]) -> dict[str, Any]:
        """A parameter's saved ``state`` with the bits that :meth:`state_dict` saved one bool per
        element packed again as the method stores them on this rank (other state as it is)."""
        if group.get("sharding", "exact") == "local" and is_distributed(param):
            return state  # each shard's own state, saved as it is
        layout = state.get("layout")
        layout = None if layout is None else tuple(layout)
        dtype_name = str(param.dtype).removeprefix("torch.")
        try:
            tensors = self.method.state_tensors(tuple(param.shape), dtype_name, self._options(group), layout)
        except (TypeError, ValueError):
            return state  # not this method's state: loading refuses it, or takes it as it is
        packed = {tensor.key for tensor in tensors if tensor.shard == "bits"}
        return {key: packed_bits(value, param) if key in packed and _portable(value, param) else value
                for key, value in state.items()}


def _state_tensors(method: Method, shape: tuple[int, ...], dtype_name: str, options: tuple[tuple[str, Any], ...],
                   layout: Layout) -> tuple[Any, ...]:
    """``method.state_tensors`` for these options (given as pairs), cached where they hash: a step
    asks for every parameter's state list, and building it is most of a small tensor's step."""
    try:
        return _cached_state_tensors(method, shape, dtype_name, options, layout)
    except TypeError:   # an unhashable option value
        return method.state_tensors(shape, dtype_name, dict(options), layout)


@functools.lru_cache(maxsize=4096)
def _cached_state_tensors(method: Method, shape: tuple[int, ...], dtype_name: str,
                          options: tuple[tuple[str, Any], ...], layout: Layout) -> tuple[Any, ...]:
    return method.state_tensors(shape, dtype_name, dict(options), layout)


def saved_state(group: Mapping[str, Any], param: torch.Tensor, state: dict[str, Any]) -> dict[str, Any]:
    """A parameter's state as a checkpoint saves it: packed bits of a sharded parameter as one
    bool per element (see :meth:`MemplanOptimizer.state_dict`), everything else as it is."""
    return {key: portable_bits(value, param) if is_packed_bits(value, param) else value
            for key, value in state.items()}


def _portable(value: Any, param: torch.Tensor) -> bool:
    """Whether ``value`` holds one bool per element of ``param`` (bits saved by :func:`saved_state`)."""
    return isinstance(value, torch.Tensor) and value.dtype == torch.bool and tuple(value.shape) == tuple(param.shape)


def _describe(param: torch.Tensor, names: list[str] | None, position: int) -> str:
    label = f"parameter {names[position]!r}" if names else f"parameter #{position}"
    return f"{label} of shape {list(param.shape)}"


@contextlib.contextmanager
def updating(weights: torch.Tensor, grads: torch.Tensor, window: slice,
             group: Mapping[str, Any]) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """The working-dtype weight and effective gradient of one block, weight decay applied; on exit
    the weight is written back in the parameter's dtype (a no-op for fp32 and float64, updated in place)."""
    weight_block = weights[window]
    weight = working_copy(weight_block)
    gradient = effective_gradient(grads[window], weight, group)
    decay_weights(weight, group)
    yield weight, gradient
    if weight is not weight_block:
        weight_block.copy_(weight)


def block_bytes_per_element(group: Mapping[str, Any], param: torch.Tensor, own: int) -> int:
    """Peak temporary bytes per element of one block: the method's ``own`` temporaries (counted in
    fp32 elements, and scaled to the working dtype), plus the working copies of weight and gradient
    for low-precision parameters, plus the gradient copy that ``maximize`` or coupled weight decay
    makes (see :func:`updating`)."""
    item = working_dtype(param.dtype).itemsize
    per_element = own * item // 4
    if working_dtype(param.dtype) != param.dtype:
        per_element += 2 * item
    if group["maximize"] or (group["weight_decay"] and group["weight_decay_mode"] == COUPLED_DECAY):
        per_element += item
    return per_element


def run_closure(closure: Callable[[], Any] | None) -> Any:
    """Evaluate a step's closure with gradients enabled; None without one."""
    if closure is None:
        return None
    with torch.enable_grad():
        return closure()


def working_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype a parameter's math runs in: its own, or fp32 for bf16, fp16 and narrower types
    (their rounding would swamp the update; float64 keeps its precision)."""
    return torch.float32 if dtype.itemsize < 4 else dtype


def working_copy(block: torch.Tensor) -> torch.Tensor:
    """The block in its working dtype for the math: itself, or an fp32 copy of a low-precision block."""
    dtype = working_dtype(block.dtype)
    return block if block.dtype == dtype else block.to(dtype)


def learning_rate(group: Mapping[str, Any]) -> float:
    """The group's learning rate as a number: a tensor learning rate is read at each step, so that
    schedulers updating it in place take effect (reading one held on a GPU synchronises with it)."""
    lr = group["lr"]
    return float(lr) if isinstance(lr, torch.Tensor) else lr


def effective_gradient(grad: torch.Tensor, weight: torch.Tensor, group: Mapping[str, Any]) -> torch.Tensor:
    """The gradient block in the weight's (working) dtype, with maximize and coupled ("adam"-mode)
    weight decay applied."""
    gradient = grad if grad.dtype == weight.dtype else grad.to(weight.dtype)
    if group["maximize"]:
        gradient = -gradient
    if group["weight_decay"] and group["weight_decay_mode"] == COUPLED_DECAY:
        gradient = gradient.add(weight, alpha=group["weight_decay"])
    return gradient


def decay_weights(weight: torch.Tensor, group: Mapping[str, Any]) -> None:
    """Decoupled ("adamw"-mode) weight decay: W <- W * (1 - lr * wd), in place."""
    if group["weight_decay"] and group["weight_decay_mode"] == DECOUPLED_DECAY:
        weight.mul_(1.0 - learning_rate(group) * group["weight_decay"])


def flat_view(tensor: torch.Tensor) -> torch.Tensor:
    """A flat view of a contiguous tensor (parameters and gradients are updated through views;
    :meth:`MemplanOptimizer.step` hands ``_update_range`` contiguous ones)."""
    return tensor.view(-1)


def kernel_decay(group: Mapping[str, Any]) -> tuple[float, float, bool]:
    """Weight decay and maximize as the fused kernels take them: the factor decoupled decay
    multiplies the weight by (1.0 without), the coupled decay added to the gradient (0.0 without),
    and whether the gradient is negated."""
    decay = group["weight_decay"]
    decoupled = bool(decay) and group["weight_decay_mode"] == DECOUPLED_DECAY
    coupled = decay if decay and group["weight_decay_mode"] == COUPLED_DECAY else 0.0
    return (1.0 - learning_rate(group) * decay if decoupled else 1.0), coupled, bool(group["maximize"])


def kernel_chunk_elements(group: Mapping[str, Any]) -> int | None:
    """Elements per fp32 working copy when a kernel steps a low-precision parameter (weight and
    gradient copies within ``chunk_bytes``); None when unchunked."""
    chunk = group["chunk_bytes"]
    return None if chunk is None else max(8, chunk // 8)


def block_budget(group: Mapping[str, Any], fixed_bytes: int) -> int | None:
    """The group's chunk minus the step's fixed temporaries (per-axis vectors), but at least half
    the chunk; None when unchunked.

    Fixed temporaries larger than the chunk (a long vector's per-element accumulators) already
    break the bound, and blocks shrunk to a single element would only make the step thousands of
    times slower, so blocks keep half a chunk then.
    """
    chunk = group["chunk_bytes"]
    return None if chunk is None else max(chunk // 2, chunk - fixed_bytes)
