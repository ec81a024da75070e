"""The multiple-choice knapsack solver, against brute force on small random instances."""

import itertools
import math
import random

import pytest

from memplan.mckp import Infeasible, Option, solve, upper_hull


def brute_force(groups, budget):
    """The exact optimum of a small instance: every combination tried."""
    best = -math.inf
    for combo in itertools.product(*[range(len(group)) for group in groups]):
        cost = sum(groups[i][j].bytes for i, j in enumerate(combo))
        if cost <= budget:
            best = max(best, sum(groups[i][j].value for i, j in enumerate(combo)))
    return best


@pytest.mark.parametrize("seed", range(40))
def test_small_instances_reach_the_brute_force_optimum_within_one_percent(seed):
    rng = random.Random(seed)
    groups = random_groups(rng)
    budget = rng.randint(sum(g[0].bytes for g in groups), sum(g[-1].bytes for g in groups) + 1)
    solution = solve(groups, budget)
    assert sum(groups[i][j].bytes for i, j in enumerate(solution.picks)) <= budget
    optimum = brute_force(groups, budget)
    assert solution.value >= optimum - 0.01 * abs(optimum) - 1e-12
    assert solution.bound >= optimum - 1e-9



def random_groups(rng):
    """2 to 6 groups of Pareto fronts of 1 to 6 options each."""
    groups = []
    for _ in range(rng.randint(2, 6)):
        options = sorted({(rng.randint(0, 1000), rng.random()) for _ in range(rng.randint(1, 6))})
        front = []
        for cost, value in options:
            if not front or value > front[-1].value:
                front.append(Option(cost, value))
        groups.append(front)
    return groups


def test_an_infeasible_budget_reports_the_cheapest_total():
    groups = [[Option(10, 0.1), Option(20, 0.5)], [Option(5, 0.2)]]
    with pytest.raises(Infeasible) as error:
        solve(groups, 14)
    assert error.value.minimum == 15 and error.value.budget == 14


def test_the_upper_hull_drops_options_below_the_chord():
    group = [Option(0, 0.0), Option(10, 0.1), Option(20, 1.0), Option(30, 1.1)]
    assert upper_hull(group) == [0, 2, 3]


def test_payloads_come_back_with_the_picks():
    groups = [[Option(0, 0.0, "none"), Option(8, 1.0, "full")], [Option(0, 0.0, "a"), Option(4, 0.3, "b")]]
    solution = solve(groups, 8)
    assert [groups[i][j].payload for i, j in enumerate(solution.picks)] == ["full", "a"]
    assert solution.value == pytest.approx(1.0)
