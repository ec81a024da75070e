"""A live ``nn.Module`` (usually on the meta device) -> ModelProfile."""

from __future__ import annotations

from typing import TYPE_CHECKING

from memplan.dtypes import canonical_dtype
from memplan.loaders.kinds import kind_from_module
from memplan.profile import ModelProfile, ParamSpec

if TYPE_CHECKING:
    import torch


def profile_from_module(model: "torch.nn.Module", name: str, source: str) -> ModelProfile:
    """List every parameter of ``model`` once; tied parameters become aliases of the first name.

    The kind comes from the module that first holds the parameter. Frozen parameters
    (``requires_grad=False``) are kept with ``trainable=False``.
    """
    first_name: dict[int, str] = {}
    entries: dict[str, dict] = {}
    for module_name, module in model.named_modules(remove_duplicate=False):
        classes = tuple(cls.__name__ for cls in type(module).__mro__)
        for local_name, param in module.named_parameters(recurse=False):
            full_name = f"{module_name}.{local_name}" if module_name else local_name
            key = id(param)
            if key in first_name:
                aliases = entries[first_name[key]]["aliases"]
                if full_name != first_name[key] and full_name not in aliases:
                    aliases.append(full_name)
                continue
            first_name[key] = full_name
            shape = tuple(param.shape)
            entries[full_name] = {
                "shape": shape,
                "dtype": canonical_dtype(param.dtype),
                "kind": kind_from_module(classes, local_name, shape),
                "trainable": bool(param.requires_grad),
                "aliases": [],
            }
    params = tuple(
        ParamSpec(name=full_name, shape=entry["shape"], dtype=entry["dtype"], kind=entry["kind"],
                  trainable=entry["trainable"], aliases=tuple(entry["aliases"]))
        for full_name, entry in entries.items()
    )
    return ModelProfile(name=name, source=source, params=params)
