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
    returns an error text for a value out of range, or ``None``. ``variant`` marks an option
    that picks the method's variant (which state tensors exist, which implementation runs): a
    plan keeps it in each parameter's method spec, never among the shared hyperparameters, so
    a plan's bytes cannot change behind its back.
    """

    name: str
    kind: str
    default: OptionValue
    help: str
    nullable: bool = False
    choices: tuple[OptionValue, ...] = ()
    check: Callable[[Any], str | None] | None = None
    variant: bool = False

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
        """Check a typed value (type, ``choices``, ``check``); return it or raise SpecError."""
        problem = self.problem(value)
        if problem:
            raise SpecError(f"option {self.name}={format_value(value)}: {problem}")
        return value

    def problem(self, value: Any) -> str | None:
        """Why ``value`` is not valid for this option, or None when it is."""
        if value is None:
            return None if self.nullable else "cannot be none"
        expected = _type_problem(self.kind, value)
        if expected:
            return expected + (" or none" if self.nullable else "")
        if self.choices and value not in self.choices:
            return "must be one of " + ", ".join(format_value(choice) for choice in self.choices)
        return self.check(value) if self.check is not None else None


def _type_problem(kind: str, value: Any) -> str | None:
    """``"expected ..."`` when ``value`` is not of the option kind ``kind`` (a bool is no number)."""
    if kind == "bool":
        return None if isinstance(value, bool) else "expected true or false"
    if isinstance(value, bool):
        return f"expected {_EXPECTED[kind]}"
    if kind == "int":
        return None if isinstance(value, int) else "expected an integer"
    if kind == "float":
        number = isinstance(value, (int, float)) and math.isfinite(value)
        return None if number else "expected a finite number"
    return None if isinstance(value, str) else "expected a word"


_EXPECTED = {"bool": "true or false", "int": "an integer", "float": "a finite number", "str": "a word"}


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
