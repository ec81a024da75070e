"""memplan's optimizers on 2 ranks (gloo on CPU): FSDP2's exact sharded step against single-process
training, communication, per-rank state bytes, local sharding, refusals, DDP, ZeRO-1 and DCP.

The ranks are spawned once for the module (see distributed_worker.py, which runs every check);
each test asserts on its check's results from both ranks.
"""

from __future__ import annotations

import pytest
import torch.distributed as dist

from memplan.optim.sharding import all_gather_function
from tests.optim.distributed_worker import EXACT_SPECS, REFUSED_SPECS, RESHARD_SPECS, spawn_all

pytestmark = pytest.mark.skipif(not dist.is_available() or not dist.is_gloo_available(),
                                reason="needs torch.distributed with gloo")

ALL_GATHER = all_gather_function().__name__
"""all_gather_single (torch >= 2.13), else all_gather_into_tensor."""

MEMPLAN_SPECS = tuple(spec for spec in EXACT_SPECS if spec.split(":")[0] in {"smmf", "et1", "et2", "et3", "et_inf",
                                                                                "sm3"})


@pytest.fixture(scope="module")
def results() -> dict:
    return spawn_all()


def ranks(results: dict, name: str) -> list:
    per_rank = results[name]
    for result in per_rank:
        assert "error" not in result, result.get("error")
    return per_rank


@pytest.mark.parametrize("spec", EXACT_SPECS)
def test_fsdp2_steps_equal_single_process_steps(results, spec):
    """Ten steps under FSDP2 (dim 0 of 5 and 7 over 2 ranks; a (1, 5) weight and a (1,) bias that
    leave rank 1 empty) end allclose (1e-6) to ten single-process steps, on both ranks."""
    for result in ranks(results, f"exact/{spec}"):
        assert result["difference"] <= 1e-6


@pytest.mark.parametrize("spec", MEMPLAN_SPECS)
def test_one_packed_all_reduce_per_step(results, spec):
    """All parameters' partial statistics travel in one collective, exactly as large as the
    replicated state (factors, accumulators), not the parameters: torch.distributed sees one
    all-reduce in every step (SMMF's and ET's sums, SM3's maxima alike)."""
    for result in ranks(results, f"exact/{spec}"):
        collectives, reduced_bytes = result["communication"]
        assert collectives == 1
        assert reduced_bytes == result["replicated"] > 0
        assert result["collectives"] == [["all_reduce"]] * 10


@pytest.mark.parametrize("spec", EXACT_SPECS)
def test_the_predicted_collective_is_the_one_a_step_makes(results, spec):
    """memplan.sharding's prediction (which the time model's collective term reads): as many
    collectives and bytes as the step moved, an all-gather exactly when the step made one."""
    for result in ranks(results, f"exact/{spec}"):
        collectives, packed_bytes, gathered = result["predicted_communication"]
        assert [collectives, packed_bytes] == list(result["communication"] or (0, 0))
        assert result["collectives"][-1] == ([ALL_GATHER] if gathered else ["all_reduce"]
                                             if collectives else [])


@pytest.mark.parametrize("spec", ("adam", "sgd:momentum=0.9"))
def test_elementwise_methods_need_no_collective(results, spec):
    for result in ranks(results, f"exact/{spec}"):
        assert result["collectives"] == [[]] * 10


@pytest.mark.parametrize("spec", EXACT_SPECS)
def test_per_rank_state_bytes_equal_the_prediction(results, spec):
    for result in ranks(results, f"exact/{spec}"):
        assert result["measured"] == result["predicted"]


def test_hsdp_reduces_over_the_shard_dimension(results):
    for result in ranks(results, "hsdp"):
        assert result["placements"] == ["R", "S(0)"]   # str() of Replicate() and Shard(0)
        assert result["difference"] <= 1e-6 and result["communication"][0] == 1
        assert result["collectives"] == [["all_reduce"]] * 10
        assert result["over_shard_group"] == [True] * 10   # the shard dimension's group, not the world


def test_sums_and_maxima_of_several_dtypes_take_one_all_gather(results):
    for result in ranks(results, "mixed_reductions"):
        assert result["calls"] == [ALL_GATHER] and result["collectives"] == 1
        assert result["bytes"] == result["expected_bytes"] == 5 * 4 + 3 * 2 + 6 * 4 + 7
        assert result["equal"] == [True] * 4


def test_mixed_plan_is_exact_with_one_collective_per_step(results):
    """smmf + et2 + sm3 + adam through from_plan: sums (smmf, et2) and maxima (sm3) travel in one
    all-gather, reduced on each rank."""
    for result in ranks(results, "plan"):
        assert result["difference"] <= 1e-6
        assert result["communication"][0] == 1
        assert result["collectives"] == [[ALL_GATHER]] * 10
        assert result["predicted_communication"] == [*result["communication"], True]


def test_local_sharding_trains_each_shard_alone(results):
    for rank, result in enumerate(ranks(results, "local")):
        assert result["loss_fell"] and result["moved"]
        assert result["communication"] == [0, 0]
        assert result["local_shape"] == [[4, 3, 4], [3, 3, 4]][rank]
        assert result["layout"] == [[8, 6], [6, 6]][rank]   # the shard's own square matricization


def test_baselines_that_cannot_step_dtensors_are_refused_naming_an_alternative(results):
    for result in ranks(results, "refusal"):
        for spec in REFUSED_SPECS:
            assert result[spec] is not None, spec
            assert "cannot step sharded (DTensor) parameters; use smmf" in result[spec]


def test_ddp_trains_like_single_process(results):
    for result in ranks(results, "ddp"):
        assert result["difference"] == 0.0


def test_zero_redundancy_optimizer_with_smmf(results):
    """ZeRO-1 trains like one process; each rank keeps the state of the parameters that
    memplan.sharding.zero1_owners (the per-rank planner's model) assigns it."""
    per_rank = ranks(results, "zero")
    for result in per_rank:
        assert result["difference"] == 0.0
        assert result["owned"] == result["predicted_owned"]
    assert sorted(sum((result["owned"] for result in per_rank), [])) == list(range(5))


def test_a_per_rank_plan_predicts_every_ranks_state_bytes_and_checks_the_world_size(results):
    for result in ranks(results, "plan_per_rank"):
        assert result["measured"] == result["predicted"]
        assert "plan made for fsdp2 over 4 ranks, but this job runs fsdp2 over 2 ranks" in result["refusal"]


def test_dcp_save_and_resume_is_bit_identical(results):
    for result in ranks(results, "checkpoint"):
        assert result == {spec: True for spec in result} and len(result) == 4


@pytest.mark.parametrize("loaded_by", ("reshard_from_1", "reshard_from_2"))
def test_dcp_checkpoint_loads_on_another_world_size(results, loaded_by):
    """Saved after 5 steps on 1 rank (FSDP2 over a mesh of 1) and loaded on 2, or the reverse, then
    5 more steps: allclose (1e-6) to the uninterrupted run on the saving world size. The sharded
    1-bit signs (chunks of 18 elements: not whole bytes) are saved one bool per element."""
    for result in ranks(results, loaded_by):
        assert set(result) == set(RESHARD_SPECS)
        for spec, difference in result.items():
            assert difference <= 1e-6, spec
