"""The multi-tensor Triton steps (``smmf_many``, ``sm3_many``), on a GPU or on CPU tensors through
Triton's interpreter (``TRITON_INTERPRET=1``; see :mod:`tests.kernels.triton_device`): against the
dense re-implementations of one tensor's step followed by the optimizer's state update, and against
the eager optimizers over several steps."""

import dataclasses
import math

import pytest
import torch

from .triton_device import DEVICE, on_device  # sets TRITON_INTERPRET where there is no GPU

pytest.importorskip("triton")

from memplan.kernels import sm3_triton, smmf_triton  # noqa: E402
from memplan.kernels.sm3_cpu import SM3Scalars, SM3Tensor  # noqa: E402
from memplan.kernels.smmf_cpu import SMMFScalars, SMMFTensor  # noqa: E402
from memplan.optim import SM3, SMMF  # noqa: E402
from memplan.optim.base import kernel_decay, learning_rate  # noqa: E402

from .test_sm3_cpu import dense_update  # noqa: E402
from .test_smmf_cpu import ULP, dense_step, pack  # noqa: E402

SMMF_SHAPES = [(1, 1), (7, 13), (31, 17), (97, 1), (1, 97), (13, 8), (5, 3), (9, 24), (3, 40), (37, 16)]
"""(1, 1), primes, sizes that are not a multiple of 8 or of the block, a row and a column; with 1-bit
signs, the last four (columns a multiple of 8) take the tiled programs, partial tiles included, and
the others the flat ones."""

SM3_VIEWS = [(1,), (97,), (7, 13), (31, 1), (5, 3, 7), (2, 3, 1, 5), (4, 6), (3, 2, 2), (2, 2, 3, 3)]
"""With the small tiles of ``small_blocks`` (columns at least 4): views whose columns are the last
axis, the last two or three axes, or every axis (one row)."""


@pytest.fixture(autouse=True)
def small_blocks(monkeypatch):
    """Several update programs per tensor, partial tiles, and finalize programs that loop over
    several blocks."""
    monkeypatch.setattr(smmf_triton, "BLOCK", 64)
    monkeypatch.setattr(smmf_triton, "TILE_ROWS", 4)
    monkeypatch.setattr(smmf_triton, "TILE_COLS", 16)
    monkeypatch.setattr(smmf_triton, "VECTOR_BLOCK", 16)
    monkeypatch.setattr(sm3_triton, "TILE_ROWS", 2)
    monkeypatch.setattr(sm3_triton, "TILE_COLS", 8)
    monkeypatch.setattr(sm3_triton, "MIN_COLS", 4)
    monkeypatch.setattr(sm3_triton, "VECTOR_BLOCK", 16)


def stored_factors(sums, keep):
    """The optimizer's factor store: both sums times ``keep`` (fp32), the shorter side divided by its
    total unless that is 0."""
    row, col = (total.float() * keep for total in sums)
    shorter = row if row.numel() < col.numel() else col
    total = shorter.sum()
    if total > 0:
        shorter.div_(total)
    return row, col


def smmf_case(rows, cols, dtype, sign_bits, seed):
    """One tensor's inputs (its factors positive, as the optimizer's are after a step)."""
    generator = torch.Generator().manual_seed(seed)
    count = rows * cols
    weights = torch.randn(count, generator=generator).to(dtype)
    grads = torch.randn(count, generator=generator).to(dtype)
    positive = torch.rand(count, generator=generator) > 0.5
    factors = [torch.rand(size, generator=generator) + 0.1 for size in (rows, cols, rows, cols)]
    signs = None if sign_bits is None else pack(positive) if sign_bits == 1 else positive.clone()
    scalars = SMMFScalars(step_size=-0.01 * (1 + seed % 3), eps=1e-8 * (1 + seed % 2), decay=1.0 - 1e-3 * (seed % 4),
                          coupled_decay=0.01 * (seed % 3 == 2), negate=seed % 2 == 1)
    tensor = SMMFTensor(weights=weights, grads=grads, signs=signs, cols=cols, row_v=factors[0], col_v=factors[1],
                        row_m=factors[2] if sign_bits else None, col_m=factors[3] if sign_bits else None,
                        scalars=scalars, prior_v=0.5 + seed % 5, prior_m=0.25 * (1 + seed % 3), keep_v=0.3 + 0.1 * seed,
                        keep_m=0.2 + 0.05 * seed)
    return tensor, positive


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["fp32", "fp64"])
@pytest.mark.parametrize("sign_bits", [1, 8, None], ids=["1bit", "8bit", "no_momentum"])
def test_smmf_many_equals_the_dense_step_and_factor_store(sign_bits, dtype):
    cases = [smmf_case(rows, cols, dtype, sign_bits, seed) for seed, (rows, cols) in enumerate(SMMF_SHAPES)]
    expected = []
    for tensor, positive in cases:
        rows = tensor.weights.numel() // tensor.cols
        scaled_v = ((tensor.row_v * tensor.prior_v).to(dtype), tensor.col_v.to(dtype))
        scaled_m = ((tensor.row_m * tensor.prior_m).to(dtype), tensor.col_m.to(dtype)) if sign_bits else None
        weights, now_positive, sums_v, sums_m = dense_step(tensor.weights, tensor.grads, positive, 0, rows,
                                                           tensor.cols, scaled_v, scaled_m, tensor.scalars)
        factors_m = stored_factors(sums_m, tensor.keep_m) if sign_bits else None
        expected.append((weights, now_positive, stored_factors(sums_v, tensor.keep_v), factors_m))
    on_device(smmf_triton.smmf_many, [tensor for tensor, _ in cases])
    for (tensor, _), (weights, now_positive, factors_v, factors_m) in zip(cases, expected):
        torch.testing.assert_close(tensor.weights, weights, rtol=1e-6, atol=ULP)
        torch.testing.assert_close((tensor.row_v, tensor.col_v), factors_v, rtol=1e-5, atol=ULP)
        if sign_bits is None:
            continue
        torch.testing.assert_close((tensor.row_m, tensor.col_m), factors_m, rtol=1e-5, atol=ULP)
        if sign_bits == 1:
            assert torch.equal(tensor.signs, pack(now_positive))  # padding bits cleared
        else:
            assert torch.equal(tensor.signs, now_positive)


def sm3_case(view, dtype, momentum, seed):
    generator = torch.Generator().manual_seed(seed)
    count = math.prod(view)
    weights = torch.randn(count, generator=generator).to(dtype)
    grads = torch.randn(count, generator=generator).to(dtype)
    accumulators = tuple(torch.rand(dim, generator=generator) + 0.1 for dim in view)
    buffer = torch.randn(count, generator=generator) if momentum else None
    scalars = SM3Scalars(lr=0.1 * (1 + seed % 3), eps=1e-30, momentum=momentum, decay=1.0 - 1e-3 * (seed % 4),
                         coupled_decay=0.01 * (seed % 3 == 2), negate=seed % 2 == 1)
    return SM3Tensor(weights=weights, grads=grads, view=view, accumulators=accumulators, buffer=buffer,
                     scalars=scalars)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["fp32", "fp64"])
@pytest.mark.parametrize("momentum", ["none", "all", "some"])
def test_sm3_many_equals_the_dense_step(momentum, dtype):
    tensors = [sm3_case(view, dtype, 0.9 if momentum == "all" or (momentum == "some" and seed % 2) else 0.0, seed)
               for seed, view in enumerate(SM3_VIEWS)]
    expected = []
    for tensor in tensors:
        working = [accumulator.to(dtype) for accumulator in tensor.accumulators]
        weights, moving, maxima = dense_update(tensor.weights, tensor.grads, tensor.buffer, 0, tensor.view, working,
                                               tensor.scalars, add_square=True)
        expected.append((weights, moving, [maximum.float() for maximum in maxima]))
    on_device(sm3_triton.sm3_many, tensors)
    for tensor, (weights, moving, maxima) in zip(tensors, expected):
        torch.testing.assert_close(tensor.weights, weights, rtol=1e-6, atol=ULP)
        if moving is not None:
            torch.testing.assert_close(tensor.buffer, moving.float(), rtol=1e-6, atol=ULP)
        for accumulator, maximum in zip(tensor.accumulators, maxima):
            torch.testing.assert_close(accumulator, maximum, rtol=1e-5, atol=0)


def parameters(shapes, dtype, seed):
    generator = torch.Generator().manual_seed(seed)
    return [torch.nn.Parameter(torch.randn(shape, generator=generator).to(dtype)) for shape in shapes]


def set_gradients(params, copies, step):
    generator = torch.Generator().manual_seed(100 + step)
    for param, copy in zip(params, copies):
        param.grad = torch.randn(param.shape, generator=generator).to(param.dtype)
        copy.grad = param.grad.clone()


SMMF_OPTIONS = [dict(sign_bits=1), dict(sign_bits=8, weight_decay=0.1), dict(beta1=None),
                dict(sign_bits=1, weight_decay=0.01, weight_decay_mode="adam", maximize=True)]


WIDTHS = [torch.float32, torch.float64, torch.bfloat16]
"""The weights dtypes of the tests that follow the eager optimizer (bf16: fp32 math, rounded)."""


def tolerance(dtype: torch.dtype) -> dict[str, float]:
    """Weights agree to the last bits in fp32 and float64. In bf16 both round an fp32 update once a
    step, but that update's last bits differ (the factors' sums are added in another order), and
    Triton's interpreter rounds fp32 to bf16 towards zero where torch and the GPU round to nearest:
    one bf16 ulp (2^-7 relative at most) apart per step, three after three steps."""
    return dict(rtol=3 * 2.0 ** -7, atol=1e-3) if dtype == torch.bfloat16 else dict(rtol=1e-6, atol=ULP)


def state_tolerance(dtype: torch.dtype) -> dict[str, float]:
    """State agrees to fp32's last bits, except in bf16 with coupled decay, which reads the weights
    into G: weights up to two ulps (2 x 2^-7 |W|) apart, times the 0.01 of these tests, move G by up
    to about 5e-4 for weights of a few units."""
    return dict(rtol=1e-3, atol=5e-4) if dtype == torch.bfloat16 else dict(rtol=1e-5, atol=ULP)


@pytest.mark.parametrize("dtype", WIDTHS, ids=["fp32", "fp64", "bf16"])
@pytest.mark.parametrize("options", SMMF_OPTIONS, ids=["1bit", "8bit_decay", "no_momentum", "coupled_maximize"])
def test_smmf_many_follows_the_eager_optimizer(options, dtype):
    """Three steps of the eager optimizer, and the same steps through smmf_many with the scalars the
    optimizer computes (see memplan.optim.smmf._update_factored) on a copy of its parameters and
    state: weights and state agree."""
    params = parameters(SMMF_SHAPES, dtype, seed=1)
    copies = [param.detach().clone() for param in params]
    optimizer = SMMF(params, lr=0.01, matricization=SMMF_SHAPES, impl="eager", **options)
    group = optimizer.param_groups[0]
    sign_bits = group["sign_bits"] if group["beta1"] is not None else None
    states = [_zero_smmf_state(rows, cols, sign_bits) for rows, cols in SMMF_SHAPES]
    for step in range(1, 4):
        set_gradients(params, copies, step)
        optimizer.step()
        on_device(smmf_triton.smmf_many,
                  [_smmf_tensor(group, copy, state, step) for copy, state in zip(copies, states)])
        for param, copy, state in zip(params, copies, states):
            torch.testing.assert_close(copy, param.detach(), **tolerance(dtype))
            eager = optimizer.state[param]
            for key, value in state.items():
                if key == "sign":
                    assert torch.equal(value, eager["sign"]), f"signs differ at step {step}"
                else:
                    torch.testing.assert_close(value, eager[key], **state_tolerance(dtype))


def _zero_smmf_state(rows, cols, sign_bits):
    state = {"row_v": torch.zeros(rows), "col_v": torch.zeros(cols)}
    if sign_bits is not None:
        state.update(row_m=torch.zeros(rows), col_m=torch.zeros(cols))
        state["sign"] = (torch.zeros(math.ceil(rows * cols / 8), dtype=torch.uint8) if sign_bits == 1
                         else torch.zeros(rows, cols, dtype=torch.bool))
    return state


def _smmf_tensor(group, param, state, step):
    """What the optimizer's factored step computes for ``step``, as one tensor of smmf_many."""
    beta1 = group["beta1"]
    beta1_t = None if beta1 is None else beta1 * group["growth_rate"] ** (step - 1)
    beta2_t = 1.0 - step ** group["decay_rate"]
    v_scale = 1.0 - beta2_t
    m_scale = 1.0 - beta1_t if beta1_t is not None else 1.0
    decay, coupled, negate = kernel_decay(group)
    scalars = SMMFScalars(step_size=-learning_rate(group) * m_scale / math.sqrt(v_scale),
                          eps=group["eps"] / math.sqrt(v_scale), decay=decay, coupled_decay=coupled, negate=negate)
    first_moment = beta1_t is not None
    return SMMFTensor(weights=param.data.view(-1), grads=param.grad.view(-1),
                      signs=state["sign"].view(-1) if first_moment else None, cols=len(state["col_v"]),
                      row_v=state["row_v"], col_v=state["col_v"], row_m=state.get("row_m"), col_m=state.get("col_m"),
                      scalars=scalars, prior_v=beta2_t / v_scale, prior_m=beta1_t / m_scale if first_moment else 0.0,
                      keep_v=v_scale, keep_m=m_scale)


SM3_SHAPES = [(97,), (7, 13), (5, 3, 7), (2, 3, 1, 5), (1,), (6, 35)]
SM3_COVERS = [(97,), (7, 13), (5, 3, 7), (2, 3, 1, 5), (1,), (6, 5, 7)]


@pytest.mark.parametrize("dtype", WIDTHS, ids=["fp32", "fp64", "bf16"])
@pytest.mark.parametrize("options", [dict(momentum=0.0), dict(momentum=0.9, weight_decay=0.1),
                                     dict(momentum=0.5, weight_decay=0.01, weight_decay_mode="adam", maximize=True)],
                         ids=["no_momentum", "momentum_decay", "coupled_maximize"])
def test_sm3_many_follows_the_eager_optimizer(options, dtype):
    """Three SM3-II steps of the eager optimizer, and the same steps through sm3_many on a copy."""
    params = parameters(SM3_SHAPES, dtype, seed=2)
    copies = [param.detach().clone() for param in params]
    optimizer = SM3(params, lr=0.1, cover=SM3_COVERS, impl="eager", **options)
    group = optimizer.param_groups[0]
    decay, coupled, negate = kernel_decay(group)
    scalars = SM3Scalars(lr=learning_rate(group), eps=group["eps"], momentum=group["momentum"], decay=decay,
                         coupled_decay=coupled, negate=negate)
    accumulators = [tuple(torch.zeros(dim) for dim in cover) for cover in SM3_COVERS]
    buffers = [torch.zeros(copy.numel()) if group["momentum"] else None for copy in copies]
    for step in range(1, 4):
        set_gradients(params, copies, step)
        optimizer.step()
        on_device(sm3_triton.sm3_many, [SM3Tensor(weights=copy.data.view(-1), grads=copy.grad.view(-1), view=cover,
                                       accumulators=accumulator, buffer=buffer, scalars=scalars)
                             for copy, cover, accumulator, buffer in zip(copies, SM3_COVERS, accumulators, buffers)])
        for param, copy, accumulator, buffer in zip(params, copies, accumulators, buffers):
            torch.testing.assert_close(copy, param.detach(), **tolerance(dtype))
            eager = optimizer.state[param]
            for axis, value in enumerate(accumulator):
                torch.testing.assert_close(value, eager[f"acc_{axis}"], **state_tolerance(dtype))
            if buffer is not None:
                torch.testing.assert_close(buffer, eager["momentum_buffer"].view(-1), **state_tolerance(dtype))


def test_mixed_batches_are_refused():
    fp32, _ = smmf_case(3, 5, torch.float32, 1, seed=0)
    fp64, _ = smmf_case(3, 5, torch.float64, 1, seed=1)
    byte_signs, _ = smmf_case(3, 5, torch.float32, 8, seed=2)
    with pytest.raises(ValueError):
        on_device(smmf_triton.smmf_many, [fp32, fp64])
    with pytest.raises(ValueError):
        on_device(smmf_triton.smmf_many, [fp32, byte_signs])
    with pytest.raises(ValueError):
        on_device(sm3_triton.sm3_many, [sm3_case((3, 5), torch.float32, 0.0, 0), sm3_case((4,), torch.float64, 0.0, 1)])
    with pytest.raises(ValueError):
        on_device(sm3_triton.sm3_many, [sm3_case((1,) * (sm3_triton.MAX_AXES + 1), torch.float32, 0.0, 0)])


def test_an_empty_batch_is_a_no_op():
    on_device(smmf_triton.smmf_many, [])
    on_device(sm3_triton.sm3_many, [])


class _CountingKernel:
    """A kernel whose launches are counted."""

    def __init__(self, kernel, launches):
        self.kernel, self.launches = kernel, launches

    def __getitem__(self, grid):
        self.launches.append(grid)
        return self.kernel[grid]


@pytest.mark.parametrize("module,launches_per_call", [("smmf", 3), ("sm3", 2)])
def test_a_batch_is_a_few_launches_with_cached_tables(module, launches_per_call, monkeypatch):
    """One update launch and one finalize launch per call, whatever the number of tensors (SMMF: a
    tiled and a flat update launch, as some of these shapes cannot be tiled with 1-bit signs); the
    shape tables are built once for a list of shapes."""
    triton_module = smmf_triton if module == "smmf" else sm3_triton
    launches = []
    kernels = triton_module._many_kernels()
    monkeypatch.setattr(triton_module, "_many_kernels",
                        lambda: tuple(_CountingKernel(kernel, launches) for kernel in kernels))
    triton_module._batch.cache_clear()
    for seed in range(2):
        if module == "smmf":
            on_device(smmf_triton.smmf_many,
                      [smmf_case(rows, cols, torch.float32, 1, seed)[0] for rows, cols in SMMF_SHAPES])
        else:
            on_device(sm3_triton.sm3_many, [sm3_case(view, torch.float32, 0.9, seed) for view in SM3_VIEWS])
    assert len(launches) == 2 * launches_per_call
    assert triton_module._batch.cache_info().misses == 1


@pytest.mark.parametrize("cls,options,call", [
    (SMMF, dict(lr=0.01, weight_decay=0.1), smmf_triton.SMMFTritonCall),
    (SM3, dict(lr=0.1, momentum=0.9), sm3_triton.SM3TritonCall),
], ids=["smmf", "sm3"])
def test_a_group_on_triton_steps_through_one_prepared_multi_tensor_call(monkeypatch, cls, options, call):
    """The optimizer's Triton path (on a GPU, or through the interpreter on CPU tensors): every whole
    fp32 parameter of the group in one call per step, prepared at the first step and run again
    while nothing it points at changes, on the eager trajectory."""
    made, runs = [], []
    original_init, original_run = call.__init__, call.run
    monkeypatch.setattr(call, "__init__",
                        lambda self, tensors: made.append(len(tensors)) or original_init(self, tensors))
    monkeypatch.setattr(call, "run",
                        lambda self, grads, *rest: runs.append(len(grads)) or original_run(self, grads, *rest))
    results = []
    for impl in ("eager", "triton"):
        generator = torch.Generator().manual_seed(5)
        params = [torch.nn.Parameter(torch.randn(shape, generator=generator).to(DEVICE))
                  for shape in [(13, 7), (31,), (4, 3, 5)]]
        optimizer = cls(params, **options)
        if impl == "triton":
            monkeypatch.setattr(cls, "implementation", lambda self, group: "triton")
        for _ in range(3):
            for param in params:
                param.grad = torch.randn(param.shape, generator=generator).to(DEVICE)
            optimizer.step()
        results.append((params, optimizer))
    assert made == [3] and runs == [3, 3, 3]
    (eager, eager_optimizer), (triton, triton_optimizer) = results
    for a, b in zip(eager, triton):
        torch.testing.assert_close(b, a, rtol=1e-6, atol=1e-7)
    for a, b in zip(eager_optimizer.state.values(), triton_optimizer.state.values()):
        if "sign" in a:
            assert torch.equal(a["sign"], b["sign"])
        torch.testing.assert_close(b[state_key(cls)], a[state_key(cls)], rtol=1e-5, atol=1e-7)


def state_key(cls):
    return "row_v" if cls is SMMF else "acc_0"


def test_a_prepared_call_refuses_gradients_that_do_not_fit():
    """A prepared call reads each gradient through its address: one of another dtype, size or
    layout, or on another device, is refused before anything runs."""
    cases = [smmf_case(rows, cols, torch.float32, 1, seed)[0] for seed, (rows, cols) in enumerate(SMMF_SHAPES[:3])]
    tensors = [dataclasses.replace(tensor, weights=tensor.weights.to(DEVICE), grads=tensor.grads.to(DEVICE),
                                   signs=tensor.signs.to(DEVICE), row_v=tensor.row_v.to(DEVICE),
                                   col_v=tensor.col_v.to(DEVICE), row_m=tensor.row_m.to(DEVICE),
                                   col_m=tensor.col_m.to(DEVICE)) for tensor in cases]
    call = smmf_triton.SMMFTritonCall(tensors)
    before = [tensor.weights.clone() for tensor in tensors]
    grads = [tensor.grads for tensor in tensors]
    rows = [(tensors[0].scalars, 1.0, 1.0, 0.5, 0.5)]
    wrong = [grads[:1] + [grads[1].double()] + grads[2:], grads[:1] + [grads[1][:-1]] + grads[2:],
             grads[:2], grads[:2] + [torch.zeros(grads[2].numel() * 2, device=DEVICE)[::2]]]
    if DEVICE.type == "cuda":
        wrong.append(grads[:1] + [grads[1].cpu()] + grads[2:])
    for bad in wrong:
        with pytest.raises(ValueError):
            call.run(bad, rows)
    for tensor, weights in zip(tensors, before):
        assert torch.equal(tensor.weights, weights)
    call.run(grads, rows)
    assert not torch.equal(tensors[0].weights, before[0])


def test_sm3_many_maxima_are_nan_where_a_slice_holds_one():
    """A tile reduces its maxima in registers before the atomics: a NaN of either sign is still the
    maximum of its slices (as torch's amax, and the CPU kernel), zeros stay +0.0 and huge values
    order as floats do."""
    case = sm3_case((7, 13), torch.float32, 0.0, 3)   # seed 3: no coupled decay
    grads = case.grads.view(7, 13)
    grads[0] = 0.0
    grads[1, 2] = 1e18
    grads[3, 4] = float("nan")
    grads[5, 6] = -float("nan")
    accumulators = tuple(torch.zeros_like(accumulator) for accumulator in case.accumulators)
    tensor = SM3Tensor(weights=case.weights, grads=case.grads, view=case.view, accumulators=accumulators,
                       buffer=None, scalars=case.scalars)
    _, _, maxima = dense_update(case.weights.clone(), case.grads, None, 0, case.view, list(accumulators),
                                case.scalars, add_square=True)
    on_device(sm3_triton.sm3_many, [tensor])
    for accumulator, maximum in zip(tensor.accumulators, maxima):
        torch.testing.assert_close(accumulator, maximum.float(), rtol=1e-6, atol=0, equal_nan=True)
        assert torch.equal(accumulator.isnan(), maximum.isnan()) and accumulator.isnan().any()
    row_zero = tensor.accumulators[0][0].item()
    assert row_zero == 0.0 and math.copysign(1.0, row_zero) > 0


@pytest.fixture
def lanes(monkeypatch) -> list[int]:
    """The lanes of every atomic the interpreter runs from now on, one count per atomic call."""
    from triton.runtime import interpreter

    counted: list[int] = []
    original = interpreter.InterpreterBuilder.create_atomic_rmw

    def counting(self, op, ptr, val, mask, sem, scope):
        counted.append(int(mask.data.sum()))
        return original(self, op, ptr, val, mask, sem, scope)

    monkeypatch.setattr(interpreter.InterpreterBuilder, "create_atomic_rmw", counting)
    return counted


@pytest.mark.skipif(DEVICE.type != "cpu", reason="counts the interpreter's atomics")
@pytest.mark.parametrize("module", ["smmf", "sm3"])
def test_a_tile_adds_one_atomic_per_row_and_column_not_per_element(module, monkeypatch, lanes):
    """The row and column statistics of a tile are reduced in registers: on a 64 x 96 matrix in
    tiles of 8 x 32, a tile adds 8 row and 32 column atomics for each of SMMF's two factor pairs (v
    and m) and for SM3's pair of axes: (8 + 32) / 256 atomics an element per pair, where the flat
    programs added one per element to each row and column statistic (and every element of a row
    hit its row's address)."""
    rows, cols = 64, 96
    if module == "smmf":
        monkeypatch.setattr(smmf_triton, "TILE_ROWS", 8)
        monkeypatch.setattr(smmf_triton, "TILE_COLS", 32)
        on_device(smmf_triton.smmf_many, [smmf_case(rows, cols, torch.float32, 1, seed=0)[0]])
        pairs = 2
    else:
        monkeypatch.setattr(sm3_triton, "TILE_ROWS", 8)
        monkeypatch.setattr(sm3_triton, "TILE_COLS", 32)
        on_device(sm3_triton.sm3_many, [sm3_case((rows, cols), torch.float32, 0.0, seed=0)])
        pairs = 1
    assert sum(lanes) == pairs * (rows * cols // (8 * 32)) * (8 + 32)


@pytest.mark.skipif(DEVICE.type != "cpu", reason="counts the interpreter's atomics")
@pytest.mark.parametrize("cols", [97, 13], ids=["wide", "narrow"])
def test_a_flat_block_adds_one_atomic_per_near_row(cols, lanes):
    """A flat block (1-bit signs, columns not a multiple of 8) keeps the sums of its first
    NEAR_ROWS rows in registers: one atomic per such row and statistic, per element only for the
    column sums and for rows further on (a block of 64 spans 2 rows 97 wide, 5 or 6 rows 13 wide)."""
    rows = 40
    on_device(smmf_triton.smmf_many, [smmf_case(rows, cols, torch.float32, 1, seed=0)[0]])
    count, block, near = rows * cols, smmf_triton.BLOCK, smmf_triton.NEAR_ROWS
    row_atomics = 0
    for first in range(0, count, block):
        spanned = (min(first + block, count) - 1) // cols - first // cols + 1
        far_elements = sum(1 for element in range(first, min(first + block, count))
                           if element // cols - first // cols >= near)
        row_atomics += min(spanned, near) + far_elements
    assert sum(lanes) == 2 * (count + row_atomics)   # v and m: every column sum, and the rows'
    assert (row_atomics < count / 20) == (cols == 97)


@pytest.mark.skipif(DEVICE.type != "cpu", reason="counts the interpreter's atomics")
@pytest.mark.parametrize("module", ["smmf", "sm3"])
def test_a_range_adds_one_atomic_per_row_and_column_of_a_tile(module, monkeypatch, lanes):
    """A rank's range (here rows 8 to 39 of a 64 x 96 matrix, in tiles of 8 x 32) is stepped in
    tiles too: each adds 8 row and 32 column atomics for each of SMMF's two factor pairs and for
    SM3's pair of axes, where the flat programs had added one per element and column."""
    from memplan.kernels.sm3_cpu import SM3Scalars
    from memplan.kernels.smmf_cpu import SMMFScalars

    rows, cols, first, count = 64, 96, 8, 32
    start, length = first * cols, count * cols
    generator = torch.Generator().manual_seed(0)
    weights, grads = torch.randn(length, generator=generator), torch.randn(length, generator=generator)
    if module == "smmf":
        monkeypatch.setattr(smmf_triton, "TILE_ROWS", 8)
        monkeypatch.setattr(smmf_triton, "TILE_COLS", 32)
        factors = [torch.rand(size, generator=generator) + 0.1 for size in (rows, cols, rows, cols)]
        signs = torch.randint(0, 256, (length // 8,), generator=generator, dtype=torch.uint8)
        on_device(smmf_triton.smmf_range, weights, grads, signs, start, cols, (factors[0], factors[1]),
                  (factors[2], factors[3]), (torch.zeros(rows), torch.zeros(cols)),
                  (torch.zeros(rows), torch.zeros(cols)), SMMFScalars(step_size=-0.01, eps=1e-8))
        pairs = 2
    else:
        monkeypatch.setattr(sm3_triton, "TILE_ROWS", 8)
        monkeypatch.setattr(sm3_triton, "TILE_COLS", 32)
        accumulators = [torch.rand(dim, generator=generator) for dim in (rows, cols)]
        on_device(sm3_triton.sm3_range, weights, grads, start, (rows, cols), accumulators,
                  [torch.zeros(rows), torch.zeros(cols)], None, SM3Scalars(lr=0.1, eps=1e-30, momentum=0.0))
        pairs = 1
    assert sum(lanes) == pairs * (count * cols // (8 * 32)) * (8 + 32)
