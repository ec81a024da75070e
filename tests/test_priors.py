import pytest

from memplan.errors import ProfileError
from memplan.priors import load_priors


def test_bundled_priors_are_on_the_adam_sgd_scale_and_keep_their_structure():
    priors = load_priors()
    assert priors.quality("adam", {}, (10, 10), None) == 1.0
    assert priors.quality("sgd", {"momentum": 0.0}, (10, 10), None) == 0.0
    assert priors.adam_lr is None  # model-independent: plans start from Adam's default rate
    (low, low_quality), (high, high_quality) = priors.et_curve[:2]
    assert priors.depth_quality((low + high) / 2) == pytest.approx((low_quality + high_quality) / 2)
    assert priors.quality("et", {}, (64, 64, 3, 3), (64, 64, 9)) == priors.depth_quality(1.0)
    for key, entry in priors.methods.items():
        assert entry.lr_ratio is None or entry.lr_ratio > 0, key


def test_a_format_1_file_still_reads(tmp_path):
    path = tmp_path / "old.yaml"
    path.write_text("memplan_priors: 1\nmethods:\n  adagrad: {quality: 0.7, evidence: a paper}\n")
    priors = load_priors(path)
    assert priors.methods["adagrad"].quality == 0.7  # the bundled lr_ratio stays: only the fields given change
    assert priors.methods["adagrad"].lr_ratio == load_priors().methods["adagrad"].lr_ratio


def test_a_measured_quality_drops_the_bundled_spread_and_roles_it_replaces(tmp_path):
    bundled = load_priors().methods["adafactor"]
    assert bundled.roles and bundled.std > 0  # the bundled entry was probed
    path = tmp_path / "own.yaml"
    path.write_text("methods:\n  adafactor: {quality: 1.05}\n  smmf_no_momentum: {lr_ratio: 3.0}\n")
    priors = load_priors(path)
    own = priors.methods["adafactor"]
    assert own.quality == 1.05 and own.roles == {} and own.std == 0.0 and own.lr_ratio == bundled.lr_ratio
    # its bundled embedding probe is gone: the role moves it only as it moves any unprobed method
    assert priors.quality("adafactor", {"beta1": None}, (10, 10), (10, 10), role="embedding") == pytest.approx(
        1.05 + priors.role_transfer("embedding"))
    assert priors.quality("adafactor", {"beta1": None}, (10, 10), (10, 10)) == 1.05
    # an entry without a quality of its own keeps the bundled measurement whole
    kept, bundled_smmf = priors.methods["smmf_no_momentum"], load_priors().methods["smmf_no_momentum"]
    assert kept.roles == bundled_smmf.roles != {} and kept.quality == bundled_smmf.quality and kept.lr_ratio == 3.0


def test_measured_entries_give_roles_spreads_and_ratios(tmp_path):
    path = tmp_path / "measured.yaml"
    path.write_text("adam_lr: 0.003\nmethods:\n"
                    "  smmf: {quality: 0.8, std: 0.05, lr_ratio: 2.5, roles: {embedding: {quality: 0.2, std: 0.1}, "
                    "vector: 0.4}}\n"
                    "  et: {quality: 0.5, roles: {matrix: 0.3}}\n")
    priors = load_priors(path)
    assert priors.adam_lr == 0.003
    assert priors.quality("smmf", {"beta1": 0.9}, (10, 10), (10, 10)) == 0.8
    assert priors.quality("smmf", {"beta1": 0.9}, (10, 10), (10, 10), role="embedding") == 0.2
    assert priors.quality("smmf", {"beta1": 0.9}, (10,), (2, 5), role="vector") == 0.4
    assert priors.quality("smmf", {"beta1": 0.9}, (10, 10), (10, 10), role="matrix") == 0.8  # not probed
    assert priors.quality_std("smmf", "embedding") == 0.1 and priors.quality_std("smmf") == 0.05
    assert priors.lr_ratio("smmf") == 2.5 and priors.lr_ratio("adam") == 1.0
    # ET takes its quality from the depth curve, moved by what a role measured against the family's entry
    curve = priors.depth_quality(1.0)
    assert priors.quality("et", {}, (8, 8), (8, 8), role="matrix") == pytest.approx(curve - 0.2)
    assert priors.quality("et", {}, (8, 8), (8, 8), role="head") == curve
    path.write_text("methods:\n  smmf: {roles: {everything: 0.5}}\n")
    with pytest.raises(ProfileError, match="methods.smmf.roles.everything: unknown key"):
        load_priors(path)
    path.write_text("methods:\n  smmf: {lr_ratio: 0}\n")
    with pytest.raises(ProfileError, match="methods.smmf.lr_ratio: expected a number > 0"):
        load_priors(path)


def _bundled_roles_dropped(*own: str) -> str:
    """Priors-file lines that give each bundled method with per-role qualities, other than the
    ``own`` ones a test writes itself, its quality again, which drops its roles: the test's own
    probes then speak alone for every role."""
    return "".join(f"  {name}: {{quality: {entry.quality}}}\n"
                   for name, entry in load_priors().methods.items() if entry.roles and name not in own)


def test_a_method_not_probed_on_a_role_takes_the_loss_the_probed_methods_measured_there(tmp_path):
    path = tmp_path / "probed.yaml"
    # quality given: the bundled roles are dropped, so only these probes speak for each role
    path.write_text("methods:\n" + _bundled_roles_dropped("smmf_no_momentum", "adamw4bit", "adafactor", "et") +
                    "  smmf_no_momentum: {quality: 1.2, roles: {embedding: 0.8, matrix: {quality: 1.5, std: 0.1}}}\n"
                    "  adamw4bit: {quality: 1.0, roles: {embedding: 0.9, matrix: 0.9}}\n"
                    "  adafactor: {quality: 1.0}\n"
                    "  et: {quality: 0.5}\n")
    priors = load_priors(path)
    assert priors.role_transfer("embedding") == pytest.approx(-0.25)  # mean of -0.4 and -0.1
    assert priors.role_transfer("matrix") == 0.0  # the probes gained on average: nothing is credited
    assert priors.role_transfer("head") == 0.0 and priors.role_transfer(None) == 0.0  # nothing probed
    assert priors.quality("adafactor", {"beta1": None}, (10, 10), None, role="embedding") == pytest.approx(0.75)
    assert priors.quality("adafactor", {"beta1": None}, (10, 10), None, role="matrix") == 1.0
    assert priors.quality("adafactor", {"beta1": None}, (10, 10), None) == 1.0
    # a probed method keeps its own measurement, and its spread
    assert priors.quality("smmf", {"beta1": None}, (10, 10), (10, 10), role="embedding") == 0.8
    assert priors.quality_std("smmf_no_momentum", "matrix") == 0.1
    # ET's curve moves the same way; Adam is the scale's reference and moves on no role
    curve = priors.depth_quality(1.0)
    assert priors.quality("et", {}, (8, 8), (8, 8), role="embedding") == pytest.approx(curve - 0.25)
    assert priors.quality("adam", {}, (10, 10), None, role="embedding") == 1.0


def test_an_unprobed_method_does_not_take_a_role_on_its_whole_model_quality(tmp_path):
    """Adafactor, probed nowhere, beat SMMF's measured embedding quality on its uniform quality alone
    and lost the plan 0.2 nats there (benchmarks/RESULTS.md, char_lm with rates over 3 seeds)."""
    from memplan.loaders import load_profile
    from memplan.planner import make_plan

    path = tmp_path / "measured.yaml"
    path.write_text("methods:\n" + _bundled_roles_dropped("smmf_no_momentum", "adamw4bit", "adafactor") +
                    "  smmf_no_momentum: {quality: 1.18, roles: {embedding: 0.88}}\n"
                    "  adamw4bit: {quality: 1.01, roles: {embedding: 1.0}}\n"
                    "  adafactor: {quality: 0.98}\n")
    plan = make_plan(load_profile("gpt2"), 64 * 2**20, methods=["adafactor", "smmf"], priors_path=str(path))
    chosen = {entry.name: entry.method for entry in plan.entries}
    # 0.88 measured, or SMMF with momentum moved by the probes' mean loss there, beats 0.98 - 0.16 guessed
    assert chosen["transformer.wte.weight"].startswith("smmf")
    assert "adafactor" not in {chosen[name] for name in chosen if ".h." in name and name.endswith("attn.weight")}


def test_calibrated_quality_falls_with_distortion():
    priors = load_priors()
    assert priors.calibrated_quality("full", 0.0) == 1.0
    assert priors.calibrated_quality("none", 0.0) < 1.0
    assert priors.calibrated_quality("full", 0.5) < priors.calibrated_quality("full", 0.1)


def test_user_overrides_and_errors(tmp_path):
    path = tmp_path / "p.yaml"
    path.write_text("methods:\n  adagrad: 0.9\ncalibrated:\n  no_momentum: 0.5\n")
    priors = load_priors(path)
    assert priors.methods["adagrad"].quality == 0.9 and priors.calibrated["no_momentum"] == 0.5
    assert priors.methods["adam"].quality == 1.0
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
