"""benchmarks/optim_speed.py: every one-pass step it times gets its bytes per element."""

from __future__ import annotations

import sys

import pytest

from tests.conftest import REPO

sys.path.insert(0, str(REPO / "benchmarks"))

import optim_speed  # noqa: E402

COMPILED = [spec for spec in optim_speed.METHODS if "impl=compiled" in spec]


@pytest.mark.parametrize("spec", COMPILED)
def test_every_compiled_step_has_its_traffic_and_reads(spec: str) -> None:
    moved = optim_speed.fused_bytes(spec, "compiled")
    read = optim_speed.fused_bytes(spec, "compiled", optim_speed.READ_BYTES_PER_ELEMENT)
    assert moved is not None and read is not None
    assert 0 < read < moved


def test_the_bytes_follow_the_spec_as_written() -> None:
    assert optim_speed.fused_bytes("smmf:beta1=none,impl=compiled", "compiled") == 12
    assert optim_speed.fused_bytes("sm3:momentum=0,impl=triton", "triton", optim_speed.READ_BYTES_PER_ELEMENT) == 8
    assert optim_speed.fused_bytes("adamw:impl=fused", "fused") == 28
    assert optim_speed.fused_bytes("smmf", "eager") is None


def test_a_set_of_shapes_written_out() -> None:
    assert optim_speed.parameter_shapes("64x64") == [(64, 64)]
    assert optim_speed.parameter_shapes("768x768,768,2x3x4") == [(768, 768), (768,), (2, 3, 4)]
    assert optim_speed.parameter_shapes("gpt2") == optim_speed.SHAPES
