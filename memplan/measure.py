"""Measuring what an optimizer really holds: the bytes of its state.

How a device measures a step's peak and time is the device's own business
(:meth:`memplan.devices.Device.peak_during`, :meth:`memplan.devices.Device.time_steps`).
"""

from __future__ import annotations

import torch


def state_storage_bytes(optimizer: torch.optim.Optimizer, skip_keys: tuple[str, ...] = ("step",)) -> int:
    """Bytes of the distinct storages held in ``optimizer.state`` (step counters excluded)."""
    seen: dict[tuple[str, int], int] = {}
    for state in optimizer.state.values():
        for key, value in state.items():
            if isinstance(value, torch.Tensor) and key not in skip_keys:
                storage = value.untyped_storage()
                # storages without memory (meta, empty) have no address: count each tensor once
                identity = (str(value.device), storage.data_ptr() or id(value))
                seen[identity] = storage.nbytes()
    return sum(seen.values())
