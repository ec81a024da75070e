"""A ``model.py`` -> ModelProfile: import the file and build its model on the ``meta`` device.

On ``meta`` every tensor has a shape and a dtype but no storage, so listing a 7 B-parameter
model costs no memory and no initialisation time. The file is imported with the default
device set to ``meta``, which covers models built at import time as well as by a function.

How the model is found, in order:
1. ``--entry NAME``: a module-level ``nn.Module``, an ``nn.Module`` class, or a zero-argument
   function returning one;
2. a ``build_model`` function, else a ``model`` attribute (module or zero-argument callable);
3. the only ``nn.Module`` subclass defined in the file itself.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import inspect
import sys
import traceback
from pathlib import Path
from types import ModuleType
from typing import Any, Callable, Iterator

from memplan.errors import SourceError
from memplan.loaders.module import profile_from_module
from memplan.profile import ModelProfile

DEFAULT_ENTRIES = ("build_model", "model")


def load_python_file(path: Path, entry: str | None = None) -> ModelProfile:
    """Import ``path``, build its model on ``meta`` and list its parameters."""
    model = build_model_from_file(path, entry=entry, device="meta")
    return profile_from_module(model, name=entry or path.stem, source=str(path))


def build_model_from_file(path: Path, entry: str | None = None, device: str = "meta") -> Any:
    """Return the ``nn.Module`` that ``path`` defines, built with ``device`` as the default device."""
    return load_model_file(path, entry, device)[1]


def load_model_file(path: Path, entry: str | None = None, device: str = "meta") -> tuple[ModuleType, Any]:
    """Import ``path`` and build its model with ``device`` as the default device: (module, model)."""
    import torch

    with torch.device(device):
        module = import_model_file(path)
        factory, label = _find_entry(module, path, entry)
        with _user_code(path, f"building the model from {label}"):
            model = factory()
    if not isinstance(model, torch.nn.Module):
        raise SourceError(f"{path}: {label} returned {type(model).__name__}, not a torch.nn.Module")
    return module, model


def import_model_file(path: Path) -> ModuleType:
    """Import a Python file as a fresh module (its folder is importable while it runs)."""
    resolved = path.resolve()
    if not resolved.is_file():
        raise SourceError(f"{path}: no such file")
    digest = hashlib.sha256(str(resolved).encode()).hexdigest()[:12]
    module_name = f"memplan_user_{resolved.stem}_{digest}"
    spec = importlib.util.spec_from_file_location(module_name, resolved)
    if spec is None or spec.loader is None:
        raise SourceError(f"{path}: cannot be imported as a Python module")
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    sys.path.insert(0, str(resolved.parent))
    try:
        with _user_code(path, "importing it"):
            spec.loader.exec_module(module)
    except SourceError:
        sys.modules.pop(module_name, None)
        raise
    finally:
        with contextlib.suppress(ValueError):
            sys.path.remove(str(resolved.parent))
    return module


def _find_entry(module: ModuleType, path: Path, entry: str | None) -> tuple[Callable[[], Any], str]:
    import torch

    if entry is not None:
        if not hasattr(module, entry):
            raise SourceError(
                f"{path}: no attribute {entry!r} (candidates: {', '.join(_candidates(module)) or 'none'})"
            )
        return _as_factory(getattr(module, entry), path, entry), entry
    for name in DEFAULT_ENTRIES:
        if hasattr(module, name):
            return _as_factory(getattr(module, name), path, name), name
    defined = [
        name for name, value in vars(module).items()
        if inspect.isclass(value) and issubclass(value, torch.nn.Module)
        and value.__module__ == module.__name__
    ]
    if len(defined) == 1:
        return _as_factory(getattr(module, defined[0]), path, defined[0]), defined[0]
    if not defined:
        raise SourceError(
            f"{path}: no model found: define build_model() or model, or an nn.Module subclass, "
            f"or name one with --entry"
        )
    raise SourceError(
        f"{path}: several nn.Module classes ({', '.join(defined)}); pick one with --entry NAME"
    )


def _as_factory(value: Any, path: Path, name: str) -> Callable[[], Any]:
    import torch

    if isinstance(value, torch.nn.Module):
        return lambda: value
    if callable(value):
        return value
    raise SourceError(f"{path}: {name} is a {type(value).__name__}, not an nn.Module, class or function")


def _candidates(module: ModuleType) -> list[str]:
    import torch

    return [
        name for name, value in vars(module).items()
        if not name.startswith("_") and (
            isinstance(value, torch.nn.Module)
            or (inspect.isclass(value) and issubclass(value, torch.nn.Module) and value.__module__ == module.__name__)
            or (inspect.isfunction(value) and value.__module__ == module.__name__)
        )
    ]


@contextlib.contextmanager
def user_code(path: Path, doing: str) -> Iterator[None]:
    """Run code of the user's file; any exception becomes one SourceError naming the file's line."""
    with _user_code(path, doing):
        yield


@contextlib.contextmanager
def _user_code(path: Path, doing: str) -> Iterator[None]:
    """Turn any exception raised by the user's file into one SourceError naming the line."""
    try:
        yield
    except SourceError:
        raise
    except (Exception, SystemExit) as error:  # the user's code can raise anything
        where = _user_line(error, path)
        message = " ".join(str(error).split()) or type(error).__name__
        raise SourceError(f"{path}{where}: failed while {doing}: {type(error).__name__}: {message}") from None


def _user_line(error: BaseException, path: Path) -> str:
    """``:LINE`` of the deepest frame inside the user's file, or ``""``."""
    resolved = str(path.resolve())
    line = ""
    for frame in traceback.extract_tb(error.__traceback__):
        if frame.filename == resolved:
            line = f":{frame.lineno}"
    if not line and isinstance(error, SyntaxError) and error.lineno:
        line = f":{error.lineno}"
    return line
