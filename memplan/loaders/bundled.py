"""Profiles shipped with memplan (``memplan.profiles/models/*.yaml``), found by name."""

from __future__ import annotations

from memplan.profile import ModelProfile
from memplan.yamlfile import bundled_names, bundled_text


def bundled_profile_names() -> list[str]:
    """Names of the bundled model profiles, sorted (``gpt2``, ``llama-7b``, ...)."""
    return bundled_names("models")


def load_bundled(name: str) -> ModelProfile:
    """The bundled profile called ``name``; raises KeyError when there is none."""
    text = bundled_text("models", name)
    if text is None:
        raise KeyError(name)
    return ModelProfile.from_yaml(text, where=f"bundled profile {name}")
