"""Profiles shipped with memplan (``memplan.profiles/models/*.yaml``), found by name."""

from __future__ import annotations

from importlib import resources

from memplan.profile import ModelProfile


def bundled_profile_names() -> list[str]:
    """Names of the bundled model profiles, sorted (``gpt2``, ``llama-7b``, ...)."""
    folder = resources.files("memplan.profiles") / "models"
    return sorted(item.name.removesuffix(".yaml") for item in folder.iterdir() if item.name.endswith(".yaml"))


def load_bundled(name: str) -> ModelProfile:
    """The bundled profile called ``name``; raises KeyError when there is none."""
    resource = resources.files("memplan.profiles") / "models" / f"{name}.yaml"
    if not resource.is_file():
        raise KeyError(name)
    return ModelProfile.from_yaml(resource.read_text(encoding="utf-8"), where=f"bundled profile {name}")
