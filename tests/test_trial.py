import dataclasses
import math
import os
from types import SimpleNamespace

import pytest
import torch
import yaml

from memplan.errors import MemplanError

from memplan.loaders import load_profile
from memplan.planner import make_plan
from memplan.priors import load_priors
from memplan.training import Schedule
from memplan.trial import (REFERENCE_FAMILY, Arm, Trial, TrialResult, TrialSettings, priors_document, refined_rate,
                           role_shares, run_trial, uniform_state_bytes, write_priors)
from tests.conftest import REPO

TINY = REPO / "tests" / "fixtures" / "tiny_trainable.py"


@pytest.fixture(scope="module")
def trial():
    settings = TrialSettings(schedule=Schedule(steps=12, warmup=1), seeds=2, lr_factors=(0.3, 1.0, 3.0), widen=1, probes=1)
    return run_trial(TINY, methods=["smmf", "sm3:momentum=0", "et2"], settings=settings)


def test_the_trial_sweeps_each_method_and_puts_it_on_the_adam_sgd_scale(trial):
    table = trial.table("adam_sgd").set_index("method")
    assert list(table.index) == ["adam", "sgd", "smmf", "sm3:momentum=0", "et2"]
    assert table.loc["adam", "quality"] == 1.0 and table.loc["sgd", "quality"] == 0.0
    runs = trial.runs_frame()
    for method in table.index:
        swept = runs[(runs["arm"] == method) & (runs["seed"] == 0)]
        assert len(swept) >= 3  # the grid, widened while an edge won
        best = swept.loc[swept["loss"].idxmin(), "lr"]
        assert table.loc[method, "best_lr"] == best
        assert table.loc[method, "seeds"] == 2 and table.loc[method, "quality_se"] is not None
        # the state each run held is the byte model's
        assert set(runs[runs["arm"] == method]["state_bytes"]) == {uniform_state_bytes(trial.profile, method)}
    assert table.loc["smmf", "lr_ratio"] == pytest.approx(table.loc["smmf", "best_lr"] / table.loc["adam", "best_lr"])


def test_probes_measure_every_role_of_the_best_compressed_method(trial):
    probes = trial.probe_table()
    shares = role_shares(trial.profile)
    assert set(probes["role"]) == set(shares) == {"embedding", "matrix", "vector", "head"}
    assert len(set(probes["method"])) == 1
    for row in probes.itertuples():
        assert row.role_quality == pytest.approx(1 - (1 - row.probe_quality) / shares[row.role])


def test_the_priors_file_it_writes_is_what_plan_reads(trial, tmp_path):
    path = write_priors(trial, tmp_path / "priors.yaml", "test run")
    document = yaml.safe_load(path.read_text())
    priors = load_priors(path)
    table = trial.table().set_index("method")
    assert priors.adam_lr == pytest.approx(table.loc["adam", "best_lr"], rel=1e-2)
    smmf = priors.methods["smmf"]
    assert smmf.quality == pytest.approx(table.loc["smmf", "quality"], abs=1e-4)
    assert smmf.lr_ratio == pytest.approx(table.loc["smmf", "lr_ratio"], rel=1e-2) and smmf.std > 0
    assert "et" in document["methods"] and document["methods"]["sm3_no_momentum"]["evidence"].endswith("test run")
    probed = trial.probe_table()["method"].iloc[0]
    assert set(document["methods"][{"smmf": "smmf", "sm3:momentum=0": "sm3_no_momentum", "et2": "et"}[probed]]
               ["roles"]) == {"embedding", "matrix", "vector", "head"}
    # a plan made with these priors scores each parameter with the measured quality of its role
    profile = load_profile(str(TINY))
    plan = make_plan(profile, uniform_state_bytes(profile, "smmf"), methods=["smmf:beta1=0.9"], priors_path=str(path))
    for entry in plan.entries:
        role = next(param.role for param in profile.trainable_params if param.name == entry.name)
        assert entry.quality == pytest.approx(priors.method_quality("smmf", role=role))
    assert plan.learning_rate == priors.adam_lr and plan.lr_ratios[plan.entries[0].method] == smmf.lr_ratio
    # the per-seed qualities behind each number (two seeds here), for paired comparisons
    per_seed = trial.seed_qualities("smmf")
    assert smmf.seeds == pytest.approx([per_seed[0], per_seed[1]], abs=1e-4)
    probe = trial.probe_table().iloc[0]
    role_seeds = [1 - (1 - trial.seed_qualities(probe["arm"])[seed]) / probe["share"] for seed in (0, 1)]
    key = {"smmf": "smmf", "sm3:momentum=0": "sm3_no_momentum", "et2": "et"}[probe["method"]]
    assert priors.methods[key].role_seeds[probe["role"]] == pytest.approx(role_seeds, abs=1e-4)


def test_a_plan_is_trained_beside_the_uniform_methods_that_fit_its_budget(tmp_path):
    profile = load_profile(str(TINY))
    plan = make_plan(profile, uniform_state_bytes(profile, "smmf"), methods=["smmf", "et"])
    settings = TrialSettings(schedule=Schedule(steps=10), probes=0)
    result = run_trial(TINY, methods=["smmf", "et2", "adagrad"], settings=settings, plan=plan)
    table = result.table().set_index("method")
    assert "plan" in table.index and table.loc["plan", "kind"] == "plan"
    assert "adagrad" not in table.index  # its state does not fit the plan's budget
    assert {"adam", "sgd", "smmf", "et2"} <= set(table.index)
    assert table.loc["plan", "state_bytes"] == plan.state_bytes
    assert math.isfinite(table.loc["plan", "loss"])


def test_the_time_limit_stops_cleanly():
    settings = TrialSettings(schedule=Schedule(steps=5), time_limit=0.0)
    result = run_trial(TINY, methods=["smmf"], settings=settings)
    assert not result.complete and len(result.runs) == 0 and "time limit" in result.notes[0]
    with pytest.raises(MemplanError, match="no Adam run finished"):
        priors_document(result, "x")


def test_ratios_of_the_priors_start_the_sweep(tmp_path):
    path = tmp_path / "p.yaml"
    path.write_text("adam_lr: 0.01\nmethods:\n  smmf: {lr_ratio: 2.0}\n")
    settings = TrialSettings(schedule=Schedule(steps=3), lr_factors=(1.0,), widen=0)
    result = run_trial(TINY, methods=["smmf"], settings=settings, priors=load_priors(path))
    runs = result.runs_frame().set_index("arm")
    assert runs.loc["adam", "lr"] == 0.01 and runs.loc["smmf", "lr"] == pytest.approx(0.02)
    assert priors_document(result, "x")["adam_lr"] == 0.01
    assert REFERENCE_FAMILY == "adam"


def test_a_best_rate_at_the_edge_of_the_sweep_is_noted():
    """Rates far below Adam's best: the largest wins, and nothing says it is the best there is but a note."""
    settings = TrialSettings(schedule=Schedule(steps=4), lr_factors=(1e-4, 1e-3), widen=0, probes=0)
    result = run_trial(TINY, methods=["sgd"], settings=settings)
    edge_notes = [note for note in result.notes if "is the largest of 2 tried" in note]
    assert {note.split(":")[0] for note in edge_notes} == {"adam", "sgd"}


def test_widen_must_not_be_negative():
    with pytest.raises(MemplanError, match="--widen"):
        TrialSettings(Schedule(steps=1), widen=-1)


def _parabola(best: float):
    return lambda lr: 2.0 + (math.log(lr) - math.log(best)) ** 2


def test_the_refined_rate_is_the_vertex_of_the_parabola_through_the_best_and_its_neighbours():
    loss = _parabola(0.0123)
    assert refined_rate({lr: loss(lr) for lr in (0.003, 0.009, 0.027)}) == pytest.approx(0.0123)
    # uneven grids too
    assert refined_rate({lr: loss(lr) for lr in (0.001, 0.01, 0.02, 0.5)}) == pytest.approx(0.0123)


def test_no_refined_rate_at_an_edge_past_a_divergence_or_for_a_tiny_move():
    loss = _parabola(0.0123)
    assert refined_rate({lr: loss(lr) for lr in (0.03, 0.09, 0.27)}) is None  # the smallest wins
    assert refined_rate({0.003: math.inf, 0.009: 1.0, 0.027: 2.0}) is None
    assert refined_rate({lr: loss(lr) for lr in (0.00301, 0.0123 * 1.01, 0.0503)}) is None
    assert refined_rate({0.003: 2.0, 0.009: 2.0, 0.027: 2.0}) is None


def test_a_refined_rate_stays_half_way_to_a_neighbour_at_most():
    # a lopsided sweep whose parabola puts the vertex far past the right neighbour's midpoint
    rate = refined_rate({0.001: 3.0, 0.01: 1.0, 0.1: 1.0 + 1e-9})
    assert rate == pytest.approx(math.sqrt(0.01 * 0.1))


def test_a_sweep_runs_once_more_at_the_refined_rate_and_keeps_it_when_it_wins(monkeypatch):
    loss = _parabola(0.0123)
    tried = []

    def fake_run(self, arm, lr, seed):
        tried.append((arm.label, lr, seed))
        return SimpleNamespace(loss=loss(lr))

    monkeypatch.setattr(Trial, "_run", fake_run)
    settings = TrialSettings(schedule=Schedule(steps=2), seeds=2, lr_factors=(1 / 3, 1.0, 3.0), widen=0, probes=0)
    trial = Trial(TINY, None, [], settings)
    trial._sweep_and_seed(Arm("adam", "uniform", "adam"), 0.009)
    assert [lr for _, lr, seed in tried if seed == 0][-1] == pytest.approx(0.0123)
    assert trial.result.best_lr["adam"] == pytest.approx(0.0123)
    assert tried[-1][1:] == (trial.result.best_lr["adam"], 1)  # the other seed trains the refined rate
    tried.clear()
    off = Trial(TINY, None, [], dataclasses.replace(settings, refine=False))
    off._sweep_and_seed(Arm("adam", "uniform", "adam"), 0.009)
    assert len(tried) == 4 and off.result.best_lr["adam"] == pytest.approx(0.009)


def test_a_sweep_on_several_seeds_chooses_the_rate_by_their_mean_loss(monkeypatch):
    """With sweep_seeds=3, every swept rate trains on seeds 0, 1 and 2 and the rate with the lowest
    mean wins, though seed 0 alone favours another; the remaining seeds train the chosen rate."""
    tried = []

    def fake_run(self, arm, lr, seed):
        tried.append((lr, seed))
        # seed 0 is lucky at the larger rate; on average the smaller one is better
        loss = {0.03: [1.0, 2.0, 2.0], 0.01: [1.1, 1.1, 1.1], 0.09: [3.0, 3.0, 3.0], 0.0033: [1.5, 1.5, 1.5]}
        return SimpleNamespace(loss=loss[round(lr, 4)][seed] if seed < 3 else 1.1)

    monkeypatch.setattr(Trial, "_run", fake_run)
    settings = TrialSettings(schedule=Schedule(steps=2), seeds=5, sweep_seeds=3, lr_factors=(1 / 3, 1.0, 3.0),
                             widen=0, refine=False, probes=0)
    trial = Trial(TINY, None, [], settings)
    trial._sweep_and_seed(Arm("adam", "uniform", "adam"), 0.03)
    assert trial.result.best_lr["adam"] == pytest.approx(0.01)
    swept = {(round(lr, 4), seed) for lr, seed in tried[:9]}
    assert swept == {(lr, seed) for lr in (0.01, 0.03, 0.09) for seed in range(3)}
    assert [(round(lr, 4), seed) for lr, seed in tried[9:]] == [(0.01, 3), (0.01, 4)]
    with pytest.raises(MemplanError):
        TrialSettings(schedule=Schedule(steps=2), seeds=2, sweep_seeds=3)


def _references(adam: list[float], sgd: list[float]) -> TrialResult:
    result = TrialResult(source="x", settings=TrialSettings(Schedule(steps=1)), profile=load_profile(str(TINY)))
    for label, losses in (("adam", adam), ("sgd", sgd)):
        result.best_lr[label] = 0.1
        result.runs += [{"arm": label, "kind": "uniform", "seed": seed, "lr": 0.1, "loss": value, "state_bytes": None}
                        for seed, value in enumerate(losses)]
    return result


def test_the_trial_warns_when_the_scale_has_no_unit_or_only_noise():
    assert _references([1.0, 1.1, 1.05], [1.5, 1.6, 1.52]).scale_note() is None
    assert "no unit" in _references([1.0], [0.9]).scale_note()
    noisy = _references([1.0, 1.3, 0.9], [1.2, 1.0, 1.1])  # gaps 0.2, -0.3, 0.2
    unit, error = noisy.scale_unit()
    assert unit == pytest.approx(0.1 / 3) and error is not None and "seed noise" in noisy.scale_note()
    assert _references([1.0], [1.5]).scale_note() is None  # one seed: no spread to judge by
    assert _references([1.0], [1.5]).scale_holds() and not noisy.scale_holds()
    assert not _references([1.0], [0.9]).scale_holds()
    assert _references([1.0], [0.9]).scale_inverted() and not noisy.scale_inverted()


def test_where_the_sgd_scale_has_no_unit_qualities_are_on_adams_loss():
    holds = _references([1.0, 1.1, 1.05], [1.5, 1.6, 1.52])
    assert holds.scale() == "adam_sgd" and holds.ranks_methods()
    level = _references([1.0, 1.2, 1.1], [1.01, 1.18, 1.12])  # SGD within noise of Adam
    assert level.scale() == "adam_loss" and level.ranks_methods()
    level.best_lr["et3"] = 0.1
    level.runs += [{"arm": "et3", "kind": "uniform", "seed": seed, "lr": 0.1, "loss": loss, "state_bytes": None}
                   for seed, loss in enumerate([0.95, 1.14, 1.1])]
    quality, error = level.quality("et3")
    assert quality == pytest.approx((1.05 + 1.05 + 1.0) / 3) and error is not None  # 1 - (L - L_Adam) / L_Adam
    on_sgd, _ = level.quality("et3", "adam_sgd")
    assert on_sgd != pytest.approx(quality)  # the SGD scale is still there to be asked for
    assert level.table().set_index("method").loc["et3", "quality"] == pytest.approx(quality)
    # a loss that is not positive is no unit: the SGD scale stays, and says whether it ranks
    negative = _references([-1.0], [-0.9])
    assert negative.scale() == "adam_sgd" and negative.ranks_methods()
    assert not _references([-1.0], [-1.2]).ranks_methods()


def test_a_priors_file_on_adams_loss_replaces_the_bundled_qualities(tmp_path):
    from memplan.errors import AssumptionWarning, SpecError
    from memplan.planner import plan_search
    from memplan.profile import ModelProfile, ParamSpec
    from memplan.trial import priors_document

    level = _references([1.0, 1.2, 1.1], [1.01, 1.18, 1.12])
    for label, losses in (("smmf", [1.1, 1.3, 1.2]), ("et1", [0.9, 1.1, 1.0]), ("et3", [0.95, 1.15, 1.05])):
        level.best_lr[label] = 0.2
        level.runs += [{"arm": label, "kind": "uniform", "seed": seed, "lr": 0.2, "loss": loss, "state_bytes": None}
                       for seed, loss in enumerate(losses)]
    document = priors_document(level, "test run")
    assert document["scale"] == "adam_loss" and document["memplan_priors"] == 3
    path = tmp_path / "priors.yaml"
    path.write_text(yaml.safe_dump(document))
    priors = load_priors(path)
    bundled = load_priors()
    assert priors.scale == "adam_loss" and bundled.scale == "adam_sgd"
    assert priors.methods["smmf"].quality == pytest.approx(document["methods"]["smmf"]["quality"])
    assert priors.methods["smmf"].lr_ratio == 2.0  # measured here
    # the bundled entries keep their learning-rate ratios and lose their qualities, spreads and roles
    assert priors.methods["adafactor"].quality is None and priors.methods["adafactor"].roles == {}
    assert priors.methods["adafactor"].lr_ratio == bundled.methods["adafactor"].lr_ratio
    assert priors.role_transfer("embedding") == 0.0  # the bundled probes do not speak for this scale
    with pytest.raises(SpecError, match="adam_loss scale"):
        priors.quality("adafactor", {"beta1": None}, (8, 8), None)
    assert [point for point in priors.et_curve] == sorted(priors.et_curve) and len(priors.et_curve) == 2
    # the planner leaves out what the file cannot score, and says so
    profile = ModelProfile("small", "test", (ParamSpec("w", (32, 32), kind="linear"),))
    with pytest.warns(AssumptionWarning, match="left out of the plan.*adafactor"):
        choice = plan_search(profile, 2**20, ["smmf", "et", "adafactor", "adam"], priors=priors)
    assert choice.picks["w"].spec == "et" and choice.picks["w"].layout == (32, 32)  # ET1: the lowest loss here
    with pytest.raises(SpecError, match="none of the methods"):
        plan_search(profile, 2**20, ["adafactor"], priors=priors)


def test_jobs_in_worker_processes_train_the_same_runs_in_the_same_order():
    settings = TrialSettings(schedule=Schedule(steps=6, warmup=1), seeds=2, lr_factors=(0.3, 1.0, 3.0), widen=1,
                             probes=1)
    threads = torch.get_num_threads()
    torch.set_num_threads(2)  # each of two workers gets one thread: so must the run alone, for equal sums
    try:
        shared = run_trial(TINY, methods=["smmf", "et2", "adagrad"], settings=dataclasses.replace(settings, jobs=2))
        torch.set_num_threads(1)
        alone = run_trial(TINY, methods=["smmf", "et2", "adagrad"], settings=settings)
    finally:
        torch.set_num_threads(threads)
    columns = ["arm", "kind", "spec", "role", "seed", "lr", "loss", "diverged", "steps_run", "state_bytes"]
    assert alone.runs_frame()[columns].equals(shared.runs_frame()[columns])
    assert alone.best_lr == shared.best_lr and alone.notes == shared.notes
    assert len(shared.probe_table()) == 4


def test_the_worker_setup_runs_in_every_worker_process(tmp_path, monkeypatch):
    from tests.fixtures.worker_marks import mark

    monkeypatch.setenv("MEMPLAN_TEST_WORKER_MARKS", str(tmp_path))
    settings = TrialSettings(schedule=Schedule(steps=3), lr_factors=(1.0,), widen=0, probes=0, jobs=2)
    run_trial(TINY, methods=["smmf", "et2", "adagrad"], settings=settings, worker_setup=mark)
    marks = {int(path.name) for path in tmp_path.iterdir()}
    assert len(marks) == 2 and os.getpid() not in marks


def test_jobs_stop_at_the_time_limit_too():
    settings = TrialSettings(schedule=Schedule(steps=200), lr_factors=(1.0,), widen=0, probes=0, jobs=2,
                             time_limit=0.5)
    result = run_trial(TINY, methods=["smmf", "et2", "adagrad", "sm3"], settings=settings)
    assert not result.complete and "time limit" in result.notes[-1]
    assert len(result.runs) < 6  # adam, sgd and four methods at one rate each, had it not stopped


def test_jobs_must_be_positive_and_on_the_cpu():
    with pytest.raises(MemplanError, match="--jobs must be at least 1"):
        TrialSettings(Schedule(steps=1), jobs=0)
    with pytest.raises(MemplanError, match="--device cpu"):
        TrialSettings(Schedule(steps=1), jobs=2, device="cuda")
