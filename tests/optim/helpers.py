"""Running an optimizer on one parameter with a fixed gradient sequence."""

from __future__ import annotations

import torch


def gradient_sequence(shape, steps, seed=0, dtype=torch.float32, scale=1.0):
    generator = torch.Generator().manual_seed(seed)
    return [(torch.randn(shape, generator=generator) * scale).to(dtype) for _ in range(steps)]


def run(optimizer_factory, param0, grads):
    """Apply ``grads`` one per step; return the parameter after every step (as float64)."""
    param = torch.nn.Parameter(param0.clone())
    optimizer = optimizer_factory([param])
    history = []
    for grad in grads:
        param.grad = grad.clone()
        optimizer.step()
        history.append(param.detach().double().clone())
    return history, optimizer, param


def assert_close_histories(actual, expected, rtol=1e-4, atol=1e-6):
    assert len(actual) == len(expected)
    for step, (a, e) in enumerate(zip(actual, expected), start=1):
        torch.testing.assert_close(a, e, rtol=rtol, atol=atol, msg=lambda m: f"step {step}: {m}")


def assert_state_matches_byte_model(optimizer, params, spec):
    """Every parameter's state tensors are exactly the byte model's: same keys, shapes, dtypes."""
    from memplan.methods import param_state

    for param in params:
        shape = tuple(param.shape)
        predicted = {t.key: (t.shape, t.dtype) for t in param_state(spec, shape).tensors}
        actual = {key: (tuple(value.shape), str(value.dtype).removeprefix("torch."))
                  for key, value in optimizer.state[param].items() if isinstance(value, torch.Tensor)}
        assert actual == predicted, (spec, shape)


def stepped(spec, shapes):
    """One step of ``spec``'s optimizer over fresh parameters of ``shapes``: (optimizer, params)."""
    from memplan.optim import build_optimizer

    params = [torch.nn.Parameter(torch.randn(shape)) for shape in shapes]
    optimizer = build_optimizer(spec, params)
    for param in params:
        param.grad = torch.randn_like(param)
    optimizer.step()
    return optimizer, params
