"""PyTorch checkpoints (``.pt``, ``.pth``, ``.bin``, ``.ckpt``) -> ModelProfile, never via plain pickle.

``torch.load(weights_only=True)`` restricts unpickling to tensors and plain containers, so a
checkpoint that would run code when unpickled is refused before anything runs. With
``mmap=True`` the tensor data stays on disk: only shapes and dtypes are read.
"""

from __future__ import annotations

import pickle
import zipfile
from pathlib import Path
from typing import Any, Mapping

from memplan.dtypes import canonical_dtype
from memplan.errors import SourceError
from memplan.loaders.tensors import TensorEntry, profile_from_entries
from memplan.profile import ModelProfile

CHECKPOINT_SUFFIXES = (".pt", ".pth", ".bin", ".ckpt")
# Keys under which training scripts commonly nest the model's state dict.
NESTED_KEYS = ("state_dict", "model_state_dict", "model", "module")


def load_checkpoint(path: Path, strip_prefix: str | None = None) -> ModelProfile:
    """Read the parameter shapes of a checkpoint file (a state dict, possibly nested)."""
    import torch

    _check_checkpoint_format(path)
    try:
        try:
            loaded = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError as error:
            if "mmap" not in str(error):
                raise
            # Legacy (pre-zip) files cannot be memory-mapped; still restricted to weights only.
            loaded = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        reason = str(error).split("\n")[0] if "Weights only load failed" not in str(error) else (
            "it holds objects other than tensors and plain containers")
        raise SourceError(
            f"{path}: refused to load: {reason}; memplan never unpickles code "
            f"(export a plain state_dict or safetensors file)"
        ) from None
    except (RuntimeError, EOFError, OSError, ValueError) as error:
        raise SourceError(f"{path}: not a readable PyTorch checkpoint: {_first_line(error)}") from None
    state_dict = _find_state_dict(loaded, path, trail="")
    entries = [_entry(name, tensor) for name, tensor in state_dict.items() if isinstance(tensor, torch.Tensor)]
    return profile_from_entries(entries, name=path.stem, source=str(path), strip_prefix=strip_prefix)


PICKLE_PROTOCOL_OPCODE = 0x80
"""The first byte of a pickle of protocol 2 or later, which legacy (pre-zip) torch files are."""


def _check_checkpoint_format(path: Path) -> None:
    """SourceError unless ``path`` looks like what torch.save writes: a zip archive, or a pickle."""
    try:
        with open(path, "rb") as stream:
            head = stream.read(8)
    except OSError as error:
        raise SourceError(f"{path}: cannot be read: {error.strerror or error}") from None
    if zipfile.is_zipfile(path) or (head and head[0] == PICKLE_PROTOCOL_OPCODE):
        return
    shown = head.decode("ascii", "replace") if head.isascii() else head.hex(" ")
    raise SourceError(f"{path}: not a PyTorch checkpoint (torch.save writes a zip archive or a pickle; "
                      f"this file starts with {shown!r})")


def _find_state_dict(obj: Any, path: Path, trail: str) -> Mapping[str, Any]:
    import torch

    if not isinstance(obj, Mapping):
        raise SourceError(f"{path}: expected a state dict (a mapping of names to tensors), found {type(obj).__name__}")
    if any(isinstance(value, torch.Tensor) for value in obj.values()):
        return obj
    for key in NESTED_KEYS:
        if isinstance(obj.get(key), Mapping):
            return _find_state_dict(obj[key], path, f"{trail}[{key!r}]")
    keys = ", ".join(repr(key) for key in list(obj)[:10]) or "none"
    raise SourceError(
        f"{path}: no tensors found at the top level{' of ' + trail if trail else ''} nor under "
        f"{', '.join(NESTED_KEYS)} (keys: {keys})"
    )


def _entry(name: str, tensor: "Any") -> TensorEntry:
    storage_key = None
    if tensor.numel() > 0:
        storage_key = (tensor.untyped_storage().data_ptr(), tensor.storage_offset(),
                       tuple(tensor.shape), tuple(tensor.stride()), tensor.dtype)
    return TensorEntry(str(name), tuple(tensor.shape), canonical_dtype(tensor.dtype), storage_key)


def _first_line(error: BaseException) -> str:
    text = str(error).strip().split("\n")[0]
    return text or type(error).__name__
