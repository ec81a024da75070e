"""Element types by name, without importing torch: canonical names, byte sizes, aliases."""

from __future__ import annotations

from memplan.errors import ProfileError

ITEM_SIZES: dict[str, int] = {
    "float64": 8,
    "float32": 4,
    "float16": 2,
    "bfloat16": 2,
    "float8_e4m3fn": 1,
    "float8_e4m3fnuz": 1,
    "float8_e5m2": 1,
    "float8_e5m2fnuz": 1,
    "complex128": 16,
    "complex64": 8,
    "int64": 8,
    "int32": 4,
    "int16": 2,
    "int8": 1,
    "uint64": 8,
    "uint32": 4,
    "uint16": 2,
    "uint8": 1,
    "bool": 1,
}

FLOATING = frozenset(
    name for name in ITEM_SIZES if name.startswith("float") or name == "bfloat16"
)

# Spellings seen in the wild: torch reprs, safetensors header codes, common shorthands.
_ALIASES: dict[str, str] = {
    "double": "float64",
    "float": "float32",
    "half": "float16",
    "fp64": "float64",
    "fp32": "float32",
    "fp16": "float16",
    "bf16": "bfloat16",
    "f64": "float64",
    "f32": "float32",
    "f16": "float16",
    "f8_e4m3": "float8_e4m3fn",
    "f8_e5m2": "float8_e5m2",
    "c64": "complex64",
    "c128": "complex128",
    "i64": "int64",
    "i32": "int32",
    "i16": "int16",
    "i8": "int8",
    "u64": "uint64",
    "u32": "uint32",
    "u16": "uint16",
    "u8": "uint8",
    "long": "int64",
    "int": "int32",
    "short": "int16",
}


def canonical_dtype(dtype: object) -> str:
    """Return the canonical name (``"float32"``) of a dtype given as a torch dtype or a string.

    Accepts ``torch.float32``, ``"torch.float32"``, ``"float32"``, ``"fp32"`` and safetensors codes
    such as ``"F32"`` or ``"BF16"``.
    """
    text = str(dtype).strip().lower()
    text = text.removeprefix("torch.")
    name = _ALIASES.get(text, text)
    if name not in ITEM_SIZES:
        raise ProfileError(f"unknown dtype {dtype!r} (known: {', '.join(ITEM_SIZES)})")
    return name


def item_size(dtype: str) -> int:
    """Bytes per element of the canonical dtype name ``dtype``."""
    return ITEM_SIZES[canonical_dtype(dtype)]


def is_floating(dtype: str) -> bool:
    """Whether ``dtype`` is a real floating-point type (the kind a trainable parameter has)."""
    return canonical_dtype(dtype) in FLOATING
