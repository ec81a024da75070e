"""Kernel tests need numba; they compile into a temporary cache, never into the source tree."""

import pytest

pytest.importorskip("numba")


@pytest.fixture(params=[1, 3], ids=["1piece", "3pieces"])
def threads(request, monkeypatch):
    """Run the kernels with their work cut into this many pieces (3 pieces on at most torch's
    threads, two on a 2-core machine: the threads take pieces as they finish them, which exercises
    the per-piece partial sums and their combination in piece order)."""
    import memplan.kernels.sm3_cpu as sm3_cpu
    import memplan.kernels.smmf_cpu as smmf_cpu

    for module in (smmf_cpu, sm3_cpu):
        monkeypatch.setattr(module, "kernel_pieces", lambda elements, count=request.param: count)
    return request.param


@pytest.fixture(params=[1, 1 << 15], ids=["axis_by_axis", "merged_tail"])
def tail_elements(request, monkeypatch):
    """Walk the trailing axes one by one (1), or as one axis while their product is at most 2^15."""
    import memplan.kernels.extreme_cpu as extreme_cpu
    import memplan.kernels.sm3_cpu as sm3_cpu

    for module in (extreme_cpu, sm3_cpu):
        monkeypatch.setattr(module, "TAIL_ELEMENTS", request.param)
    return request.param
