import pytest
from hypothesis import given, settings, strategies as st

from memplan.errors import BudgetError
from memplan.loaders import load_profile
from memplan.mckp import Option
from memplan.methods import PLAN_METHODS, param_state
from memplan.priors import load_priors
from memplan.profile import ModelProfile, ParamSpec
from memplan.planner import make_plan, plan_search, traffic_seconds
from memplan.methods import as_spec
from memplan.search import candidates_for, expand_methods, prune, within_noise
from tests.test_mckp import brute_force
from tests.conftest import PAPER_PRIORS

SHAPES = [(7,), (64,), (768,), (30, 20), (64, 3, 3, 3), (128, 64, 1, 1), (256, 512), (1000, 37), ()]


@st.composite
def profiles(draw):
    count = draw(st.integers(min_value=1, max_value=12))
    params = [ParamSpec(f"p{i}", draw(st.sampled_from(SHAPES)), kind=draw(st.sampled_from(["linear", "bias", "conv"])))
              for i in range(count)]
    return ModelProfile("random", "test", tuple(params))


@settings(max_examples=60, deadline=None)
@given(profiles(), st.integers(min_value=0, max_value=3_000_000))
def test_the_budget_is_never_exceeded_and_bytes_are_the_byte_models(profile, budget):
    choice = plan_search(profile, budget)
    assert choice.state_bytes <= budget
    for spec in profile.trainable_params:
        candidate = choice.picks[spec.name]
        assert candidate.state_bytes == param_state(candidate.spec, spec.shape, spec.dtype, candidate.layout).state_bytes
    assert choice.objective <= choice.bound + 1e-12


def test_real_candidates_on_a_small_model_match_brute_force():
    profile = ModelProfile("small", "test", (ParamSpec("a", (64, 32)), ParamSpec("b", (32,)), ParamSpec("c", (16, 3, 3, 3)),
                                            ParamSpec("d", (10, 64))))
    priors = load_priors()
    total = sum(p.numel for p in profile.params)
    groups = []
    for spec in profile.params:
        weight = spec.numel / total
        # as the planner sees them: each quality capped by a cheaper one within noise of it
        front = prune(within_noise(candidates_for(spec, expand_methods(PLAN_METHODS), priors)),
                      lambda c, w=weight: w * c.quality)
        groups.append([Option(c.state_bytes, spec.numel / total * c.quality, c) for c in front])
    for budget in (100, 2000, 9000, 30000, 10**6):
        choice = plan_search(profile, budget)
        assert choice.objective >= brute_force(groups, budget) * 0.99 - 1e-12


def test_dominated_candidates_are_pruned_and_shapes_share_lists():
    choice = plan_search(load_profile("llama-7b"), 2**30)
    assert choice.shared_lists <= 8          # 291 tensors, a handful of distinct shapes
    front = prune(candidates_for(ParamSpec("w", (256, 512)), expand_methods(PLAN_METHODS), load_priors()),
                  lambda c: c.quality)
    assert [c.state_bytes for c in front] == sorted(c.state_bytes for c in front)
    assert all(b.quality > a.quality for a, b in zip(front, front[1:]))


def test_candidates_cover_every_layout_family():
    found = candidates_for(ParamSpec("w", (64, 3, 3, 3)), expand_methods(PLAN_METHODS), load_priors())
    layouts = {(c.spec, c.layout) for c in found}
    assert ("et", (64, 3, 9)) in layouts and ("et", (8, 8, 3, 9)) in layouts          # ET1 and a deeper split
    assert ("smmf", (48, 36)) in layouts and ("smmf", (64, 27)) in layouts             # square and natural
    assert ("sm3", (64, 3, 3, 3)) in layouts and ("sm3:momentum=0", (64, 3, 9)) in layouts
    assert {("adam", None), ("sgd", None), ("et_inf", None), ("adafactor:beta1=0.9", None)} <= layouts


def test_infeasible_budgets_name_the_smallest_size_and_the_heaviest_parameters():
    with pytest.raises(BudgetError, match=r"smallest achievable state is 581,392 bytes, dominated by "
                                          r"transformer.wte.weight") as error:
        plan_search(load_profile("gpt2"), 1000, methods=["adam", "smmf"])
    assert error.value.minimum_bytes == 581_392 and error.value.exit_code == 3


def test_gpt2_at_64_mib_fits_and_spends_the_budget_sensibly():
    choice = plan_search(load_profile("gpt2"), 64 * 2**20, priors=load_priors(PAPER_PRIORS))
    assert 0.9 * 64 * 2**20 <= choice.state_bytes <= 64 * 2**20
    assert all(c.spec != "sgd" for c in choice.picks.values())
    left = 64 * 2**20 - choice.state_bytes
    for spec in load_profile("gpt2").trainable_params:  # no single upgrade still fits and helps
        current = choice.picks[spec.name]
        for other in candidates_for(spec, expand_methods(PLAN_METHODS), load_priors(PAPER_PRIORS)):
            assert not (other.quality > current.quality and other.state_bytes - current.state_bytes <= left)


def test_a_time_weight_trades_quality_for_traffic():
    profile = load_profile("resnet18-cifar")
    paper = load_priors(PAPER_PRIORS)
    slow = plan_search(profile, 2**30, priors=paper, seconds=traffic_seconds())
    fast = plan_search(profile, 2**30, priors=paper, time_weight=1.0, seconds=traffic_seconds())
    traffic = lambda choice: sum(c.bytes_moved for c in choice.picks.values())
    assert traffic(fast) < traffic(slow) and fast.quality <= slow.quality


def test_make_plan_writes_the_objective_and_priors(tmp_path):
    priors = tmp_path / "priors.yaml"
    priors.write_text("methods:\n  smmf: {quality: 0.5}\n")
    plan = make_plan(load_profile("gpt2"), 64 * 2**20, priors_path=str(priors))
    assert plan.priors == str(priors)
    assert not any(entry.method == "smmf" for entry in plan.entries)


def test_a_candidate_within_noise_of_a_cheaper_one_loses_to_it():
    from memplan.search import Candidate, prune, within_noise

    def candidate(spec, state_bytes, quality, spread):
        return Candidate(spec, None, state_bytes, 0, "none", "float32", quality, quality_std=spread)

    cheap, dear, clearly_better = candidate("a", 10, 0.80, 0.05), candidate("b", 20, 0.84, 0.05), \
        candidate("c", 40, 0.95, 0.01)
    settled = {c.spec: c.quality for c in within_noise([dear, clearly_better, cheap])}
    assert settled == {"a": 0.80, "b": 0.80, "c": 0.95}
    front = prune(within_noise([cheap, dear, clearly_better]), lambda c: c.quality)
    assert [c.spec for c in front] == ["a", "c"]
    # without a recorded spread nothing changes: a better quality is a better quality
    exact = [candidate("a", 10, 0.80, 0.0), candidate("b", 20, 0.84, 0.0)]
    assert [c.quality for c in within_noise(exact)] == [0.80, 0.84]


def test_measured_noise_changes_the_plan(tmp_path):
    from memplan.loaders import load_profile
    from memplan.planner import make_plan

    profile = load_profile("gpt2")
    quiet, noisy = tmp_path / "quiet.yaml", tmp_path / "noisy.yaml"
    quiet.write_text("methods:\n  smmf: {quality: 0.9, roles: {}}\n  smmf_no_momentum: {quality: 0.88, roles: {}}\n")
    noisy.write_text("methods:\n  smmf: {quality: 0.9, std: 0.03, roles: {}}\n  smmf_no_momentum: {quality: 0.88, std: 0.03, roles: {}}\n")
    budget = 64 * 2**20
    precise = make_plan(profile, budget, methods=["smmf"], priors_path=str(quiet))
    uncertain = make_plan(profile, budget, methods=["smmf"], priors_path=str(noisy))
    assert any(entry.method == "smmf" and entry.layout is not None for entry in precise.entries)
    # within noise of each other, the cheaper state (no first moment) wins wherever the layouts compete
    assert uncertain.state_bytes < precise.state_bytes


def test_a_cheaper_candidate_measured_less_precisely_does_not_cap_a_precise_one():
    from memplan.search import Candidate, within_noise

    noisy_cheap = Candidate("a", None, 10, 0, "none", "float32", -0.8, quality_std=5.0)
    precise = Candidate("b", None, 20, 0, "none", "float32", 2.4, quality_std=0.1)
    assert [c.quality for c in within_noise([noisy_cheap, precise])] == [-0.8, 2.4]


def test_a_head_shaped_like_a_hidden_matrix_is_scored_by_its_own_role(tmp_path):
    # the same shape, dtype and kind: one candidate list would give the head the matrices' choice
    profile = ModelProfile("twins", "test", (ParamSpec("body.0.weight", (64, 64), kind="linear"),
                                             ParamSpec("head.weight", (64, 64), kind="linear")))
    assert [param.role for param in profile.params] == ["matrix", "head"]
    path = tmp_path / "roles.yaml"
    path.write_text("methods:\n  adafactor: {quality: 0.9, roles: {head: 0.1}}\n  smmf: {quality: 0.5}\n")
    choice = plan_search(profile, 2**20, ["adafactor:beta1=none", "smmf:beta1=0.9"], priors=load_priors(path))
    assert choice.picks["body.0.weight"].spec.startswith("adafactor")
    assert choice.picks["head.weight"].spec.startswith("smmf")


def test_methods_measured_on_the_same_seeds_are_compared_by_their_paired_difference():
    from memplan.search import Candidate, difference_se, within_noise

    def candidate(spec, state_bytes, quality, spread, seeds=()):
        return Candidate(spec, None, state_bytes, 0, "none", "float32", quality, quality_std=spread,
                         quality_seeds=seeds)

    # each seed's luck moves both alike: apart by 0.03 on every seed, though each spreads by 0.05
    cheap_seeds, dear_seeds = (0.90, 1.00, 1.10, 0.95), (0.93, 1.03, 1.13, 0.98)
    cheap = candidate("a", 10, 0.9875, 0.045, cheap_seeds)
    dear = candidate("b", 20, 1.0175, 0.045, dear_seeds)
    assert difference_se(dear, cheap) == pytest.approx(0.0, abs=1e-12)
    assert [c.quality for c in within_noise([cheap, dear])] == [0.9875, 1.0175]  # a real difference
    # without the seeds the same numbers are within noise, and the dearer one is capped
    unpaired = [candidate("a", 10, 0.9875, 0.045), candidate("b", 20, 1.0175, 0.045)]
    assert difference_se(*unpaired) == pytest.approx(0.045 * 2 ** 0.5)
    assert [c.quality for c in within_noise(unpaired)] == [0.9875, 0.9875]
    # seeds of another count are not paired
    assert difference_se(candidate("b", 20, 1.0, 0.045, dear_seeds[:3]), cheap) == pytest.approx(0.045 * 2 ** 0.5)


def test_per_seed_qualities_follow_the_role_and_the_et_curve(tmp_path):
    path = tmp_path / "seeded.yaml"
    path.write_text("methods:\n"
                    "  smmf: {quality: 0.8, std: 0.1, seeds: [0.7, 0.9], roles: {embedding: {quality: 0.5, seeds: [0.4, 0.6]}}}\n"
                    "  adafactor: {quality: 1.0, seeds: [0.95, 1.05]}\n"
                    "extreme_tensoring:\n"
                    "- {depth: 1, quality: 0.6, seeds: [0.5, 0.7]}\n"
                    "- {depth: 3, quality: 0.2, seeds: [0.1, 0.3]}\n")
    priors = load_priors(path)
    assert priors.quality_seeds("smmf") == (0.7, 0.9)
    assert priors.quality_seeds("smmf", "embedding") == (0.4, 0.6)
    # an unprobed role moves the seeds as it moves the quality
    shift = priors.role_transfer("embedding")
    assert shift < 0 and priors.quality_seeds("adafactor", "embedding") == pytest.approx((0.95 + shift, 1.05 + shift))
    assert priors.depth_seeds(2.0) == pytest.approx((0.3, 0.5)) and priors.depth_seeds(5.0) == pytest.approx((0.1, 0.3))
    param = ParamSpec("w", (8, 8), kind="linear")
    found = {(c.spec, c.layout): c for c in candidates_for(param, [as_spec("smmf:beta1=0.9"), as_spec("et")], priors)}
    assert found["smmf:beta1=0.9", (8, 8)].quality_seeds == (0.7, 0.9)
    assert found["et", (8, 8)].quality_seeds == pytest.approx((0.5, 0.7))  # the natural layout: depth 1
    assert found["et", (2, 2, 2, 2, 2, 2)].quality_seeds == pytest.approx((0.1, 0.3))  # depth 3
