"""What the mappings of a YAML document should hold, and one error that lists everything that does not fit.

A document reader describes each value it expects with the small descriptions below and calls
:func:`check` before reading anything::

    PREDICTED = Fields(required={"state_bytes": Integer(at_least=0), "quality": Number()},
                       optional={"device": Nullable(Text())})
    check(data, PREDICTED, PlanError, path="predicted")

Every problem is found before anything is raised, and each names the value by its path in the
document, what was expected and what was found:
``hyperparameters.smmf.eps: expected a number, got 'tiny'``, ``parameters[3].shape: missing,
expected a list of integers >= 0``, ``model.colour: unknown key (valid: fingerprint, name, source)``.
Keys a :class:`Fields` does not name are refused, because a misspelt key that is silently ignored
is a setting that silently does not apply.

Types are YAML's, not Python's: ``true`` is not the integer 1, and an integer is a number.
Checks that relate several values (a layout that must fit its shape, totals that must add up) stay
with the document's own reader; this module only knows single values.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

MAX_LISTED = 5
"""How many problems one error spells out; the rest are counted ("and 3 more")."""


class Expected:
    """What one value in a document may be; the subclasses below are the kinds there are."""

    @property
    def description(self) -> str:
        """The expectation in words, after "expected": ``an integer >= 0``, ``a mapping``."""
        raise NotImplementedError

    @property
    def plural(self) -> str:
        """The description for the items of a list: ``integers >= 0``."""
        raise NotImplementedError

    def fits_kind(self, value: Any) -> bool:
        """Whether ``value`` is of the right kind at all (a mapping for a mapping, ...), ignoring its contents."""
        return not self.problems(value, "")

    def problems(self, value: Any, path: str) -> list[str]:
        """Everything wrong with ``value``, found at ``path`` in the document; empty when it fits."""
        raise NotImplementedError


@dataclass(frozen=True)
class Anything(Expected):
    """Any value at all (a free-form note, or a value another function checks)."""

    @property
    def description(self) -> str:
        return "any value"

    @property
    def plural(self) -> str:
        return "values"

    def problems(self, value: Any, path: str) -> list[str]:
        return []


@dataclass(frozen=True)
class Integer(Expected):
    """An integer (not ``true``/``false``), at least ``at_least`` when that is given."""

    at_least: int | None = None

    @property
    def description(self) -> str:
        return "an integer" + _bound(self.at_least, None)

    @property
    def plural(self) -> str:
        return "integers" + _bound(self.at_least, None)

    def fits_kind(self, value: Any) -> bool:
        return _is_integer(value)

    def problems(self, value: Any, path: str) -> list[str]:
        if not _is_integer(value) or (self.at_least is not None and value < self.at_least):
            return [mismatch(path, self.description, value)]
        return []


@dataclass(frozen=True)
class Number(Expected):
    """A finite number, integer or not (not ``true``/``false``), within the bounds that are given.

    ``at_least`` admits the bound itself, ``above`` does not (``above=0`` is "positive").
    """

    at_least: float | None = None
    above: float | None = None

    @property
    def description(self) -> str:
        return "a number" + _bound(self.at_least, self.above)

    @property
    def plural(self) -> str:
        return "numbers" + _bound(self.at_least, self.above)

    def fits_kind(self, value: Any) -> bool:
        return _is_number(value)

    def problems(self, value: Any, path: str) -> list[str]:
        if not _is_number(value):
            return [mismatch(path, self.description, value)]
        if not math.isfinite(value):
            return [mismatch(path, "a finite " + self.description.removeprefix("a "), value)]
        if (self.at_least is not None and value < self.at_least) or (self.above is not None and value <= self.above):
            return [mismatch(path, self.description, value)]
        return []


@dataclass(frozen=True)
class Text(Expected):
    """A string (YAML that reads as a number or ``true`` is not one: quote it)."""

    @property
    def description(self) -> str:
        return "a string"

    @property
    def plural(self) -> str:
        return "strings"

    def problems(self, value: Any, path: str) -> list[str]:
        return [] if isinstance(value, str) else [mismatch(path, self.description, value)]


@dataclass(frozen=True)
class Flag(Expected):
    """``true`` or ``false``."""

    @property
    def description(self) -> str:
        return "true or false"

    @property
    def plural(self) -> str:
        return "true/false values"

    def problems(self, value: Any, path: str) -> list[str]:
        return [] if isinstance(value, bool) else [mismatch(path, self.description, value)]


@dataclass(frozen=True)
class OneOf(Expected):
    """One of a few given values (``1`` does not stand for ``true``, nor ``8.0`` for the integer 8)."""

    choices: tuple[Any, ...]

    def __init__(self, *choices: Any) -> None:
        object.__setattr__(self, "choices", choices)

    @property
    def description(self) -> str:
        return "one of " + ", ".join(_choice_text(choice) for choice in self.choices)

    @property
    def plural(self) -> str:
        return "values among " + ", ".join(_choice_text(choice) for choice in self.choices)

    def problems(self, value: Any, path: str) -> list[str]:
        if any(_same_value(value, choice) for choice in self.choices):
            return []
        return [mismatch(path, self.description, value)]


@dataclass(frozen=True)
class Nullable(Expected):
    """``null``, or what ``inner`` expects."""

    inner: Expected

    @property
    def description(self) -> str:
        return f"{self.inner.description} or null"

    @property
    def plural(self) -> str:
        return f"{self.inner.plural} or nulls"

    def fits_kind(self, value: Any) -> bool:
        return value is None or self.inner.fits_kind(value)

    def problems(self, value: Any, path: str) -> list[str]:
        if value is None:
            return []
        if self.inner.fits_kind(value):
            return self.inner.problems(value, path)
        return [mismatch(path, self.description, value)]


@dataclass(frozen=True)
class ListOf(Expected):
    """A list whose every item is what ``item`` expects; a bad item is named by its index (``shape[1]``)."""

    item: Expected

    @property
    def description(self) -> str:
        return f"a list of {self.item.plural}"

    @property
    def plural(self) -> str:
        return f"lists of {self.item.plural}"

    def fits_kind(self, value: Any) -> bool:
        return isinstance(value, (list, tuple))

    def problems(self, value: Any, path: str) -> list[str]:
        if not isinstance(value, (list, tuple)):
            return [mismatch(path, self.description, value)]
        return [problem for index, item in enumerate(value) for problem in self.item.problems(item, f"{path}[{index}]")]


@dataclass(frozen=True)
class Fields(Expected):
    """A mapping with these keys: every ``required`` one, any ``optional`` one, and no other."""

    required: Mapping[str, Expected] = field(default_factory=dict)
    optional: Mapping[str, Expected] = field(default_factory=dict)

    @property
    def description(self) -> str:
        return "a mapping"

    @property
    def plural(self) -> str:
        return "mappings"

    def fits_kind(self, value: Any) -> bool:
        return isinstance(value, Mapping)

    def problems(self, value: Any, path: str) -> list[str]:
        if not isinstance(value, Mapping):
            return [mismatch(path, self.description, value)]
        known = {**self.required, **self.optional}
        found = [f"{key_path(path, key)}: missing, expected {expected.description}"
                 for key, expected in self.required.items() if key not in value]
        for key, item in value.items():
            if key in known:
                found += known[key].problems(item, key_path(path, key))
            else:
                found.append(f"{key_path(path, key)}: unknown key (valid: {', '.join(sorted(known))})")
        return found


@dataclass(frozen=True)
class MapOf(Expected):
    """A mapping with any keys that ``keys`` expects (strings by default), each value what ``values`` expects."""

    values: Expected
    keys: Expected = field(default_factory=Text)

    @property
    def description(self) -> str:
        return "a mapping"

    @property
    def plural(self) -> str:
        return "mappings"

    def fits_kind(self, value: Any) -> bool:
        return isinstance(value, Mapping)

    def problems(self, value: Any, path: str) -> list[str]:
        if not isinstance(value, Mapping):
            return [mismatch(path, self.description, value)]
        found = []
        for key, item in value.items():
            if self.keys.problems(key, ""):
                found.append(f"{_label(path)}key {_shown(key)}: expected a key that is {self.keys.description}")
            else:
                found += self.values.problems(item, key_path(path, key))
        return found


@dataclass(frozen=True)
class Either(Expected):
    """What any one of ``options`` expects (e.g. a number, or a mapping with a ``quality``).

    When the value is of the kind of exactly one option (a mapping, and one option is a mapping),
    that option's own problems are reported, so a bad key deep inside is still named.
    """

    options: tuple[Expected, ...]

    def __init__(self, *options: Expected) -> None:
        object.__setattr__(self, "options", options)

    @property
    def description(self) -> str:
        return " or ".join(option.description for option in self.options)

    @property
    def plural(self) -> str:
        return " or ".join(option.plural for option in self.options)

    def fits_kind(self, value: Any) -> bool:
        return any(option.fits_kind(value) for option in self.options)

    def problems(self, value: Any, path: str) -> list[str]:
        kind_fits = [option for option in self.options if option.fits_kind(value)]
        if len(kind_fits) == 1:
            return kind_fits[0].problems(value, path)
        if any(not option.problems(value, path) for option in self.options):
            return []
        return [mismatch(path, self.description, value)]


def find_problems(value: Any, expected: Expected, path: str = "") -> list[str]:
    """Every problem with ``value`` against ``expected``, each naming its path under ``path``."""
    return expected.problems(value, path)


def describe_problems(problems: Sequence[str], limit: int = MAX_LISTED) -> str:
    """One line for a list of problems: the problem itself, or ``3 problems: a; b; c``, or ``...; and 4 more``."""
    if len(problems) == 1:
        return problems[0]
    shown = "; ".join(problems[:limit])
    more = f"; and {len(problems) - limit} more" if len(problems) > limit else ""
    return f"{len(problems)} problems: {shown}{more}"


def raise_problems(problems: Sequence[str], error: type[Exception], where: str | None = None) -> None:
    """Raise one ``error`` listing ``problems`` (after ``where: `` when given); do nothing when there are none."""
    if problems:
        message = describe_problems(problems)
        raise error(f"{where}: {message}" if where else message)


def check(value: Any, expected: Expected, error: type[Exception], path: str = "", where: str | None = None) -> None:
    """Raise one ``error`` listing every problem of ``value`` against ``expected``, or return.

    ``path`` is where ``value`` sits in its document (``"predicted"``), so problems read
    ``predicted.quality: ...``; ``where`` names the document (``"device profile h100"``).
    """
    raise_problems(find_problems(value, expected, path), error, where)


def mismatch(path: str, expected: str, value: Any) -> str:
    """The problem text ``path: expected <expected>, got <value>``."""
    return f"{_label(path)}expected {expected}, got {_shown(value)}"


def key_path(path: str, key: Any) -> str:
    """The path of ``key`` inside the mapping at ``path``: ``model.fingerprint``."""
    return f"{path}.{key}" if path else str(key)


def _label(path: str) -> str:
    """The path and its colon, or nothing for the document itself."""
    return f"{path}: " if path else ""


def _shown(value: Any, width: int = 40) -> str:
    """A found value as the user wrote it in YAML (``null``, ``true``, ``'tiny'``), cut to ``width``."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    text = repr(value)
    return text if len(text) <= width else text[: width - 3] + "..."


def _choice_text(choice: Any) -> str:
    """An allowed value as a reader would type it (``cuda``, ``8``, ``null``)."""
    return choice if isinstance(choice, str) else _shown(choice)


def _bound(at_least: float | None, above: float | None) -> str:
    """`` >= 0`` or `` > 0`` (or nothing) after a description."""
    if above is not None:
        return f" > {above:g}"
    if at_least is not None:
        return f" >= {at_least:g}"
    return ""


def _same_value(value: Any, choice: Any) -> bool:
    """Whether ``value`` is the allowed ``choice``: ``true`` is not 1, and 8.0 is not the integer 8 (8 is 8.0)."""
    if isinstance(value, bool) or isinstance(choice, bool):
        return value is choice
    if _is_number(choice):
        return _is_number(value) and value == choice and (isinstance(choice, float) or isinstance(value, int))
    return type(value) is type(choice) and value == choice


def _is_integer(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)
