"""``.safetensors`` files and sharded checkpoints -> ModelProfile, from the headers alone.

safetensors' ``safe_open`` parses the JSON header and memory-maps the file; asking a slice for
its shape and dtype reads no tensor data. A sharded checkpoint is read through its
``*.safetensors.index.json`` weight map, one header per shard.
"""

from __future__ import annotations

import json
from pathlib import Path

from memplan.dtypes import canonical_dtype
from memplan.errors import ProfileError, SourceError
from memplan.loaders.tensors import TensorEntry, profile_from_entries
from memplan.profile import ModelProfile

INDEX_SUFFIX = ".safetensors.index.json"


def load_safetensors(path: Path, strip_prefix: str | None = None) -> ModelProfile:
    """Read names, shapes and dtypes from one ``.safetensors`` file's header."""
    entries = _header_entries(path)
    return profile_from_entries(entries, name=_model_name(path), source=str(path), strip_prefix=strip_prefix)


def load_sharded(index_path: Path, strip_prefix: str | None = None) -> ModelProfile:
    """Read a sharded checkpoint through its index: every tensor of the weight map, in its order."""
    try:
        index = json.loads(index_path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as error:
        raise SourceError(f"{index_path}: cannot read: {error}") from None
    except json.JSONDecodeError as error:
        raise SourceError(f"{index_path}: not valid JSON: {error}") from None
    weight_map = index.get("weight_map") if isinstance(index, dict) else None
    if not isinstance(weight_map, dict) or not weight_map:
        raise SourceError(f"{index_path}: no 'weight_map' of tensor names to shard files")
    by_name: dict[str, TensorEntry] = {}
    for shard in dict.fromkeys(weight_map.values()):
        shard_path = index_path.parent / str(shard)
        if not shard_path.is_file():
            raise SourceError(f"{index_path}: shard {shard} named in the weight map does not exist")
        for entry in _header_entries(shard_path):
            by_name[entry.name] = entry
    missing = [name for name in weight_map if name not in by_name]
    if missing:
        raise SourceError(f"{index_path}: tensor {missing[0]} is mapped to {weight_map[missing[0]]} but not stored there")
    entries = [by_name[name] for name in weight_map]
    name = index_path.name.removesuffix(INDEX_SUFFIX)
    if name in {"model", "pytorch_model", ""}:
        name = index_path.resolve().parent.name
    return profile_from_entries(entries, name=name, source=str(index_path), strip_prefix=strip_prefix)


def _header_entries(path: Path) -> list[TensorEntry]:
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="numpy") as handle:
            entries = []
            for name in handle.keys():
                tensor_slice = handle.get_slice(name)
                dtype = canonical_dtype(tensor_slice.get_dtype())
                entries.append(TensorEntry(name, tuple(tensor_slice.get_shape()), dtype))
    except SafetensorError as error:
        raise SourceError(f"{path}: not a valid safetensors file: {error}") from None
    except ProfileError as error:
        raise SourceError(f"{path}: {error}") from None
    except OSError as error:
        raise SourceError(f"{path}: cannot read: {error.strerror or error}") from None
    return entries


def _model_name(path: Path) -> str:
    """``gpt2/model.safetensors`` -> ``gpt2``; ``tiny.safetensors`` -> ``tiny``."""
    stem = path.name.removesuffix(".safetensors")
    if stem in {"model", "pytorch_model", "diffusion_pytorch_model"}:
        return path.resolve().parent.name
    return stem
