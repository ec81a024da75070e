"""The contract every torch optimizer keeps, checked over the whole optimizer table (optimizer_table.py).

Rows of memplan's own optimizers run every test; ``from_plan`` rows run those that do not depend on
one optimizer's hyperparameters (param groups, memplan's argument checks, the chunk bound).
"""

import io

import pytest
import torch

from memplan.devices import CpuDevice
from memplan.measure import state_storage_bytes

from .optimizer_table import CORE_CASES, CORE_IDS, IDS, OPTIMIZER_CASES


def small_problem(seed=0):
    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.Tanh(), torch.nn.Linear(32, 4))
    inputs = torch.randn(128, 16)
    targets = torch.sin(inputs[:, :4] * 2)
    return model, inputs, targets


@pytest.mark.parametrize("case", OPTIMIZER_CASES, ids=IDS)
def test_trains_a_small_model_to_a_clearly_lower_loss(case):
    model, inputs, targets = small_problem()
    optimizer = case.build(model.parameters(), lr=case.lr)

    def closure():
        optimizer.zero_grad()
        loss = torch.nn.functional.mse_loss(model(inputs), targets)
        loss.backward()
        return loss

    first = closure().item()
    for _ in range(150):
        last = optimizer.step(closure)
    assert last.item() < 0.3 * first


@pytest.mark.parametrize("case", OPTIMIZER_CASES, ids=IDS)
def test_measured_state_bytes_equal_the_byte_model(case):
    model, inputs, targets = small_problem()
    params = list(model.parameters())
    optimizer = case.build(params, lr=case.lr)
    torch.nn.functional.mse_loss(model(inputs), targets).backward()
    optimizer.step()
    predicted = sum(state.state_bytes for state in case.predicted_states(optimizer, params))
    assert state_storage_bytes(optimizer) == predicted


@pytest.mark.parametrize("case", OPTIMIZER_CASES, ids=IDS)
def test_state_dict_round_trip_resumes_bit_identically(case):

    def train(model, optimizer, steps, seed):
        generator = torch.Generator().manual_seed(seed)
        for _ in range(steps):
            for param in model.parameters():
                param.grad = torch.randn(param.shape, generator=generator)
            optimizer.step()

    model, _, _ = small_problem()
    optimizer = case.build(model.parameters(), lr=case.lr)
    train(model, optimizer, 3, seed=1)
    buffer = io.BytesIO()
    torch.save({"model": model.state_dict(), "optimizer": optimizer.state_dict()}, buffer)
    train(model, optimizer, 3, seed=2)

    buffer.seek(0)
    saved = torch.load(buffer, weights_only=True)
    resumed_model, _, _ = small_problem(seed=5)
    resumed_model.load_state_dict(saved["model"])
    resumed = case.build(resumed_model.parameters(), lr=case.lr)
    resumed.load_state_dict(saved["optimizer"])
    train(resumed_model, resumed, 3, seed=2)
    for a, b in zip(model.parameters(), resumed_model.parameters()):
        assert torch.equal(a, b)
    for state_a, state_b in zip(optimizer.state.values(), resumed.state.values()):
        for key, value in state_a.items():
            if isinstance(value, torch.Tensor):
                assert value.dtype == state_b[key].dtype and torch.equal(value, state_b[key])


@pytest.mark.parametrize("case", CORE_CASES, ids=CORE_IDS)
def test_bf16_parameters_train_with_fp32_state(case):
    param = torch.nn.Parameter(torch.randn(24, 16).to(torch.bfloat16))
    optimizer = case.build([param], lr=case.lr)
    target = torch.zeros(24, 16)
    for _ in range(30):
        param.grad = (2 * (param.float() - target)).to(torch.bfloat16)
        optimizer.step()
    assert param.dtype == torch.bfloat16
    assert param.float().pow(2).mean() < torch.randn(24, 16).pow(2).mean()
    floating = [v for v in optimizer.state[param].values() if isinstance(v, torch.Tensor) and v.is_floating_point()]
    assert floating and all(v.dtype == torch.float32 for v in floating)


@pytest.mark.parametrize("case", CORE_CASES, ids=CORE_IDS)
def test_the_torch_optimizer_contract(case):
    lr = case.lr
    used, unused, empty, scalar = (torch.nn.Parameter(torch.randn(5, 3)), torch.nn.Parameter(torch.randn(4)),
                                   torch.nn.Parameter(torch.randn(0, 3)), torch.nn.Parameter(torch.randn(())))
    optimizer = case.build([{"params": [used, empty, scalar]}, {"params": [unused], "lr": lr / 10}], lr=lr)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=1, gamma=0.5)
    for param in (used, empty, scalar):
        param.grad = torch.randn_like(param)
    before = scalar.detach().clone()
    assert optimizer.step(lambda: torch.tensor(3.0)).item() == 3.0
    scheduler.step()
    assert optimizer.param_groups[0]["lr"] == lr / 2 and optimizer.param_groups[1]["lr"] == lr / 20
    assert unused not in optimizer.state and not torch.equal(scalar, before)
    assert optimizer.state[empty]["step"] == 1


@pytest.mark.parametrize("case", OPTIMIZER_CASES, ids=IDS)
def test_maximize_equals_minimizing_the_negated_gradient(case):
    a, b = torch.nn.Parameter(torch.ones(6, 4)), torch.nn.Parameter(torch.ones(6, 4))
    maximizing, minimizing = case.build([a], lr=case.lr, maximize=True), case.build([b], lr=case.lr)
    for seed in range(3):
        grad = torch.randn(6, 4, generator=torch.Generator().manual_seed(seed))
        a.grad, b.grad = grad.clone(), -grad
        maximizing.step()
        minimizing.step()
    assert torch.equal(a, b)


@pytest.mark.parametrize("case", CORE_CASES, ids=CORE_IDS)
def test_bad_input_is_refused_clearly(case):
    lr = case.lr
    param = torch.nn.Parameter(torch.randn(3))
    for bad, message in [({"lr": -1.0}, "Invalid learning rate"), ({"eps": float("nan")}, "Invalid eps"),
                         ({"weight_decay": -0.1}, "Invalid weight_decay"),
                         ({"weight_decay_mode": "l2"}, "Invalid weight_decay_mode"),
                         ({"chunk_bytes": 100}, "Invalid chunk_bytes")]:
        with pytest.raises(ValueError, match=message):
            case.build([param], **{"lr": lr, **bad})
    with pytest.raises(ValueError, match="complex parameters"):
        case.build([torch.nn.Parameter(torch.randn(3, dtype=torch.complex64))], lr=lr)
    sparse = torch.nn.Parameter(torch.randn(4, 3))
    sparse.grad = torch.randn(4, 3).to_sparse()
    with pytest.raises(RuntimeError, match="sparse gradients"):
        case.build([sparse], lr=lr).step()


@pytest.mark.parametrize("case", OPTIMIZER_CASES, ids=IDS)
def test_a_step_runs_on_the_meta_device(case):
    shapes = [(50257, 768), (768,), (64, 3, 7, 7)]
    params = [torch.nn.Parameter(torch.empty(shape, device="meta")) for shape in shapes]
    for param in params:
        param.grad = torch.empty(param.shape, device="meta")
    optimizer = case.build(params, lr=case.lr)
    optimizer.step()
    for param, state in zip(params, case.predicted_states(optimizer, params)):
        predicted = {t.key: t.shape for t in state.tensors}
        assert {k: tuple(v.shape) for k, v in optimizer.state[param].items()
                if isinstance(v, torch.Tensor) and k != "step"} == predicted


@pytest.mark.parametrize("case", CORE_CASES, ids=CORE_IDS)
@pytest.mark.parametrize("dtype, extra", [(torch.float32, {}), (torch.bfloat16, {"maximize": True}),
                                          (torch.float32, {"weight_decay": 0.1, "weight_decay_mode": "adam"})])
def test_peak_extra_memory_stays_under_the_chunk(case, dtype, extra):
    chunk = 2 * 2**20
    param = torch.nn.Parameter(torch.randn(2048, 1536, dtype=dtype))   # 6 to 12 MiB, several chunks
    optimizer = case.build([param], lr=case.lr, chunk_bytes=chunk, **extra)
    param.grad = torch.randn_like(param)
    optimizer.step()                                             # state exists before measuring
    _, peak = CpuDevice().peak_during(optimizer.step)
    assert peak <= chunk * 1.1
