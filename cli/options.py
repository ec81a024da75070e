"""Options every command shares, declared once so each command spells and explains them the same.

A command declares ``source: OptionalSourceArg = None`` or ``as_json: JsonOpt = False``; the
``--methods`` option names each command's own default list, so it is made by
:func:`methods_option`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Callable, Optional, Sequence, TypeVar

import typer

from memplan.costmodel import DEFAULT_DEVICE_PROFILE_PATH
from memplan.errors import MemplanError, UsageError
from memplan.methods import parse_spec, split_spec_list
from memplan.sharding import Sharding

T = TypeVar("T")

DEFAULT_PROFILE_PATH = Path(".memplan") / "profile.yaml"
"""Where ``memplan analyze`` saves the profile, and where plan and bench look when no SOURCE is given."""

DEFAULT_PLAN_PATH = Path("plan.yaml")
"""Where ``memplan plan`` writes and ``memplan show`` reads (``memplan bench`` measures a plan only with ``--plan``)."""

_SOURCE_HELP = ("model.py, checkpoint, .safetensors, index.json, profile YAML, Hugging Face folder, "
                "or a bundled profile name.")

SourceArg = Annotated[str, typer.Argument(help=_SOURCE_HELP)]
"""The model source, required."""

OptionalSourceArg = Annotated[Optional[str], typer.Argument(
    help=f"{_SOURCE_HELP} Default: the profile the last analyze saved ({DEFAULT_PROFILE_PATH}).")]
"""The model source, defaulting to the last analyzed profile (see :func:`default_source`)."""

DeviceOpt = Annotated[str, typer.Option("--device", help="cpu, cuda or cuda:N: where to measure, and whose "
                                                         "device profile times the step.")]

DeviceProfileOpt = Annotated[Optional[str], typer.Option(
    "--device-profile",
    help=f"Device profile for step times: a file, or a bundled name such as h100 (default: "
         f"{DEFAULT_DEVICE_PROFILE_PATH} when it was measured on this device, else the bundled one for --device).")]

JsonOpt = Annotated[bool, typer.Option("--json", help="Print one JSON document on stdout.")]

EntryOpt = Annotated[Optional[str], typer.Option(
    "--entry", help="model.py: the module, class or function to build; with literal arguments if it needs them, "
                    "e.g. 'Net(width=256)'.")]

FreezeOpt = Annotated[Optional[str], typer.Option("--freeze", help="Regex: matching parameters are frozen (no state).")]

StripPrefixOpt = Annotated[Optional[str], typer.Option(
    "--strip-prefix", help="Checkpoints: remove this name prefix (e.g. 'module.').")]


WorldSizeOpt = Annotated[Optional[int], typer.Option(
    "--world-size", help="Ranks of a data-parallel job: bytes (and --budget) become per rank.")]

ShardingOpt = Annotated[Optional[str], typer.Option(
    "--sharding", help="With --world-size: fsdp2 (default), hsdp (--world-size = shards per replica group), "
                       "ddp or zero1.")]


def sharding(world_size: int | None, kind: str | None) -> Sharding | None:
    """The :class:`~memplan.sharding.Sharding` the options name (None for one device); a usage
    error for a bad world size or sharding, or --sharding without --world-size."""
    if world_size is None:
        if kind is not None:
            raise UsageError("--sharding needs --world-size")
        return None
    try:
        return Sharding(kind or "fsdp2", world_size)
    except MemplanError as error:
        raise UsageError(f"--world-size/--sharding: {error}") from error


def methods_option(defaults: Sequence[str], purpose: str) -> Any:
    """The ``--methods``/``-m`` option type for a command that ``purpose``s methods, its help
    naming the command's ``defaults``."""
    return Annotated[Optional[list[str]], typer.Option(
        "--methods", "-m", help=f"Method specs to {purpose}, comma-separated (default: {','.join(defaults)}).")]


def default_source(source: str | None, command: str) -> str:
    """``source``, or the profile the last ``memplan analyze`` saved; a usage error (exit 2) that
    says what to do when there is neither."""
    if source is not None:
        return source
    if DEFAULT_PROFILE_PATH.is_file():
        return str(DEFAULT_PROFILE_PATH)
    raise UsageError(f"no SOURCE given and no {DEFAULT_PROFILE_PATH} here: name a source "
                     f"(e.g. memplan {command} gpt2) or run `memplan analyze SOURCE` first")


def parse_option(option: str, parse: Callable[[str], T], value: str) -> T:
    """``parse(value)`` for the command-line option ``option``; a value the parser refuses (a
    malformed size, an unknown method, ...) is a usage error (exit 2) that names the option."""
    try:
        return parse(value)
    except UsageError:
        raise
    except MemplanError as error:
        raise UsageError(f"{option}: {error}") from error


def method_specs(methods: Sequence[str] | None, defaults: Sequence[str]) -> list[str]:
    """The ``--methods`` list (or ``defaults``), each spec checked: an unknown method or option is
    a usage error (exit 2). The specs come back as given."""
    specs = split_spec_list(methods) if methods else list(defaults)
    for spec in specs:
        parse_option("--methods", parse_spec, spec)
    return specs
