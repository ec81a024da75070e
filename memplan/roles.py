"""The role a parameter plays in training, for measured quality: embedding, head, vector, matrix.

Kinds (:mod:`memplan.loaders.kinds`) say what layer holds a parameter; roles group them the way
``memplan trial`` probes sensitivity, and the way measured priors then score each parameter:

- ``embedding``: token or position tables (kind ``embedding``);
- ``head``: the output layer's weights (a linear or conv weight in a top-level module named like an
  output layer: ``lm_head``, ``head``, ``classifier``, ``fc``, ...; tied heads are embeddings);
- ``vector``: norms, biases and every other parameter of at most one dimension;
- ``matrix``: every other weight (the hidden linear and conv layers).
"""

from __future__ import annotations

import re

ROLES = ("embedding", "head", "vector", "matrix")
"""Every role, in the order tables list them."""

HEAD_MODULE_NAMES = frozenset({"head", "lm_head", "classifier", "fc", "output", "out", "logits", "score",
                               "proj_out", "decoder", "predictions", "output_layer"})
"""Last module names that mark an output layer (outside any numbered block)."""

_NUMBERED = re.compile(r"^\d+$")


def role_of(name: str, shape: tuple[int, ...], kind: str) -> str:
    """The role of the parameter ``name`` of ``shape`` and ``kind`` (see the module docstring)."""
    if len(shape) <= 1:
        return "vector"
    if kind == "embedding":
        return "embedding"
    module = name.rpartition(".")[0].split(".")
    if module[-1].lower() in HEAD_MODULE_NAMES and not any(_NUMBERED.match(part) for part in module):
        return "head"
    return "matrix"
