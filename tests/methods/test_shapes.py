import math

import pytest
from hypothesis import given, strategies as st

from memplan.methods.shapes import (divisors, et_index, merge_kernel_dims, near_equal_split, prime_factors,
                                    split_in_two, split_into_small_factors, square_matricization)


def brute_square_matricization(count):
    """The definition, by brute force: m the largest divisor of N with m <= floor(sqrt(N))."""
    m = max(d for d in range(1, math.isqrt(count) + 1) if count % d == 0)
    return count // m, m


@given(st.integers(min_value=1, max_value=200_000))
def test_square_matricization_matches_its_definition(count):
    n, m = square_matricization(count)
    assert (n, m) == brute_square_matricization(count)
    assert n * m == count and n >= m


def test_square_matricization_examples_from_algorithms_md():
    assert square_matricization(30522 * 768) == (5087, 4608)
    assert square_matricization(7919) == (7919, 1)        # prime
    assert square_matricization(1) == (1, 1)
    assert square_matricization(0) == (0, 0)


@given(st.integers(min_value=1, max_value=100_000))
def test_divisors_and_prime_factors(value):
    assert list(divisors(value)) == [d for d in range(1, value + 1) if value % d == 0]
    assert math.prod(prime_factors(value)) == value
    assert all(divisors(p) == (1, p) for p in prime_factors(value))


@pytest.mark.parametrize("shape, expected", [
    ((64, 64, 3, 3), (64, 64, 9)),
    ((128, 64, 1, 1), (128, 64)),
    ((768,), (768,)),
    ((), (1,)),
    ((1, 1024, 768), (1024, 768)),
    ((1,), (1,)),
    ((2, 3, 4, 5, 6), (2, 3, 120)),
])
def test_et1_merges_kernel_dims_and_drops_unit_dims(shape, expected):
    assert merge_kernel_dims(shape) == expected == et_index(shape, 1)


def test_et2_and_et3_examples_from_algorithms_md():
    assert et_index((512,), 2) == (16, 32)
    assert et_index((2048,), 2) == (32, 64)
    assert split_in_two(32) == (32,)
    assert et_index((512,), 3) == (4, 4, 4, 8)
    assert et_index((64, 64, 3, 3), 3) == (4, 4, 4, 4, 4, 4, 9)   # the merged kernel dim is kept
    assert split_into_small_factors(30522) == (6, 5087)     # a large prime factor stays whole
    assert split_into_small_factors(7) == (7,)


shapes = st.lists(st.integers(min_value=0, max_value=3000), min_size=0, max_size=4).map(tuple)


@given(shapes, st.sampled_from([1, 2, 3]))
def test_every_et_index_has_the_parameters_numel(shape, level):
    index = et_index(shape, level)
    assert math.prod(index) == math.prod(shape)
    assert len(index) >= 1


def factorizations_in_4_to_8(value, smallest=4):
    """Every way to write value as a non-decreasing product of factors in [4, 8] (brute force)."""
    if value == 1:
        return [()]
    found = []
    for factor in range(smallest, 9):
        if value % factor == 0:
            found += [(factor, *rest) for rest in factorizations_in_4_to_8(value // factor, factor)]
    return found


@given(st.integers(min_value=9, max_value=200_000))
def test_et3_split_is_the_finest_split_into_4_to_8_when_one_exists(dim):
    factors = split_into_small_factors(dim)
    assert math.prod(factors) == dim
    options = factorizations_in_4_to_8(dim)
    if options:
        assert all(4 <= f <= 8 for f in factors)
        assert len(factors) == max(len(option) for option in options)
    else:
        assert all(p in factors for p in prime_factors(dim) if p > 8)


@given(st.integers(min_value=2, max_value=1_000_000))
def test_near_equal_split(value):
    low, high = near_equal_split(value)
    assert low * high == value and low <= high
    assert not any(value % d == 0 for d in range(low + 1, math.isqrt(value) + 1))
