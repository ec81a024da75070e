"""What role a parameter plays (embedding, linear, conv, norm, bias, other).

With a live module the owning layer's class decides; with only a name and a shape (checkpoints,
safetensors) conventional names and the shape decide. Kinds feed the planner's priors and the
tables; they never change a parameter's state bytes.
"""

from __future__ import annotations

import re

_TOKEN_SPLIT = re.compile(r"[._]")
_NORM_TOKEN = re.compile(r"^(ln|bn|gn|norm|layernorm|rmsnorm|batchnorm|groupnorm)\d*$|norm$")
_EMBEDDING_TOKENS = frozenset({"wte", "wpe", "shared", "relative"})
# Entries of a state dict that are buffers, never trained.
_BUFFER_LEAVES = frozenset({"running_mean", "running_var", "num_batches_tracked", "masked_bias"})


def kind_from_module(module_classes: tuple[str, ...], param_name: str, shape: tuple[int, ...]) -> str:
    """Kind of the parameter ``param_name`` (e.g. ``"weight"``) held directly by a module.

    ``module_classes`` are the owning module's class name and its base classes' names, so
    subclasses of ``nn.Linear`` or of any ``*Norm`` class are recognised.
    """
    if any("Norm" in name for name in module_classes):
        return "norm"
    if param_name.endswith("bias") and len(shape) <= 1:
        return "bias"
    if any(name.endswith(("Embedding", "EmbeddingBag")) for name in module_classes):
        return "embedding"
    if any(re.fullmatch(r"Conv(Transpose)?[123]d", name) for name in module_classes):
        return "conv"
    if any(name in {"Linear", "Bilinear", "Conv1D"} for name in module_classes):
        # transformers' Conv1D (GPT-2) is a linear layer stored transposed.
        return "linear"
    return kind_from_name(param_name, shape)


def kind_from_name(name: str, shape: tuple[int, ...], norm_modules: frozenset[str] = frozenset()) -> str:
    """Kind of a parameter known only by its dotted name and shape.

    ``norm_modules`` are module prefixes known to be batch norms (they hold running statistics).
    """
    module, _, leaf = name.rpartition(".")
    tokens = [token.lower() for token in _TOKEN_SPLIT.split(module) if token]
    if len(shape) <= 1 and (module in norm_modules or any(_NORM_TOKEN.search(t) for t in tokens)):
        return "norm"
    if leaf.endswith("bias") and len(shape) <= 1:
        return "bias"
    if len(shape) == 2 and any("embed" in token or token in _EMBEDDING_TOKENS for token in tokens):
        return "embedding"
    if len(shape) >= 3:
        return "conv"
    if len(shape) == 2:
        return "linear"
    return "other"


def is_buffer_name(name: str) -> bool:
    """Whether a state-dict entry is a well-known buffer (batch-norm statistics, attention masks)."""
    return name.rpartition(".")[2] in _BUFFER_LEAVES


def batch_norm_modules(names: list[str]) -> frozenset[str]:
    """Module prefixes that hold batch-norm running statistics among state-dict ``names``."""
    return frozenset(name.rpartition(".")[0] for name in names if name.endswith(".running_mean"))
