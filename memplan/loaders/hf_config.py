"""A Hugging Face model folder holding ``config.json`` -> ModelProfile, offline, on ``meta``.

The architecture named in the config (``architectures[0]``, else the ``AutoModel`` class for its
``model_type``) is built from the config alone: no weights are downloaded or read, and no
remote code is trusted.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import json
import os
import warnings
from pathlib import Path

from memplan.errors import AssumptionWarning, SourceError
from memplan.loaders.module import profile_from_module
from memplan.profile import ModelProfile

if TYPE_CHECKING:
    import torch


def load_hf_config(folder: Path) -> ModelProfile:
    """Build the model that ``folder/config.json`` describes on ``meta`` and list its parameters."""
    model = build_hf_model(folder, device="meta")
    return profile_from_module(model, name=folder.resolve().name, source=str(folder))


def config_dtype(config: object) -> "torch.dtype | None":
    """The floating dtype config.json names (``dtype``, or the older ``torch_dtype``), if any."""
    import torch

    # recent transformers call it dtype (and warn when torch_dtype is read); older ones torch_dtype
    named = getattr(config, "dtype") if hasattr(config, "dtype") else getattr(config, "torch_dtype", None)
    if isinstance(named, str):
        named = getattr(torch, named, None)
    return named if isinstance(named, torch.dtype) and named.is_floating_point else None


def build_hf_model(folder: Path, device: str = "meta") -> object:
    """Instantiate the architecture of ``folder/config.json`` with ``device`` as default device."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    try:
        import transformers
    except ImportError:
        raise SourceError(
            f"{folder}: reading a Hugging Face config needs transformers: pip install 'memplan[hf]'"
        ) from None
    import torch

    try:
        config = transformers.AutoConfig.from_pretrained(str(folder), local_files_only=True, trust_remote_code=False)
    except (OSError, ValueError, KeyError) as error:
        raise SourceError(f"{folder / 'config.json'}: {' '.join(str(error).split())}") from None
    architectures = getattr(config, "architectures", None) or []
    model_class = getattr(transformers, architectures[0], None) if architectures else None
    if architectures and model_class is None:
        warnings.warn(AssumptionWarning(
            f"{folder / 'config.json'}: transformers {transformers.__version__} has no {architectures[0]}: "
            f"built its base model for model_type {config.model_type!r}, without any task head"), stacklevel=2)
    dtype = config_dtype(config)
    try:
        with torch.device(device):
            model = model_class(config) if model_class is not None else transformers.AutoModel.from_config(config)
        model = model.to(dtype) if dtype is not None else model
    except Exception as error:  # transformers raises many types for configs it cannot build
        raise SourceError(
            f"{folder / 'config.json'}: cannot build {architectures[0] if architectures else config.model_type}: "
            f"{type(error).__name__}: {' '.join(str(error).split())}"
        ) from None
    _note_forced_tying(folder, model, transformers.__version__)
    _note_fused_experts(folder, model, transformers.__version__)
    return model


def _note_forced_tying(folder: Path, model: "torch.nn.Module", version: str) -> None:
    """A note when config.json asks for untied word embeddings and transformers ties them anyway
    (T5's config class forces ``tie_word_embeddings`` to true, whatever the file says)."""
    try:
        asked = json.loads((folder / "config.json").read_text(encoding="utf-8")).get("tie_word_embeddings")
        inputs, outputs = model.get_input_embeddings(), model.get_output_embeddings()
    except Exception:  # a config or model without word embeddings: nothing to say
        return
    if asked is not False or inputs is None or outputs is None:
        return
    weight = getattr(outputs, "weight", None)
    if weight is None or weight is not getattr(inputs, "weight", None):
        return
    names = [name for name, param in model.named_parameters(remove_duplicate=False) if param is weight]
    output_name = next((f"{name}.weight" for name, module in model.named_modules() if module is outputs), names[-1])
    warnings.warn(AssumptionWarning(
        f"{folder / 'config.json'}: tie_word_embeddings is false, but transformers {version} ties "
        f"{output_name} to {names[0]} anyway: counted once, as {names[0]}"), stacklevel=3)


def _note_fused_experts(folder: Path, model: "torch.nn.Module", version: str) -> None:
    """A note when transformers holds a mixture of experts' weights fused, one 3-D parameter per
    projection for all experts (``experts.gate_up_proj``), where checkpoints often store each
    expert apart (``experts.0.w1.weight``): the profile's names and shapes are the modules'."""
    fused = [
        (f"{name}.{param_name}", tuple(param.shape))
        for name, module in model.named_modules() if name.rsplit(".", 1)[-1] == "experts"
        for param_name, param in module.named_parameters(recurse=False) if param.dim() >= 3
    ]
    if not fused:
        return
    name, shape = fused[0]
    warnings.warn(AssumptionWarning(
        f"{folder / 'config.json'}: transformers {version} holds the {shape[0]} experts of each MoE layer fused in "
        f"3-D parameters ({name} {'x'.join(map(str, shape))} and {len(fused) - 1} more), where a checkpoint's "
        f"safetensors may store each expert apart: the profile, and a plan made from it, use transformers' "
        f"module names and shapes"), stacklevel=3)
