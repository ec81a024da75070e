"""Model sources -> ModelProfile. :func:`load_profile` detects the kind of source and dispatches.

Sources: a ``model.py``; a checkpoint (``.pt``/``.pth``/``.bin``/``.ckpt``); a ``.safetensors``
file or a sharded checkpoint's ``*.safetensors.index.json``; a profile YAML; a Hugging Face
folder with ``config.json``; or the name of a bundled profile (``gpt2``).
"""

from __future__ import annotations

import re
from dataclasses import replace
from pathlib import Path

from memplan.errors import SourceError, UsageError
from memplan.loaders.bundled import bundled_profile_names, load_bundled
from memplan.loaders.checkpoint import CHECKPOINT_SUFFIXES as _CHECKPOINT_SUFFIXES
from memplan.loaders.safetensors_file import INDEX_SUFFIX as _INDEX_SUFFIX
from memplan.profile import ModelProfile

SOURCE_KINDS = ("python", "checkpoint", "safetensors", "sharded", "profile", "hf", "bundled")


def source_kind(source: str | Path) -> str:
    """Which loader reads ``source`` (one of :data:`SOURCE_KINDS`); raises SourceError if none does."""
    path = Path(source)
    if path.is_dir():
        if (path / "config.json").is_file():
            return "hf"
        if (path / f"model{_INDEX_SUFFIX}").is_file():
            return "sharded"
        if (path / "model.safetensors").is_file():
            return "safetensors"
        raise SourceError(f"{path}: folder holds no config.json, model.safetensors or model{_INDEX_SUFFIX}")
    if path.is_file():
        name = path.name.lower()
        if name.endswith(_INDEX_SUFFIX):
            return "sharded"
        if name == "config.json":
            return "hf"
        suffix = path.suffix.lower()
        kinds = {".py": "python", ".safetensors": "safetensors", ".yaml": "profile", ".yml": "profile"}
        if suffix in kinds:
            return kinds[suffix]
        if suffix in _CHECKPOINT_SUFFIXES:
            return "checkpoint"
        raise SourceError(
            f"{path}: unknown kind of source (expected .py, {', '.join(_CHECKPOINT_SUFFIXES)}, "
            f".safetensors, {_INDEX_SUFFIX}, .yaml, config.json or a folder)"
        )
    if str(source) in bundled_profile_names():
        return "bundled"
    if path.suffix or "/" in str(source) or "\\" in str(source):
        raise SourceError(f"{source}: no such file or folder")
    raise SourceError(
        f"{source}: no such file or bundled profile (bundled: {', '.join(bundled_profile_names())})"
    )


def load_profile(source: str | Path, entry: str | None = None, strip_prefix: str | None = None,
                 freeze: str | None = None) -> ModelProfile:
    """Read any supported model source into a ModelProfile.

    ``entry`` picks the model in a ``model.py``; ``strip_prefix`` removes a name prefix such as
    DDP's ``module.`` from checkpoint and safetensors names; ``freeze`` is a regular expression:
    parameters whose name matches are listed but marked not trainable.
    """
    kind = source_kind(source)
    path = Path(source)
    if entry is not None and kind != "python":
        raise UsageError(f"--entry applies to a model.py source, not to a {kind} source")
    if strip_prefix is not None and kind not in {"checkpoint", "safetensors", "sharded"}:
        raise UsageError(f"--strip-prefix applies to checkpoint and safetensors sources, not to a {kind} source")
    if kind == "python":
        from memplan.loaders.python_file import load_python_file
        profile = load_python_file(path, entry=entry)
    elif kind == "checkpoint":
        from memplan.loaders.checkpoint import load_checkpoint
        profile = load_checkpoint(path, strip_prefix=strip_prefix)
    elif kind == "safetensors":
        from memplan.loaders.safetensors_file import load_safetensors
        profile = load_safetensors(path / "model.safetensors" if path.is_dir() else path, strip_prefix=strip_prefix)
    elif kind == "sharded":
        from memplan.loaders.safetensors_file import load_sharded
        profile = load_sharded(path / f"model{_INDEX_SUFFIX}" if path.is_dir() else path, strip_prefix=strip_prefix)
    elif kind == "hf":
        from memplan.loaders.hf_config import load_hf_config
        profile = load_hf_config(path if path.is_dir() else path.parent)
    elif kind == "profile":
        profile = ModelProfile.load(path)
    else:
        profile = load_bundled(str(source))
    return freeze_matching(profile, freeze) if freeze else profile


def freeze_matching(profile: ModelProfile, pattern: str) -> ModelProfile:
    """A copy of ``profile`` where parameters whose name (or alias) matches ``pattern`` are frozen."""
    try:
        regex = re.compile(pattern)
    except re.error as error:
        raise UsageError(f"--freeze {pattern!r} is not a valid regular expression: {error}") from None
    params = tuple(
        replace(spec, trainable=False)
        if any(regex.search(label) for label in (spec.name, *spec.aliases)) else spec
        for spec in profile.params
    )
    return replace(profile, params=params)


__all__ = ["SOURCE_KINDS", "bundled_profile_names", "freeze_matching", "load_profile", "source_kind"]
