"""Kernel tests need numba; they compile into a temporary cache, never into the source tree."""

import pytest

pytest.importorskip("numba")


@pytest.fixture(params=[1, 3], ids=["1thread", "3threads"])
def threads(request, monkeypatch):
    """Run the kernels with this many pieces of the range (3 exceeds a 2-core pool: the pieces then
    share threads, which still exercises the per-thread partial sums and their combination)."""
    import memplan.kernels.sm3_cpu as sm3_cpu
    import memplan.kernels.smmf_cpu as smmf_cpu

    for module in (smmf_cpu, sm3_cpu):
        monkeypatch.setattr(module, "kernel_threads", lambda elements, count=request.param: count)
    return request.param


@pytest.fixture(params=[1, 1 << 15], ids=["axis_by_axis", "merged_tail"])
def tail_elements(request, monkeypatch):
    """Walk the trailing axes one by one (1), or as one axis while their product is at most 2^15."""
    import memplan.kernels.extreme_cpu as extreme_cpu
    import memplan.kernels.sm3_cpu as sm3_cpu

    for module in (extreme_cpu, sm3_cpu):
        monkeypatch.setattr(module, "TAIL_ELEMENTS", request.param)
    return request.param
