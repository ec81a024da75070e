"""How kernels split many ranges among threads, how a call passes them dtypes, and where they compile."""

import pytest

from memplan.kernels.jit import split_work

LENGTHS = [(100,), (10, 5000, 3, 70000), (0, 16), (5,), (1, 1, 1), (64,) * 20, (8, 0, 9, 1 << 20)]


@pytest.mark.parametrize("threads", [1, 2, 3, 7])
@pytest.mark.parametrize("lengths", LENGTHS, ids=[str(len(lengths)) + "ranges" for lengths in LENGTHS])
def test_items_cover_every_range_once_in_aligned_pieces(lengths, threads):
    items, bounds, touched = split_work(lengths, threads)
    assert len(bounds) == threads + 1 and bounds[0] == 0 and bounds[-1] == len(items)
    assert all(low <= high for low, high in zip(bounds, bounds[1:]))
    covered = {index: [] for index in range(len(lengths))}
    for thread in range(threads):
        for index, first, stop in items[bounds[thread]:bounds[thread + 1]]:
            assert first % 8 == 0 and first < stop
            covered[int(index)].append((int(first), int(stop), thread))
    for index, length in enumerate(lengths):
        pieces = sorted(covered[index])
        assert [first for first, _, _ in pieces] == ([0] + [stop for _, stop, _ in pieces[:-1]] if pieces else [])
        assert (pieces[-1][1] if pieces else 0) == length
        threads_of = [thread for _, _, thread in pieces]
        assert list(touched[index]) == ([min(threads_of), max(threads_of)] if pieces else [-1, -1])


def test_threads_get_about_equal_shares():
    items, bounds, _ = split_work((10, 5000, 3, 70000, 123457), 2)
    shares = [sum(int(stop - first) for _, first, stop in items[bounds[t]:bounds[t + 1]]) for t in range(2)]
    assert abs(shares[0] - shares[1]) <= 16


def test_every_piece_runs_once_on_at_most_torchs_threads():
    import threading

    import torch

    from memplan.kernels.jit import run_in_threads

    ran: list[tuple[int, int]] = []
    lock = threading.Lock()

    def piece(low: int, high: int) -> None:
        with lock:
            ran.extend((index, threading.get_ident()) for index in range(low, high))

    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        run_in_threads(piece, 9)
    finally:
        torch.set_num_threads(before)
    assert sorted(index for index, _ in ran) == list(range(9))
    assert 1 <= len({ident for _, ident in ran}) <= 2


def test_a_failing_piece_fails_the_call():
    import torch

    from memplan.kernels.jit import run_in_threads

    def piece(low: int, high: int) -> None:
        if low == 3:
            raise ValueError("piece 3")

    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        with pytest.raises(ValueError, match="piece 3"):
            run_in_threads(piece, 6)
    finally:
        torch.set_num_threads(before)


@pytest.mark.parametrize("pieces", [1, 2, 3, 8])
@pytest.mark.parametrize("lengths", LENGTHS, ids=[str(len(lengths)) + "ranges" for lengths in LENGTHS])
def test_each_piece_owns_the_vectors_of_the_ranges_it_touches_and_no_more(lengths, pieces):
    import numpy as np

    from memplan.kernels.jit import piece_origins

    items, bounds, _ = split_work(lengths, pieces)
    widths = np.array([7 + index % 5 for index in range(len(lengths))], dtype=np.int64)   # a range's vector length
    slots = np.concatenate([[0], np.cumsum(widths)[:-1]]).astype(np.int64)
    origins, total = piece_origins(items, bounds, slots, widths)
    owner = np.full(total, -1)
    for piece in range(pieces):
        for index in sorted({int(item[0]) for item in items[bounds[piece]:bounds[piece + 1]]}):
            start = origins[piece] + slots[index]
            assert 0 <= start and start + widths[index] <= total
            assert (owner[start:start + widths[index]] == -1).all()
            owner[start:start + widths[index]] = piece
    empty = sum(int(widths[index]) for index, length in enumerate(lengths) if not length)
    assert (owner == -1).sum() <= pieces * empty   # unused: only empty ranges between a piece's ranges
    touched = {index for index, length in enumerate(lengths) if length}
    assert total <= sum(int(widths[index]) for index in touched) + (pieces - 1) * int(widths.max()) + pieces * empty


def test_kernels_called_from_python_take_no_type_classes():
    """A class argument (np.float32) is typed in Python at every call, with the GIL held; the kernels
    take dtypes as empty arrays (jit.dtype_like). Every kernel a step calls from Python, after steps
    of every compiled method: no argument of any signature it was called with is a type class."""
    import torch
    from numba.core import types

    from memplan.kernels import extreme_numba, sm3_numba, smmf_numba
    from memplan.optim import build_optimizer

    for spec in ("smmf:impl=compiled", "smmf:beta1=none,impl=compiled", "sm3:impl=compiled", "et2:impl=compiled",
                 "et_inf:impl=compiled"):
        for dtype in (torch.float32, torch.float64):
            params = [torch.nn.Parameter(torch.randn(shape, dtype=dtype)) for shape in ((40, 24), (7,), (3, 5, 2))]
            for param in params:
                param.grad = torch.randn_like(param)
            build_optimizer(spec, params, lr=1e-3).step()
    entries = (smmf_numba.walk, smmf_numba.combine, sm3_numba.walk, sm3_numba.combine, extreme_numba.square_walk,
               extreme_numba.finish_sums, extreme_numba.update_walk, extreme_numba.infinity_squared_norm,
               extreme_numba.infinity_scale)
    for kernel in entries:
        assert kernel.signatures, kernel.__name__
        for signature in kernel.signatures:
            assert not any(isinstance(argument, types.NumberClass) for argument in signature), (kernel.__name__,
                                                                                                 signature)


def _twice(value):
    return 2 * value


def _thrice(value):
    return 3 * value


@pytest.fixture
def uncompiled_kernels(tmp_path, monkeypatch):
    """``_twice`` and ``_thrice`` as cached kernels under :func:`compile_in_child`, over an empty
    cache: their first calls must compile."""
    from memplan.kernels.jit import compile_in_child, numba_module

    numba = numba_module()
    monkeypatch.setattr(numba.config, "CACHE_DIR", str(tmp_path))
    return compile_in_child(numba.njit(cache=True)(_twice)), compile_in_child(numba.njit(cache=True)(_thrice))


@pytest.fixture
def uncompiled_kernel(uncompiled_kernels):
    """``_twice`` of :func:`uncompiled_kernels`."""
    return uncompiled_kernels[0]


def test_a_kernel_whose_child_process_fails_compiles_here_with_a_warning(uncompiled_kernel, tmp_path, monkeypatch):
    import sys
    import warnings

    from memplan.kernels.jit import compile_in_child

    kernel = uncompiled_kernel
    assert compile_in_child(kernel) is kernel
    monkeypatch.setattr(sys, "executable", str(tmp_path / "no-python"))
    with pytest.warns(RuntimeWarning, match="compiling _twice in a child process failed"):
        assert kernel(3.0) == 6.0
    assert sum(kernel.stats.cache_misses.values()) == 1
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert kernel(4.0) == 8.0   # compiled once: no second child, no second warning


def test_a_frozen_application_compiles_here_without_starting_a_child(uncompiled_kernel, monkeypatch):
    import subprocess
    import sys
    import warnings

    monkeypatch.setattr(sys, "frozen", True, raising=False)
    monkeypatch.setattr(subprocess, "run", lambda *args, **kwargs: pytest.fail("a child process was started"))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert uncompiled_kernel(5.0) == 10.0
    assert sum(uncompiled_kernel.stats.cache_misses.values()) == 1


@pytest.mark.parametrize("module", ["smmf_numba", "sm3_numba", "extreme_numba"])
def test_a_kernel_module_imports_without_torch(module):
    """What a compiling child imports (the kernels' module and the table layouts it reads) leaves
    torch out: torch's import was 1.3 s of each child's 1.6 s start."""
    import subprocess
    import sys

    check = f"import sys, memplan.kernels.{module}; sys.exit('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", check], check=False).returncode == 0


def test_kernels_compiled_ahead_compile_in_children_at_once_and_then_load(uncompiled_kernels, monkeypatch):
    """compile_ahead starts the children of every missing kernel before waiting for any (here: both
    must be running for either to finish), then loads each kernel; its calls then compile nothing
    more, a kernel already compiled starts no child, and a kind of call already readied lists no
    calls."""
    import threading

    from memplan.kernels import jit

    twice, thrice = uncompiled_kernels
    both_running = threading.Barrier(2, timeout=30)
    started = []

    def child(kernel, signature):
        started.append(kernel.py_func.__name__)
        both_running.wait()   # raises BrokenBarrierError unless the other child runs meanwhile
        jit.compile_in_child(kernel).compile_here(signature)   # as the child would: compiled into the cache

    monkeypatch.setattr(jit, "_compile_child", child)
    monkeypatch.setattr(jit, "_READY", set())
    jit.compile_ahead("test: float and int", lambda: [(twice, (1.5,)), (thrice, (2,))])
    assert sorted(started) == ["_thrice", "_twice"]
    assert [len(twice.overloads), len(thrice.overloads)] == [1, 1]
    monkeypatch.setattr(jit, "_compile_child", lambda *args: pytest.fail("a second child was started"))
    assert (twice(1.5), thrice(2)) == (3.0, 6)
    jit.compile_ahead("test: the same types", lambda: [(twice, (2.5,)), (thrice, (3,))])
    assert [len(twice.overloads), len(thrice.overloads)] == [1, 1]
    jit.compile_ahead("test: float and int", lambda: pytest.fail("a kind already readied listed its calls"))
