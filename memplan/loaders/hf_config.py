"""A Hugging Face model folder holding ``config.json`` -> ModelProfile, offline, on ``meta``.

The architecture named in the config (``architectures[0]``, else the ``AutoModel`` class for its
``model_type``) is built from the config alone: no weights are downloaded or read, and no
remote code is trusted.
"""

from __future__ import annotations

import os
from pathlib import Path

from memplan.errors import SourceError
from memplan.loaders.module import profile_from_module
from memplan.profile import ModelProfile


def load_hf_config(folder: Path) -> ModelProfile:
    """Build the model that ``folder/config.json`` describes on ``meta`` and list its parameters."""
    model = build_hf_model(folder, device="meta")
    return profile_from_module(model, name=folder.resolve().name, source=str(folder))


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
    try:
        with torch.device(device):
            if model_class is not None:
                return model_class(config)
            return transformers.AutoModel.from_config(config)
    except Exception as error:  # transformers raises many types for configs it cannot build
        raise SourceError(
            f"{folder / 'config.json'}: cannot build {architectures[0] if architectures else config.model_type}: "
            f"{type(error).__name__}: {' '.join(str(error).split())}"
        ) from None
