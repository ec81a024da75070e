"""A ``model.py`` -> ModelProfile: import the file and build its model on the ``meta`` device.

On ``meta`` every tensor has a shape and a dtype but no storage, so listing a 7 B-parameter
model costs no memory and no initialisation time. The file is imported with the default
device set to ``meta``, which covers models built at import time as well as by a function.

How the model is found, in order:
1. ``--entry NAME``: a module-level ``nn.Module``, an ``nn.Module`` class, or a function returning
   one; ``--entry 'NAME(256, width=8)'`` calls it with literal arguments (read by ``ast``, never
   evaluated);
2. a ``build_model`` function, else a ``model`` attribute (module or zero-argument callable);
3. the ``nn.Module`` subclass defined in the file that no other one defined there uses: the top of
   the file's containment hierarchy (``Net`` beside the ``Block`` it is made of).
"""

from __future__ import annotations

import ast
import contextlib
import hashlib
import importlib.util
import inspect
import re
import sys
import traceback
import warnings
from pathlib import Path
from types import ModuleType
from typing import Any, Callable, Iterator

from memplan.errors import SourceError, UsageError
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
    if entry is not None:
        name, args, kwargs = parse_entry(entry)
        if not hasattr(module, name):
            raise SourceError(
                f"{path}: no attribute {name!r} (candidates: {', '.join(_candidates(module)) or 'none'})"
            )
        return _as_factory(getattr(module, name), path, name, args, kwargs), entry
    for name in DEFAULT_ENTRIES:
        if hasattr(module, name):
            return _as_factory(getattr(module, name), path, name), name
    defined = _module_classes(module)
    if not defined:
        raise SourceError(
            f"{path}: no model found: define build_model() or model, or an nn.Module subclass, "
            f"or name one with --entry"
        )
    outermost = _outermost(defined, path)
    if len(outermost) == 1:
        return _as_factory(getattr(module, outermost[0]), path, outermost[0]), outermost[0]
    raise SourceError(
        f"{path}: several nn.Module classes ({', '.join(outermost or defined)}); pick one with --entry NAME"
    )


def parse_entry(entry: str) -> tuple[str, tuple[Any, ...], dict[str, Any]]:
    """``--entry``'s value as (name, positional arguments, keyword arguments): ``Net`` or a call
    with literal arguments, ``Net(256, width=8)``. Arguments are read with ``ast.literal_eval``,
    never evaluated; anything else is a usage error."""
    form = "a name or a call with literal arguments, such as --entry 'Net(width=256)'"
    try:
        node = ast.parse(entry.strip(), mode="eval").body
    except (SyntaxError, ValueError):
        raise UsageError(f"--entry {entry!r} is not {form}") from None
    if isinstance(node, ast.Name):
        return node.id, (), {}
    if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Name)):
        raise UsageError(f"--entry {entry!r} is not {form}")
    if any(keyword.arg is None for keyword in node.keywords) or any(isinstance(arg, ast.Starred) for arg in node.args):
        raise UsageError(f"--entry {entry!r}: spell each argument out (no * or **), as in --entry 'Net(width=256)'")
    try:
        args = tuple(ast.literal_eval(arg) for arg in node.args)
        kwargs = {str(keyword.arg): ast.literal_eval(keyword.value) for keyword in node.keywords}
    except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
        raise UsageError(
            f"--entry {entry!r}: arguments must be Python literals (numbers, strings, True/False/None, "
            f"tuples, lists, dicts), as in --entry 'Net(width=256)'"
        ) from None
    return node.func.id, args, kwargs


def _as_factory(value: Any, path: Path, name: str, args: tuple[Any, ...] = (),
                kwargs: dict[str, Any] | None = None) -> Callable[[], Any]:
    import torch

    kwargs = kwargs or {}
    if isinstance(value, torch.nn.Module):
        if args or kwargs:
            raise UsageError(f"{path}: {name} is an nn.Module already built; --entry takes arguments only "
                             f"for a class or function")
        return lambda: value
    if not callable(value):
        raise SourceError(f"{path}: {name} is a {type(value).__name__}, not an nn.Module, class or function")
    _check_arguments(value, path, name, args, kwargs)
    return lambda: value(*args, **kwargs)


def _check_arguments(factory: Callable[..., Any], path: Path, name: str, args: tuple[Any, ...],
                     kwargs: dict[str, Any]) -> None:
    """A usage error when ``factory(*args, **kwargs)`` would not bind: it names the missing
    arguments and shows the ``--entry`` that passes them."""
    try:
        signature = inspect.signature(factory)
    except (TypeError, ValueError):  # a builtin or C extension: let the call itself tell
        return
    try:
        signature.bind(*args, **kwargs)
        return
    except TypeError:
        pass
    try:
        given = signature.bind_partial(*args, **kwargs).arguments
    except TypeError as error:  # an unknown keyword, too many positional arguments
        raise UsageError(f"{path}: {name}{signature}: {error}") from None
    missing = [
        parameter for parameter in signature.parameters.values()
        if parameter.default is inspect.Parameter.empty and parameter.name not in given
        and parameter.kind not in (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD)
    ]
    shown = [repr(arg) for arg in args] + [f"{key}={value!r}" for key, value in kwargs.items()]
    shown += ["..." if parameter.kind is inspect.Parameter.POSITIONAL_ONLY else f"{parameter.name}=..."
              for parameter in missing]
    plural = len(missing) > 1
    raise UsageError(
        f"{path}: {name} needs the argument{'s' * plural} {', '.join(parameter.name for parameter in missing)}: "
        f"pass {'them' if plural else 'it'} with --entry '{name}({', '.join(shown)})'"
    )


def _module_classes(module: ModuleType) -> list[str]:
    """The ``nn.Module`` subclasses defined in ``module`` itself (not imported into it)."""
    import torch

    return [
        name for name, value in vars(module).items()
        if inspect.isclass(value) and issubclass(value, torch.nn.Module) and value.__module__ == module.__name__
    ]


def _outermost(classes: list[str], path: Path) -> list[str]:
    """The ``classes`` no other one of them uses, read from the file's source: a class uses the
    names its body and bases mention, and those the module-level functions it calls mention (so
    ``Net`` uses the ``Block`` it is built of, and the ``Base`` it derives from)."""
    try:
        tree = ast.parse(path.read_text(encoding="utf-8"))
    except (OSError, SyntaxError, ValueError, UnicodeDecodeError):
        return classes
    mentions = {
        node.name: {name.id for name in ast.walk(node) if isinstance(name, ast.Name)} - {node.name}
        for node in tree.body if isinstance(node, (ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef))
    }

    def reachable(start: str) -> set[str]:
        seen: set[str] = set()
        todo = list(mentions.get(start, ()))
        while todo:
            name = todo.pop()
            if name not in seen and name in mentions:
                seen.add(name)
                todo.extend(mentions[name])
        return seen

    used = set().union(*(reachable(name) - {name} for name in classes))
    return [name for name in classes if name not in used]


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
        with _quiet_meta_loads():
            yield
    except SourceError:
        raise
    except (Exception, SystemExit) as error:  # the user's code can raise anything
        where = _user_line(error, path)
        message = " ".join(str(error).split()) or type(error).__name__
        detail = f"{type(error).__name__}: {message}"
        hint = _meta_device_hint(error)
        if hint:  # torch's own advice (to_empty(), .cpu()) does not apply: keep its first sentence
            detail = f"{hint} ({type(error).__name__}: {re.split(r'(?<=[.!])[ ]', message)[0]})"
        raise SourceError(f"{path}{where}: failed while {doing}: {detail}") from None


@contextlib.contextmanager
def _quiet_meta_loads() -> Iterator[None]:
    """On ``meta``, silence torch's warning for each parameter a ``load_state_dict`` in the file
    cannot fill (one per parameter, hundreds for a large model): memplan needs only the shapes."""
    import torch

    with warnings.catch_warnings():
        if torch.get_default_device().type == "meta":
            warnings.filterwarnings("ignore", message=r"for .*: copying from a non-meta parameter",
                                    category=UserWarning)
        yield


_NO_CUDA = ("Torch not compiled with CUDA enabled", "Found no NVIDIA driver", "No CUDA GPUs are available")


def _meta_device_hint(error: BaseException) -> str:
    """Why building on ``meta`` failed, and what to change, when the file moved the model to a
    device (``.to(device)``, ``.cuda()``) or read a tensor's values; else ``""``.

    Only while the default device is ``meta``: torch then says "Cannot copy out of meta tensor"
    (or, for ``.cuda()`` on a machine without CUDA, that CUDA is missing), which does not tell
    the user that memplan chose the device."""
    import torch

    if torch.get_default_device().type != "meta":
        return ""
    text = str(error)
    if "meta" not in text.lower() and not any(phrase in text for phrase in _NO_CUDA):
        return ""
    return ("the file moves the model to a device or reads tensor values, but memplan builds it on the "
            "meta device (shapes, no data): return the model unmoved from a function, "
            "def build_model(): return Net(), or a function or class named with --entry, "
            "and keep device moves and data under if __name__ == \"__main__\":")


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
