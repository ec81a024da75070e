"""Pure shape arithmetic behind every state layout: matricizations and tensor indices.

Nothing here imports torch; every function is small, deterministic and cached where the
planner calls it many times with the same sizes.
"""

from __future__ import annotations

import math
from functools import lru_cache
from itertools import combinations_with_replacement

Shape = tuple[int, ...]

ET2_SPLIT_ABOVE = 32
"""ET2 splits every dim larger than this into two near-equal factors (the ET paper's level 2)."""

ET3_FACTOR_RANGE = (4, 8)
"""ET3 splits every dim into factors within this range where the dim allows (level 3)."""


def numel(shape: Shape) -> int:
    """Number of elements of a tensor of ``shape`` (1 for a scalar)."""
    return math.prod(shape)


@lru_cache(maxsize=4096)
def divisors(value: int) -> tuple[int, ...]:
    """All positive divisors of ``value`` (> 0), ascending."""
    if value < 1:
        raise ValueError(f"divisors need a positive integer, got {value}")
    small, large = [], []
    for candidate in range(1, math.isqrt(value) + 1):
        if value % candidate == 0:
            small.append(candidate)
            if candidate != value // candidate:
                large.append(value // candidate)
    return tuple(small + large[::-1])


@lru_cache(maxsize=4096)
def prime_factors(value: int) -> tuple[int, ...]:
    """Prime factors of ``value`` with multiplicity, ascending (``()`` for 1)."""
    factors = []
    remaining = value
    candidate = 2
    while candidate * candidate <= remaining:
        while remaining % candidate == 0:
            factors.append(candidate)
            remaining //= candidate
        candidate += 1 if candidate == 2 else 2
    if remaining > 1:
        factors.append(remaining)
    return tuple(factors)


def square_matricization(count: int) -> tuple[int, int]:
    """SMMF's matrix view ``(n, m)`` of ``count`` elements: m the largest divisor <= sqrt(count).

    ``n = count / m >= m``; a prime count gives ``(count, 1)`` and an empty tensor ``(0, 0)``.
    Example: 30522 * 768 = 23,440,896 elements -> ``(5087, 4608)``.
    """
    if count == 0:
        return (0, 0)
    m = near_equal_split(count)[0]
    return (count // m, m)


@lru_cache(maxsize=4096)
def near_equal_split(value: int) -> tuple[int, int]:
    """``(a, b)`` with ``a * b == value``, ``a <= b`` and ``a`` the largest divisor <= sqrt(value)."""
    root = math.isqrt(value)
    a = max(d for d in divisors(value) if d <= root)
    return (a, value // a)


def natural_view(shape: Shape) -> Shape:
    """``shape`` with a scalar seen as ``(1,)``: every view needs at least one axis."""
    return shape if shape else (1,)


def merge_kernel_dims(shape: Shape) -> Shape:
    """ET1's index: the natural shape, trailing dims from the third on merged, unit dims dropped.

    ``(64, 64, 3, 3) -> (64, 64, 9)``, ``(128, 64, 1, 1) -> (128, 64)``, ``(768,) -> (768,)``,
    a scalar ``() -> (1,)``. An empty tensor keeps its zero dims.
    """
    merged = shape if len(shape) <= 3 else (*shape[:2], math.prod(shape[2:]))
    kept = tuple(dim for dim in merged if dim != 1)
    return kept or (1,)


def split_in_two(dim: int, above: int = ET2_SPLIT_ABOVE) -> Shape:
    """ET2's split of one dim: two near-equal factors when ``dim > above`` (512 -> (16, 32))."""
    if dim <= above:
        return (dim,)
    low, high = near_equal_split(dim)
    return (dim,) if low == 1 else (low, high)


@lru_cache(maxsize=4096)
def split_into_small_factors(dim: int, low: int = ET3_FACTOR_RANGE[0], high: int = ET3_FACTOR_RANGE[1]) -> Shape:
    """ET3's split of one dim into factors in ``[low, high]`` (512 -> (4, 4, 4, 8)).

    Among the factorizations whose factors all lie in the range, the one with the most
    factors (the finest split, as in the paper's example), then the most even, wins. When none exists, the prime factors above ``high`` stay
    whole and the rest (the smooth part) is split the same way, allowing factors below ``low``
    only if it must (greedily): 30522 = 2 * 3 * 5087 -> (6, 5087). Dims up to ``high`` stay whole.
    """
    if dim <= high:
        return (dim,)
    exact = _factorizations_in_range(dim, low, high)
    if exact:
        return exact
    primes = prime_factors(dim)
    large = tuple(p for p in primes if p > high)
    smooth = math.prod(p for p in primes if p <= high)
    smooth_split = () if smooth == 1 else (
        _factorizations_in_range(smooth, low, high) or _group_primes(smooth, high)
    )
    return tuple(sorted(smooth_split + large))


def _group_primes(value: int, high: int) -> Shape:
    """Greedy grouping of ``value``'s prime factors (all <= high) into factors <= high."""
    groups: list[int] = []
    for prime in prime_factors(value):
        if groups and groups[-1] * prime <= high:
            groups[-1] *= prime
        else:
            groups.append(prime)
    return tuple(groups)


def _factorizations_in_range(value: int, low: int, high: int) -> Shape:
    """The finest, then most even, factorization of ``value`` into factors in [low, high], or ``()``."""
    if value < low:
        return (value,) if low <= value <= high else ()
    min_count = max(1, math.ceil(math.log(value) / math.log(high) - 1e-12))
    max_count = int(math.log(value) / math.log(low) + 1e-12) if low > 1 else value
    factors = tuple(range(low, high + 1))
    for count in range(max_count, min_count - 1, -1):
        found = [combo for combo in combinations_with_replacement(factors, count) if math.prod(combo) == value]
        if found:
            return min(found, key=lambda combo: (max(combo) - min(combo), combo))
    return ()


def et_index(shape: Shape, level: int) -> Shape:
    """The ET paper's tensor index of ``shape`` at ``level`` 1, 2 or 3 (see ALGORITHMS.md).

    Level 1 merges kernel dims and drops unit dims; level 2 splits every level-1 dim above 32
    in two; level 3 splits every level-1 dim into factors of 4 to 8, keeping a merged kernel
    dim whole. The product always equals the number of elements.
    """
    base = merge_kernel_dims(shape)
    if level == 1 or 0 in base:
        return base
    if level == 2:
        return tuple(factor for dim in base for factor in split_in_two(dim))
    if level == 3:
        kernel_axis = 2 if len(shape) > 3 and len(base) == 3 else None
        return tuple(
            factor
            for axis, dim in enumerate(base)
            for factor in ((dim,) if axis == kernel_axis else split_into_small_factors(dim))
        )
    raise ValueError(f"extreme-tensoring level must be 1, 2 or 3, got {level}")


def near_equal_factors(dim: int, parts: int) -> Shape:
    """``dim`` as a product of at most ``parts`` factors as equal as possible, ascending.

    Prime factors are dealt, largest first, to the currently smallest factor; a dim with fewer
    prime factors than ``parts`` gives one factor per prime. 768 in 2 -> (24, 32); 7 -> (7,).
    """
    primes = prime_factors(dim)
    if dim <= 1 or parts <= 1 or len(primes) <= 1:
        return (dim,)
    factors = [1] * min(parts, len(primes))
    for prime in sorted(primes, reverse=True):
        smallest = factors.index(min(factors))
        factors[smallest] *= prime
    return tuple(sorted(factors))


def split_indices(shape: Shape) -> list[Shape]:
    """Tensor indices from the ET1 index by splitting every dim into 1, 2, 3, ... near-equal factors,
    up to each dim's prime factorization (the deepest index). Distinct, shallowest first."""
    base = merge_kernel_dims(shape)
    if 0 in base:
        return [base]
    deepest = max(len(prime_factors(dim)) for dim in base)
    indices: list[Shape] = []
    for parts in range(1, max(1, deepest) + 1):
        index = tuple(factor for dim in base for factor in near_equal_factors(dim, parts))
        if index not in indices:
            indices.append(index)
    return indices


def index_depth(shape: Shape, index: Shape) -> float:
    """How much finer ``index`` is than the ET1 index of ``shape``: axes of one per axes of the other.

    ET1 has depth 1, ET2 about 2, ET3 about 3 to 4; a single scalar-per-tensor has no axes.
    """
    return len(index) / len(merge_kernel_dims(shape))
