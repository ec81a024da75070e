"""The per-step scalars every kernel applies to the gradient and the weight before its method's
update: maximize's sign, coupled weight decay (added to the gradient) and decoupled weight decay
(a factor on the weight). Each method's scalars extend these with its own."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, kw_only=True)
class DecayScalars:
    """G <- sign G + coupled_decay W; W <- decay W + (the method's step)."""

    decay: float = 1.0
    """Decoupled weight decay's factor 1 - lr wd (1.0 without)."""
    coupled_decay: float = 0.0
    """Coupled weight decay: G <- G + wd W."""
    negate: bool = False
    """maximize: G <- -G (before coupled decay)."""

    @property
    def grad_sign(self) -> float:
        """-1.0 when maximizing, else 1.0: what the kernels multiply the gradient by."""
        return -1.0 if self.negate else 1.0


__all__ = ["DecayScalars"]
