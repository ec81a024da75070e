"""Prepared multi-tensor calls (SMMFCall, SM3Call, ETCall): run step after step with new gradients,
they step as a call built afresh each time does, and they refuse gradients the kernel cannot read."""

from __future__ import annotations

import pytest
import torch

from memplan.kernels.extreme_cpu import ETCall, ETScalars, ETTensor, et_many
from memplan.kernels.sm3_cpu import SM3Call, SM3Scalars, SM3Tensor, sm3_many
from memplan.kernels.smmf_cpu import SMMFCall, SMMFScalars, SMMFTensor, smmf_many

SHAPES = [(6, 5), (17,), (4, 3, 3)]


def _smmf(seed: int) -> list[SMMFTensor]:
    generator = torch.Generator().manual_seed(seed)
    scalars = SMMFScalars(step_size=-0.01, eps=1e-8, decay=1.0, coupled_decay=0.0, negate=False)
    tensors = []
    for shape in SHAPES:
        count = torch.Size(shape).numel()
        rows = 3 if count % 3 == 0 else 1
        cols = count // rows
        tensors.append(SMMFTensor(
            weights=torch.randn(shape, generator=generator), grads=torch.randn(shape, generator=generator),
            signs=torch.randint(0, 256, ((count + 7) // 8,), generator=generator, dtype=torch.uint8), cols=cols,
            row_v=torch.rand(rows, generator=generator) + 0.1, col_v=torch.rand(cols, generator=generator) + 0.1,
            row_m=torch.rand(rows, generator=generator) + 0.1, col_m=torch.rand(cols, generator=generator) + 0.1,
            scalars=scalars, prior_v=0.9, prior_m=0.5, keep_v=0.1, keep_m=0.5))
    return tensors


def _sm3(seed: int) -> list[SM3Tensor]:
    generator = torch.Generator().manual_seed(seed)
    scalars = SM3Scalars(lr=0.1, eps=1e-30, momentum=0.0, decay=1.0, coupled_decay=0.0, negate=False)
    return [SM3Tensor(weights=torch.randn(shape, generator=generator), grads=torch.randn(shape, generator=generator),
                      view=shape, accumulators=tuple(torch.rand(dim, generator=generator) for dim in shape),
                      buffer=None, scalars=scalars) for shape in SHAPES]


def _et(seed: int) -> list[ETTensor]:
    generator = torch.Generator().manual_seed(seed)
    scalars = ETScalars(lr=0.1, momentum=0.0, decay=1.0, coupled_decay=0.0, negate=False)
    return [ETTensor(weights=torch.randn(shape, generator=generator), grads=torch.randn(shape, generator=generator),
                     index=shape, accumulators=tuple(torch.rand(dim, generator=generator) for dim in shape),
                     buffer=None, scalars=scalars, beta2=None, eps=1e-8) for shape in SHAPES]


def _accumulators(tensor) -> list[torch.Tensor]:
    if isinstance(tensor, SMMFTensor):
        return [tensor.row_v, tensor.col_v, tensor.row_m, tensor.col_m, tensor.signs]
    return list(tensor.accumulators)


CASES = {
    "smmf": (_smmf, lambda tensors: SMMFCall(tensors),
             lambda call, grads, tensors: call.run(grads, [(tensors[0].scalars, 0.9, 0.5, 0.1, 0.5)]), smmf_many),
    "sm3": (_sm3, lambda tensors: SM3Call(tensors), lambda call, grads, tensors: call.run(grads, tensors[0].scalars),
            sm3_many),
    "et": (_et, lambda tensors: ETCall(tensors),
           lambda call, grads, tensors: call.run(grads, (tensors[0].scalars, None, 1e-8)), et_many),
}


@pytest.mark.parametrize("name", CASES)
def test_a_prepared_call_run_each_step_steps_as_a_fresh_call_each_step(name):
    make, prepare, run, many = CASES[name]
    prepared_tensors, fresh_tensors = make(0), make(0)
    call = prepare(prepared_tensors)
    for step in range(3):
        generator = torch.Generator().manual_seed(10 + step)
        grads = [torch.randn(tensor.weights.shape, generator=generator) for tensor in prepared_tensors]
        run(call, grads, prepared_tensors)
        many([type(tensor)(**{**{name: getattr(tensor, name) for name in tensor.__slots__}, "grads": grad})
              for tensor, grad in zip(fresh_tensors, grads)])
    for prepared, fresh in zip(prepared_tensors, fresh_tensors):
        assert torch.equal(prepared.weights, fresh.weights)
        for a, b in zip(_accumulators(prepared), _accumulators(fresh)):
            assert torch.equal(a, b)


@pytest.mark.parametrize("name", CASES)
@pytest.mark.parametrize("bad", ["short", "transposed", "float64", "count"])
def test_a_prepared_call_refuses_gradients_it_cannot_read(name, bad):
    make, prepare, run, _ = CASES[name]
    tensors = make(1)
    call = prepare(tensors)
    grads = [torch.randn(tensor.weights.shape) for tensor in tensors]
    if bad == "short":
        grads[1] = grads[1][:-1]
    elif bad == "transposed":
        grads[0] = grads[0].t()
    elif bad == "float64":
        grads[2] = grads[2].double()
    else:
        grads = grads[:-1]
    before = [tensor.weights.clone() for tensor in tensors]
    with pytest.raises(ValueError):
        run(call, grads, tensors)
    assert all(torch.equal(tensor.weights, weights) for tensor, weights in zip(tensors, before))
