"""Low-bit AdamW (torchao.optim.AdamW8bit / AdamW4bit): Adam's two moments quantized block-wise.

The layout is torchao's own (torchao/optim/adam.py ``_new_buffer`` and subclass_8bit.py /
subclass_4bit.py, as of torchao 0.18): a parameter with at least 4096 elements and a multiple of
the block size gets each moment as

- ``codes``: uint8, one per element for 8 bits (the parameter's shape), one per two elements
  for 4 bits (N / 2);
- ``scale``: fp32, one per block (blocks of 256 for 8 bits, 128 for 4 bits);
- ``qmap``: the fp32 quantization map, kept by each moment (256 entries for 8 bits, 16 for 4);

every other parameter keeps plain moments in its own dtype, as torch's Adam does. (torchao's
amsgrad is not offered: its quantized maximum does not run outside torch.compile, so its
allocation could not be checked.) Bytes for fp32 (N large):
8-bit 2N + 2 * 4N/256 + 2 * 1024 (about 2.03N), 4-bit N + 2 * 4N/128 + 2 * 64 (about 1.06N).
The state keys are the moment and the part (``exp_avg.codes``), as the measured tensors are
the parts of torchao's quantized tensor subclass.
"""

from __future__ import annotations

import logging
from typing import Any

from memplan.methods.base import (Layout, Method, Options, StateTensor, beta_option, eps_option, full_like,
                                  weight_decay_option)
from memplan.methods.shapes import Shape, numel
from memplan.methods.spec import Option

QUANTIZE_FROM = 4096
"""torchao quantizes a moment only for parameters of at least this many elements."""

QMAP_ENTRIES = {8: 256, 4: 16}
"""Entries of torchao's quantization maps (signed and unsigned alike), by bits per element."""


def quantized(count: int, block_size: int) -> bool:
    """Whether torchao keeps a moment of ``count`` elements quantized (else in full precision)."""
    return count >= QUANTIZE_FROM and count % block_size == 0


class LowBitAdamW(Method):
    """torchao's AdamW with 8-bit or 4-bit block-quantized moments."""

    implementation = "torchao"
    extra = "lowbit"
    family = "adamw_lowbit"

    def __init__(self, bits: int, block_size: int, optimizer: str) -> None:
        self.bits = bits
        self.name = f"adamw{bits}bit"
        self.summary = f"AdamW with both moments quantized to {bits} bits in blocks (torchao)"
        self.optimizer = optimizer
        self.options = (
            beta_option("beta1", 0.9, "first-moment decay", variant=True),
            beta_option("beta2", 0.999, "second-moment decay"),
            eps_option(1e-8),
            weight_decay_option(0.01),
            Option("block_size", "int", block_size, "elements per quantization block (one fp32 scale each)",
                   check=lambda value: None if value > 0 else "must be > 0", variant=True),
            Option("bf16_stochastic_round", "bool", False, "round bf16 parameters stochastically"),
        )

    def state_tensors(self, shape: Shape, param_dtype: str, options: Options, layout: Layout) -> tuple[StateTensor, ...]:
        keys = ("exp_avg", "exp_avg_sq")
        count, block = numel(shape), options["block_size"]
        if not quantized(count, block):
            return tuple(full_like(key, shape, param_dtype) for key in keys)
        codes = tuple(shape) if self.bits == 8 else (count // 2,)
        tensors: list[StateTensor] = []
        for key in keys:
            tensors += [StateTensor(f"{key}.codes", codes, "uint8"),
                        StateTensor(f"{key}.scale", (count // block,), "float32"),
                        StateTensor(f"{key}.qmap", (QMAP_ENTRIES[self.bits],), "float32")]
        return tuple(tensors)

    def momentum_kind(self, options: Options, layout: Layout) -> str:
        return "full"

    def prior_key(self, options: Options) -> str:
        return self.name  # 8 and 4 bits are measured apart

    def optimizer_class(self, options: Options) -> type:
        # importing torchao logs a warning for every optional kernel library its build lacks
        # (CUDA-only ones on a CPU build): noise to a user who only wants its optimizers
        logging.getLogger("torchao").setLevel(logging.ERROR)
        return super().optimizer_class(options)

    def step_structure(self, options: Options, device_kind: str = "cpu") -> str:
        return "fused"  # torchao compiles each parameter's whole update into one kernel

    def optimizer_kwargs(self, options: Options, params: list[Any]) -> dict[str, Any]:
        return {"betas": (options["beta1"], options["beta2"]), "eps": options["eps"],
                "weight_decay": options["weight_decay"], "block_size": options["block_size"], "bf16_stochastic_round": options["bf16_stochastic_round"]}


ADAMW8BIT = LowBitAdamW(8, 256, "torchao.optim:AdamW8bit")
ADAMW4BIT = LowBitAdamW(4, 128, "torchao.optim:AdamW4bit")
