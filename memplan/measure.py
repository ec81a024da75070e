"""Measuring what an optimizer really holds: the bytes of its state.

How a device measures a step's peak and time is the device's own business
(:meth:`memplan.devices.Device.peak_during`, :meth:`memplan.devices.Device.time_steps`).
"""

from __future__ import annotations

from typing import Any, Iterator

import torch


def plain_tensors(key: str, value: Any) -> Iterator[tuple[str, torch.Tensor]]:
    """``(key, tensor)`` for a plain tensor; for a tensor subclass that wraps others (torchao's
    quantized optimizer state: codes, scales, a map), each inner tensor as ``key.attribute``,
    recursively. Anything that is not a tensor yields nothing."""
    if not isinstance(value, torch.Tensor):
        return
    flatten = getattr(type(value), "__tensor_flatten__", None)
    if flatten is None:
        yield key, value
        return
    attributes, _ = value.__tensor_flatten__()
    for attribute in attributes:
        yield from plain_tensors(f"{key}.{attribute}", getattr(value, attribute))


def state_storage_bytes(optimizer: torch.optim.Optimizer, skip_keys: tuple[str, ...] = ("step",)) -> int:
    """Bytes of the distinct storages held in ``optimizer.state`` (step counters excluded), the
    inner tensors of tensor subclasses included (see :func:`plain_tensors`)."""
    seen: dict[tuple[str, int], int] = {}
    for state in optimizer.state.values():
        for key, value in state.items():
            if key in skip_keys:
                continue
            for _, tensor in plain_tensors(key, value):
                storage = tensor.untyped_storage()
                # storages without memory (meta, empty) have no address: count each tensor once
                identity = (str(tensor.device), storage.data_ptr() or id(tensor))
                seen[identity] = storage.nbytes()
    return sum(seen.values())
