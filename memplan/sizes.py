"""Byte sizes at the edges: parse ``"64MiB"`` / ``"1.5GB"`` / ``"1e6"`` into exact ints, and print ints for humans.

Inside memplan every size is an ``int`` of bytes. Binary (KiB = 2**10) and decimal (KB = 10**3)
units are distinct, and a bare ``K``/``M``/``G`` is refused as ambiguous rather than guessed.
"""

from __future__ import annotations

import re
from fractions import Fraction

from memplan.errors import SizeError

_DECIMAL_UNITS = {"b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12, "pb": 10**15}
_BINARY_UNITS = {"kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40, "pib": 2**50}
UNITS: dict[str, int] = {**_DECIMAL_UNITS, **_BINARY_UNITS}

_SIZE_PATTERN = re.compile(
    r"^(?P<number>(?:\d+\.?\d*|\.\d+)(?:e[+-]?\d+)?)\s*(?P<unit>[a-z]*)$", re.IGNORECASE
)
_MAX_EXPONENT = 30  # bounds the exact arithmetic; 1e30 bytes is far beyond any device
_HUMAN_UNITS = (("PiB", 2**50), ("TiB", 2**40), ("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10))


def parse_size(text: str | int) -> int:
    """Return the exact number of bytes that ``text`` names.

    Accepts a plain integer (``67108864``), scientific notation (``1e6``) and a number with a
    unit (``64MiB``, ``64MB``, ``1.5GiB``, ``512 kib``), case-insensitively. The result must be a
    whole, non-negative number of bytes; anything else raises :class:`SizeError`.
    """
    if isinstance(text, bool):
        raise SizeError(f"not a byte size: {text!r}")
    if isinstance(text, int):
        if text < 0:
            raise SizeError(f"a byte size cannot be negative: {text}")
        return text
    stripped = str(text).strip()
    if not stripped:
        raise SizeError("empty byte size: write e.g. 64MiB, 64MB or 67108864")
    if stripped.startswith("-"):
        raise SizeError(f"a byte size cannot be negative: {text!r}")
    match = _SIZE_PATTERN.match(stripped.lstrip("+"))
    if match is None:
        raise SizeError(f"not a byte size: {text!r} (write e.g. 64MiB, 1.5GB or 67108864)")
    unit_text = match["unit"].lower()
    if unit_text and unit_text not in UNITS:
        if unit_text in {"k", "m", "g", "t", "p"}:
            upper = unit_text.upper()
            power = "kmgtp".index(unit_text) + 1
            raise SizeError(
                f"ambiguous unit in {text!r}: write {upper}iB (binary, 1 {upper}iB = 2^{10 * power} bytes) "
                f"or {upper}B (decimal, 1 {upper}B = 10^{3 * power} bytes)"
            )
        valid = ", ".join(["B", "KB", "MB", "GB", "TB", "PB", "KiB", "MiB", "GiB", "TiB", "PiB"])
        raise SizeError(f"unknown unit {match['unit']!r} in {text!r} (valid: {valid})")
    exponent = match["number"].lower().partition("e")[2]
    if exponent and abs(int(exponent)) > _MAX_EXPONENT:
        raise SizeError(f"byte size out of range: {text!r}")
    exact = Fraction(match["number"]) * UNITS.get(unit_text, 1)
    if exact.denominator != 1:
        raise SizeError(f"{text!r} is not a whole number of bytes ({float(exact)})")
    return int(exact)


def format_size(num_bytes: int) -> str:
    """Format a byte count for humans with binary units: ``512 B``, ``64 MiB``, ``195.31 MiB``.

    A number without a decimal point is exact; ``1.00 MiB`` means "1 MiB after rounding".
    """
    if num_bytes < 0:
        return "-" + format_size(-num_bytes)
    for unit_name, unit in _HUMAN_UNITS:
        if num_bytes >= unit:
            if num_bytes % unit == 0:
                return f"{num_bytes // unit} {unit_name}"
            text = f"{num_bytes / unit:.2f}"
            trimmed = text.rstrip("0").rstrip(".")
            # A whole-looking number must mean an exact size; otherwise keep the decimals.
            return f"{trimmed if '.' in trimmed else text} {unit_name}"
    return f"{num_bytes} B"


def format_count(count: int) -> str:
    """Format a large count compactly: ``124.4M``, ``6.74B``, ``512``."""
    for suffix, scale in (("T", 10**12), ("B", 10**9), ("M", 10**6), ("K", 10**3)):
        if count >= scale:
            return f"{count / scale:.3g}{suffix}"
    return str(count)
