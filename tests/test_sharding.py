"""memplan/sharding.py: what each rank holds, against torch's own sharding rules, and per-rank plans."""

import math

import pytest
import torch
from hypothesis import given, settings, strategies as st

from memplan.errors import BudgetError, SpecError
from memplan.loaders import load_profile
from memplan.methods import param_state
from memplan.plan import Plan, PlanError
from memplan.planner import make_plan
from memplan.sharding import (Sharding, StepCommunication, local_shape, rank_state_tensors, row_range,
                              zero1_owners)
from tests.conftest import PAPER_PRIORS


@settings(max_examples=200, deadline=None)
@given(st.integers(min_value=0, max_value=50), st.integers(min_value=1, max_value=9))
def test_row_ranges_are_torch_chunks_padded_to_a_multiple_of_the_shard_count(dim0, shards):
    """FSDP2's Shard(0) follows torch.chunk: chunks of ceil(d0 / N) rows, trailing ranks empty."""
    chunks = torch.arange(dim0).chunk(shards) if dim0 else ()
    for rank in range(shards):
        start, stop = row_range(dim0, shards, rank)
        expected = chunks[rank].tolist() if rank < len(chunks) else []
        assert list(range(start, stop)) == expected


def test_rank_tensors_shard_per_element_state_and_replicate_factors():
    shape = (5, 6)   # SMMF views it as 6 x 5; rank 0 holds rows 0..2 of dim 0 = elements 0..17
    tensors = param_state("smmf", shape).tensors
    rank0, rank1 = (rank_state_tensors(tensors, shape, 2, rank) for rank in (0, 1))
    by_key = {tensor.key: tensor for tensor in rank0}
    assert by_key["row_v"].shape == (6,) and by_key["col_m"].shape == (5,)
    assert by_key["sign"].shape == (math.ceil(3 * 6 / 8),)   # a full chunk's bits on every rank
    assert {tensor.key: tensor.shape for tensor in rank1}["sign"] == (3,)
    momentum = param_state("sm3:momentum=0.9", shape).tensors
    assert {t.key: t.shape for t in rank_state_tensors(momentum, shape, 2, 1)}["momentum_buffer"] == (2, 6)
    assert rank_state_tensors(tensors, (), 2, 1) == tensors   # a scalar is never split
    assert local_shape((1, 5), row_range(1, 2, 1)) == (0, 5)


def test_zero1_owners_go_largest_first_to_the_least_loaded_rank():
    assert zero1_owners([(10,), (3, 3), (20,), (1,), (9,)], 2) == [1, 1, 0, 0, 1]


def test_shardings_are_checked():
    with pytest.raises(SpecError, match="unknown sharding"):
        Sharding("fsdp3", 2)
    with pytest.raises(SpecError, match="world size"):
        Sharding("fsdp2", 0)


@pytest.fixture(scope="module")
def gpt2():
    return load_profile("gpt2")


@pytest.mark.parametrize("kind", ["fsdp2", "hsdp", "ddp", "zero1"])
def test_a_per_rank_plan_keeps_every_rank_within_the_budget_and_round_trips(gpt2, kind, tmp_path):
    budget = 2 * 2**20
    plan = make_plan(gpt2, budget, priors_path=PAPER_PRIORS, sharding=Sharding(kind, 4))
    assert len(plan.rank_state_bytes) == 4
    assert max(plan.rank_state_bytes) <= budget
    if kind != "ddp":
        assert plan.state_bytes > budget   # sharding lets the whole model's state exceed one device's budget
    loaded = Plan.load(plan.save(tmp_path / "plan.yaml"))
    assert loaded == plan and loaded.sharding == Sharding(kind, 4)


def test_fsdp2_plans_avoid_optimizers_that_cannot_step_dtensors(gpt2):
    plan = make_plan(gpt2, 64 * 2**20, methods=["adafactor", "came", "smmf", "adam"], priors_path=PAPER_PRIORS, sharding=Sharding("fsdp2", 2))
    assert {entry.method.split(":")[0] for entry in plan.entries} <= {"smmf", "adam"}


def test_fsdp2_ranks_hold_what_rank_state_tensors_gives(gpt2):
    plan = make_plan(gpt2, 8 * 2**20, priors_path=PAPER_PRIORS, sharding=Sharding("fsdp2", 3))
    for rank in range(3):
        expected = sum(tensor.nbytes for entry in plan.entries
                       for tensor in rank_state_tensors(param_state(entry.method, entry.shape, entry.dtype,
                                                                    entry.layout).tensors, entry.shape, 3, rank))
        assert plan.rank_state_bytes[rank] == expected


def test_a_tampered_per_rank_total_is_refused(gpt2, tmp_path):
    plan = make_plan(gpt2, 4 * 2**20, priors_path=PAPER_PRIORS, sharding=Sharding("fsdp2", 2))
    data = plan.to_dict()
    data["sharding"]["rank_state_bytes"][1] += 1
    with pytest.raises(PlanError, match="rank_state_bytes"):
        Plan.from_dict(data)


def test_a_per_rank_budget_too_small_is_infeasible(gpt2):
    with pytest.raises(BudgetError):
        make_plan(gpt2, 1000, methods=["smmf"], priors_path=PAPER_PRIORS, sharding=Sharding("fsdp2", 2))


def test_cli_plans_and_analyzes_per_rank(run_memplan):
    planned = run_memplan("plan", "gpt2", "--budget", "2MiB", "--world-size", "2", "--sharding", "fsdp2", "--json")
    assert planned.code == 0, planned.stderr
    sharding = planned.json()["sharding"]
    assert sharding["kind"] == "fsdp2" and max(sharding["rank_state_bytes"]) <= 2 * 2**20
    analyzed = run_memplan("analyze", "gpt2", "-m", "adam", "--world-size", "4", "--json")
    assert analyzed.code == 0, analyzed.stderr
    adam = analyzed.json()["methods"]["adam"]
    assert adam["rank_state_bytes"][0] >= adam["state_bytes"] // 4 and len(adam["rank_state_bytes"]) == 4
    assert analyzed.json()["sharding"]["rank_param_bytes"] > 0
    refused = run_memplan("plan", "gpt2", "--budget", "2MiB", "--sharding", "zero1")
    assert refused.code == 2 and "--sharding needs --world-size" in refused.stderr


SHAPES = ((5, 6), (5,), (1, 5), (1,), (7, 3, 4))
"""The distributed tests' model (tests/optim/distributed_worker.py)."""


def test_a_steps_collective_carries_the_reduced_state_of_every_split_parameter():
    """SMMF's factors (4 x 4 bytes per row or column), summed; SM3's accumulators, maxima; a plan
    mixing them is one all-gather; elementwise methods and ddp/zero1 need none."""
    fsdp2 = Sharding("fsdp2", 2)

    def communication(specs):
        return fsdp2.step_communication([(shape, param_state(spec, shape).tensors)
                                         for shape, spec in zip(SHAPES, specs)])

    layouts = [param_state("smmf", shape).layout for shape in SHAPES]
    assert all(layouts)   # every one factored: row_v, col_v, row_m, col_m of n + m fp32 values
    assert communication(["smmf"] * 5) == StepCommunication(1, sum(4 * 2 * (n + m) for n, m in layouts), False)
    assert communication(["sm3"] * 5) == StepCommunication(1, 4 * (5 + 6 + 5 + 1 + 5 + 1 + 7 + 3 + 4), False)
    mixed = communication(["smmf", "et2", "sm3:momentum=0.9", "adam", "et_inf"])
    assert mixed.collectives == 1 and mixed.gathered
    assert communication(["adam", "sgd:momentum=0.9", "adagrad", "adam", "adam"]) == StepCommunication(0, 0)
    for kind in ("ddp", "zero1"):
        assert Sharding(kind, 2).step_communication([((5, 6), param_state("smmf", (5, 6)).tensors)]) \
            == StepCommunication(0, 0)


@pytest.mark.parametrize("world, gathered, expected", [(2, False, 100), (4, False, 150), (4, True, 300),
                                                       (1, True, 0)])
def test_bus_bytes_count_a_ring_all_reduce_or_all_gather(world, gathered, expected):
    assert StepCommunication(1, 100, gathered).bus_bytes(world) == expected
