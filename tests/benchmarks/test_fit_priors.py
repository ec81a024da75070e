"""benchmarks/fit_priors.py: the random-effects pooling of workloads' measured qualities."""

import math
import sys

import pytest

from tests.conftest import REPO

sys.path.insert(0, str(REPO / "benchmarks"))
from fit_priors import pooled  # noqa: E402


def test_measurements_that_agree_pool_with_inverse_variance_weights():
    # Q = 0 < k - 1: no between-workload variance, so the fixed-effect mean and error
    mean, error = pooled([1.0, 1.1], [0.1, 0.2])
    weights = [1 / 0.1 ** 2, 1 / 0.2 ** 2]
    assert mean == pytest.approx((weights[0] * 1.0 + weights[1] * 1.1) / sum(weights))
    assert error == pytest.approx(math.sqrt(1 / sum(weights)))


def test_a_noisy_workload_counts_by_its_precision_and_disagreement_widens_the_error():
    mean, error = pooled([2.0, -1.0], [0.05, 2.0])
    assert mean == pytest.approx((400 * 2.0 - 0.25) / 400.25)
    assert error > 1.0  # Q = 2.25 > k - 1: the excess is between-workload variance
    # within the noisy workload's own error, no excess: the fixed-effect error
    mean, error = pooled([2.0, 0.5], [0.05, 2.0])
    assert error == pytest.approx(math.sqrt(1 / 400.25))
    # two precise workloads that disagree count equally, with the disagreement as the error
    mean, error = pooled([2.0, 0.0], [0.05, 0.05])
    assert mean == pytest.approx(1.0) and error == pytest.approx(1.0, rel=0.01)


def test_exact_references_pool_to_themselves():
    assert pooled([1.0, 1.0], [0.0, 0.0]) == (1.0, 0.0)
    assert pooled([0.5], [0.1]) == (0.5, pytest.approx(0.1))
