"""Named tensor metadata (from a state dict or a safetensors header) -> ModelProfile.

Without the model's code, parameters are told from buffers by name and dtype, kinds are read
from names and shapes, and tied weights are entries that share one storage.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Hashable, Iterable

from memplan.dtypes import is_floating
from memplan.loaders.kinds import batch_norm_modules, is_buffer_name, kind_from_name
from memplan.profile import ModelProfile, ParamSpec


@dataclass(frozen=True)
class TensorEntry:
    """One named tensor as stored: shape, dtype and an optional key of the memory it occupies."""

    name: str
    shape: tuple[int, ...]
    dtype: str
    storage_key: Hashable | None = None


def profile_from_entries(entries: Iterable[TensorEntry], name: str, source: str,
                         strip_prefix: str | None = None) -> ModelProfile:
    """Build a profile from stored tensors, skipping buffers and merging tensors that share memory.

    Non-floating tensors and well-known buffers (batch-norm running statistics) are not
    parameters. ``strip_prefix`` (e.g. ``"module."`` from DistributedDataParallel) is removed
    from every name that starts with it.
    """
    kept: list[TensorEntry] = []
    for entry in entries:
        if strip_prefix and entry.name.startswith(strip_prefix):
            entry = TensorEntry(entry.name[len(strip_prefix):], entry.shape, entry.dtype, entry.storage_key)
        kept.append(entry)
    norm_modules = batch_norm_modules([entry.name for entry in kept])
    first_by_storage: dict[Hashable, str] = {}
    aliases: dict[str, list[str]] = {}
    order: list[TensorEntry] = []
    for entry in kept:
        if is_buffer_name(entry.name) or not is_floating(entry.dtype):
            continue
        if entry.storage_key is not None:
            owner = first_by_storage.setdefault(entry.storage_key, entry.name)
            if owner != entry.name:
                aliases[owner].append(entry.name)
                continue
        aliases[entry.name] = []
        order.append(entry)
    params = tuple(
        ParamSpec(name=entry.name, shape=entry.shape, dtype=entry.dtype,
                  kind=kind_from_name(entry.name, entry.shape, norm_modules),
                  aliases=tuple(aliases[entry.name]))
        for entry in order
    )
    return ModelProfile(name=name, source=source, params=params)
