"""benchmarks/fit_priors.py: the pooling of workloads' measured qualities."""

import math
import sys

import pytest

from tests.conftest import REPO

sys.path.insert(0, str(REPO / "benchmarks"))
from fit_priors import chi_square_95, pooled  # noqa: E402


def test_measurements_that_agree_pool_with_inverse_variance_weights():
    # Q = 0 < k - 1: no between-workload variance, so the fixed-effect mean and error
    mean, error = pooled([1.0, 1.1], [0.1, 0.2])
    weights = [1 / 0.1 ** 2, 1 / 0.2 ** 2]
    assert mean == pytest.approx((weights[0] * 1.0 + weights[1] * 1.1) / sum(weights))
    assert error == pytest.approx(math.sqrt(1 / sum(weights)))


def test_a_noisy_workload_counts_by_its_precision():
    mean, error = pooled([2.0, 0.0], [0.05, 1.0])
    assert mean == pytest.approx((400 * 2.0 + 0.0) / 401)
    # Q = 3.99 is above chi-square's 95th percentile: the disagreement widens the error (fixed: 0.05)
    assert error > 0.5
    # a disagreement that Q does not call significant (Q = 1.8) leaves the fixed-effect error
    mean, error = pooled([2.0, 0.66], [0.05, 1.0])
    assert error == pytest.approx(math.sqrt(1 / 401))


def test_two_precise_workloads_that_disagree_count_equally_with_the_disagreement_as_the_error():
    mean, error = pooled([2.0, 0.0], [0.05, 0.05])
    assert mean == pytest.approx(1.0) and error == pytest.approx(1.0, rel=0.01)


def test_chi_square_percentiles():
    assert chi_square_95(1) == pytest.approx(3.841, rel=0.03)
    assert chi_square_95(4) == pytest.approx(9.488, rel=0.01)


def test_exact_references_pool_to_themselves():
    assert pooled([1.0, 1.0], [0.0, 0.0]) == (1.0, 0.0)
    assert pooled([0.5], [0.1]) == (0.5, pytest.approx(0.1))


def test_only_priors_on_the_sgd_scale_are_pooled_into_the_bundled_ones(tmp_path, monkeypatch):
    import fit_priors

    bundled = tmp_path / "priors.yaml"
    monkeypatch.setattr(fit_priors, "RESULTS", tmp_path)
    monkeypatch.setattr(fit_priors, "BUNDLED", bundled)
    (tmp_path / "char_lm_priors.yaml").write_text("scale: adam_sgd\nmethods: {smmf: {quality: 0.8}}\n")
    (tmp_path / "digits_cnn_priors.yaml").write_text("scale: adam_loss\nmethods: {smmf: {quality: 1.02}}\n")
    with pytest.raises(SystemExit, match="not on the SGD scale.*digits_cnn"):
        fit_priors.main()
    assert not bundled.exists()
