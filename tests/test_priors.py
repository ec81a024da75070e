import pytest

from memplan.errors import ProfileError
from memplan.priors import load_priors


def test_bundled_priors_follow_the_et_paper_numbers():
    priors = load_priors()
    assert priors.quality("adam", {}, (10, 10), None) == 1.0
    assert priors.depth_quality(1.0) == pytest.approx((49.80 - 39.84) / (49.80 - 38.47), abs=1e-3)
    assert priors.depth_quality(2.0) == pytest.approx((49.80 - 42.10) / (49.80 - 38.47), abs=1e-3)
    assert priors.depth_quality(3.5) == pytest.approx((49.80 - 45.19) / (49.80 - 38.47), abs=1e-3)
    assert priors.methods["adagrad"] == pytest.approx((49.80 - 41.18) / (49.80 - 38.47), abs=1e-3)
    assert priors.depth_quality(1.5) == pytest.approx((priors.depth_quality(1) + priors.depth_quality(2)) / 2)
    assert priors.depth_quality(100) == priors.quality("et_inf", {}, (3,), None)
    assert priors.quality("et", {}, (64, 64, 3, 3), (64, 64, 9)) == priors.depth_quality(1.0)
    assert priors.quality("smmf", {"beta1": None}, (3, 3), (3, 3)) < priors.quality("smmf", {"beta1": 0.9}, (3, 3), (3, 3))


def test_calibrated_quality_falls_with_distortion():
    priors = load_priors()
    assert priors.calibrated_quality("full", 0.0) == 1.0
    assert priors.calibrated_quality("none", 0.0) < 1.0
    assert priors.calibrated_quality("full", 0.5) < priors.calibrated_quality("full", 0.1)


def test_user_overrides_and_errors(tmp_path):
    path = tmp_path / "p.yaml"
    path.write_text("methods:\n  adagrad: 0.9\ncalibrated:\n  no_momentum: 0.5\n")
    priors = load_priors(path)
    assert priors.methods["adagrad"] == 0.9 and priors.calibrated["no_momentum"] == 0.5
    assert priors.methods["adam"] == 1.0
    path.write_text("methods:\n  lion: 0.9\n")
    with pytest.raises(ProfileError, match=r"p.yaml: methods.lion: unknown key \(valid: adafactor, "):
        load_priors(path)
    path.write_text("extreme_tensoring: [{depth: 1, quality: 0.5}]\n")
    with pytest.raises(ProfileError, match="at least two points"):
        load_priors(path)
    with pytest.raises(ProfileError, match="cannot read"):
        load_priors(tmp_path / "missing.yaml")


def test_a_mistyped_value_in_a_hand_edited_priors_file_is_one_clear_error(tmp_path):
    path = tmp_path / "p.yaml"
    path.write_text("methods:\n  adagrad: high\n")
    with pytest.raises(ProfileError) as error:
        load_priors(path)
    assert str(error.value) == f"{path}: methods.adagrad: expected a number or a mapping, got 'high'"
    path.write_text("methods:\n  adagrad: {quality: high}\ncalibrated: {momentum: 1, slope: 2}\n"
                    "extreme_tensoring: [{depth: 1, quality: 0.5}, {depth: 2}]\n")
    with pytest.raises(ProfileError) as error:
        load_priors(path)
    assert str(error.value) == (
        f"{path}: 3 problems: methods.adagrad.quality: expected a number, got 'high'; "
        "calibrated.slope: unknown key (valid: distortion_scale, momentum, no_momentum); "
        "extreme_tensoring[1].quality: missing, expected a number")
