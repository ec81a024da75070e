"""Method spec strings: ``name`` or ``name:key=value,key=value`` (``smmf:sign_bits=8``).

A spec names a method and the options that differ from its defaults. Parsing checks every
option against the method's declared options and types; printing writes the options in the
method's declared order with canonical values, so ``str(parse(text)) == text`` for every
canonical ``text`` and ``parse(str(spec)) == spec`` for every spec.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable

from memplan.errors import SpecError

OptionValue = float | int | bool | str | None


@dataclass(frozen=True)
class Option:
    """One option a method accepts: its type, default, allowed values and a line of help.

    ``kind`` is ``"float"``, ``"int"``, ``"bool"`` or ``"str"``; ``nullable`` admits ``none``
    (e.g. ``beta1=none`` drops a first moment); ``choices`` restricts the values; ``check``
    returns an error text for a value out of range, or ``None``.
    """

    name: str
    kind: str
    default: OptionValue
    help: str
    nullable: bool = False
    choices: tuple[OptionValue, ...] = ()
    check: Callable[[Any], str | None] | None = None

    def parse(self, text: str) -> OptionValue:
        """Convert the text after ``=`` into this option's type, or raise SpecError."""
        lowered = text.strip().lower()
        if self.nullable and lowered in {"none", "null"}:
            return None
        try:
            value: OptionValue
            if self.kind == "bool":
                if lowered not in {"true", "false", "1", "0", "yes", "no"}:
                    raise ValueError
                value = lowered in {"true", "1", "yes"}
            elif self.kind == "int":
                value = int(lowered)
            elif self.kind == "float":
                value = float(lowered)
                if not math.isfinite(value):
                    raise ValueError
            else:
                value = text.strip()
        except ValueError:
            expected = {"bool": "true or false", "int": "an integer", "float": "a finite number",
                        "str": "a word"}[self.kind]
            extra = " or none" if self.nullable else ""
            raise SpecError(f"option {self.name}={text!r}: expected {expected}{extra}") from None
        return self.validate(value)

    def validate(self, value: OptionValue) -> OptionValue:
        """Check a typed value against ``choices`` and ``check``; return it."""
        if value is None:
            if not self.nullable:
                raise SpecError(f"option {self.name} cannot be none")
            return None
        if self.choices and value not in self.choices:
            allowed = ", ".join(format_value(choice) for choice in self.choices)
            raise SpecError(f"option {self.name}={format_value(value)}: must be one of {allowed}")
        if self.check is not None:
            problem = self.check(value)
            if problem:
                raise SpecError(f"option {self.name}={format_value(value)}: {problem}")
        return value


def format_value(value: OptionValue) -> str:
    """Canonical text of an option value: ``none``, ``true``, ``8``, ``0.9``, ``1e-8``."""
    if value is None:
        return "none"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        if value.is_integer() and abs(value) < 1e16:
            return str(int(value))
        text = repr(value)
        if "e" in text:
            mantissa, exponent = text.split("e")
            text = f"{mantissa}e{int(exponent)}"
        return text
    return str(value)


@dataclass(frozen=True)
class MethodSpec:
    """A method name plus the options given explicitly, in the method's declared order."""

    name: str
    options: tuple[tuple[str, OptionValue], ...] = ()

    def __str__(self) -> str:
        if not self.options:
            return self.name
        return self.name + ":" + ",".join(f"{key}={format_value(value)}" for key, value in self.options)

    def given(self) -> dict[str, OptionValue]:
        """The options written in the spec (defaults not filled in)."""
        return dict(self.options)


def split_spec(text: str) -> tuple[str, list[tuple[str, str]]]:
    """Split ``"name:key=value,..."`` into the name and raw ``(key, value)`` pairs."""
    if not isinstance(text, str) or not text.strip():
        raise SpecError("empty method spec")
    name, _, rest = text.strip().partition(":")
    name = name.strip().lower()
    pairs: list[tuple[str, str]] = []
    if rest.strip():
        for item in rest.split(","):
            key, sep, value = item.partition("=")
            if not sep or not key.strip() or not value.strip():
                raise SpecError(f"method spec {text!r}: option {item.strip()!r} is not key=value")
            pairs.append((key.strip().lower(), value.strip()))
    elif ":" in text:
        raise SpecError(f"method spec {text!r}: nothing after ':'")
    return name, pairs
