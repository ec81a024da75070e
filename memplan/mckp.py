"""The multiple-choice knapsack: one option per group, total bytes within a budget, most value.

This module depends on nothing else in memplan. Each group's options must be sorted by bytes
with strictly rising value (a Pareto front). The solver takes the LP relaxation's greedy path
along each group's upper convex hull (the classic MCKP greedy; it never exceeds the budget),
fills what budget is left with the best single upgrades, and, when the instance is small,
finishes with an exact branch and bound under the LP bound. It reports the LP bound, so a caller
can say how far from optimal the answer can be.
"""

from __future__ import annotations

import heapq
from dataclasses import dataclass
from typing import Any, Sequence

EXACT_SEARCH_GROUPS = 48
EXACT_SEARCH_NODES = 100_000
"""Branch and bound runs on instances of at most EXACT_SEARCH_GROUPS groups and stops after
EXACT_SEARCH_NODES nodes; on larger ones the greedy solution stands, within one hull step of the
LP bound (a small fraction of the total when there are many groups)."""


@dataclass(frozen=True)
class Option:
    """One choice in a group: what it costs, what it is worth, and what it stands for."""

    bytes: int
    value: float
    payload: Any = None


@dataclass(frozen=True)
class Solution:
    """The chosen option's index in every group, their total value, and an upper bound on the optimum."""

    picks: list[int]
    value: float
    bound: float


class Infeasible(Exception):
    """Even the cheapest option of every group exceeds the budget; ``minimum`` is their total."""

    def __init__(self, minimum: int, budget: int) -> None:
        super().__init__(f"the cheapest options need {minimum} bytes, over the budget of {budget}")
        self.minimum = minimum
        self.budget = budget


Group = Sequence[Option]


def solve(groups: Sequence[Group], budget: int) -> Solution:
    """Choose one option per group with total bytes <= ``budget`` and the most total value.

    Raises :class:`Infeasible` when the cheapest choice does not fit.
    """
    minimum = sum(group[0].bytes for group in groups)
    if minimum > budget:
        raise Infeasible(minimum, budget)
    hulls = [upper_hull(group) for group in groups]
    picks, spent, bound = _greedy(groups, hulls, budget)
    _fill(groups, picks, budget - spent)
    value = sum(groups[i][picks[i]].value for i in range(len(groups)))
    if bound - value > 1e-12 and len(groups) <= EXACT_SEARCH_GROUPS:
        picks, value = _branch_and_bound(groups, hulls, budget, picks, value)
    return Solution(picks, value, max(bound, value))


def upper_hull(options: Group) -> list[int]:
    """Indices of the options on the upper-left convex hull of (bytes, value): the LP's path."""
    hull: list[int] = []
    for index, option in enumerate(options):
        while len(hull) >= 2:
            first, second = options[hull[-2]], options[hull[-1]]
            if (second.value - first.value) * (option.bytes - first.bytes) \
                    <= (option.value - first.value) * (second.bytes - first.bytes):
                hull.pop()
            else:
                break
        hull.append(index)
    return hull


def _efficiency(group: Group, low: int, high: int) -> float:
    """Value gained per byte spent moving from option ``low`` to option ``high``."""
    extra_bytes = group[high].bytes - group[low].bytes
    return (group[high].value - group[low].value) / extra_bytes if extra_bytes else float("inf")


def _greedy(groups: Sequence[Group], hulls: list[list[int]], budget: int) -> tuple[list[int], int, float]:
    """Walk every hull by falling efficiency while the budget allows; also return the LP bound."""
    picks = [hull[0] for hull in hulls]
    spent = sum(groups[i][picks[i]].bytes for i in range(len(groups)))
    value = sum(groups[i][picks[i]].value for i in range(len(groups)))
    position = [0] * len(groups)
    heap: list[tuple[float, int]] = []
    for i, hull in enumerate(hulls):
        if len(hull) > 1:
            heapq.heappush(heap, (-_efficiency(groups[i], hull[0], hull[1]), i))
    bound, bound_open = value, True
    while heap:
        _, i = heapq.heappop(heap)
        hull, step = hulls[i], position[i]
        before, after = groups[i][hull[step]], groups[i][hull[step + 1]]
        extra_bytes, extra_value = after.bytes - before.bytes, after.value - before.value
        if spent + extra_bytes <= budget:
            spent += extra_bytes
            value += extra_value
            if bound_open:
                bound += extra_value
            picks[i] = hull[step + 1]
            position[i] = step + 1
            if step + 2 < len(hull):
                heapq.heappush(heap, (-_efficiency(groups[i], hull[step + 1], hull[step + 2]), i))
        elif bound_open:
            bound += extra_value * (budget - spent) / extra_bytes
            bound_open = False
    return picks, spent, bound


def _fill(groups: Sequence[Group], picks: list[int], left: int) -> None:
    """Spend what budget is left on the best single upgrades, any option, until none fits."""
    while True:
        best = None
        for i, group in enumerate(groups):
            current = group[picks[i]]
            for j in range(picks[i] + 1, len(group)):
                extra_bytes, extra_value = group[j].bytes - current.bytes, group[j].value - current.value
                if extra_bytes <= left and extra_value > 0 and (best is None or extra_value > best[0]):
                    best = (extra_value, i, j, extra_bytes)
        if best is None:
            return
        _, i, j, extra_bytes = best
        picks[i] = j
        left -= extra_bytes


def _branch_and_bound(groups: Sequence[Group], hulls: list[list[int]], budget: int, picks: list[int],
                      value: float) -> tuple[list[int], float]:
    """Exact search under the LP bound, groups with the widest value range first; stops after
    :data:`EXACT_SEARCH_NODES` nodes and keeps the best solution found (never worse than the start)."""
    order = sorted(range(len(groups)), key=lambda i: -(groups[i][-1].value - groups[i][0].value))
    suffix_minimum = [0] * (len(order) + 1)
    for position in range(len(order) - 1, -1, -1):
        suffix_minimum[position] = suffix_minimum[position + 1] + groups[order[position]][0].bytes
    steps = sorted(
        ((groups[i][h[k + 1]].value - groups[i][h[k]].value) / max(1, groups[i][h[k + 1]].bytes - groups[i][h[k]].bytes),
         groups[i][h[k + 1]].bytes - groups[i][h[k]].bytes, groups[i][h[k + 1]].value - groups[i][h[k]].value, rank)
        for rank, i in enumerate(order) for h in [hulls[i]] for k in range(len(h) - 1)
    )[::-1]
    base_value = [0.0] * (len(order) + 1)
    for position in range(len(order) - 1, -1, -1):
        base_value[position] = base_value[position + 1] + groups[order[position]][0].value
    best = {"value": value, "picks": list(picks)}
    current = [0] * len(groups)
    nodes = 0

    def lp_bound(position: int, left: int) -> float:
        total, room = base_value[position], left - suffix_minimum[position]
        for _, extra_bytes, extra_value, rank in steps:
            if rank < position:
                continue
            if extra_bytes <= room:
                room -= extra_bytes
                total += extra_value
            else:
                return total + extra_value * room / extra_bytes
        return total

    def visit(position: int, left: int, gained: float) -> None:
        nonlocal nodes
        nodes += 1
        if nodes > EXACT_SEARCH_NODES:
            return
        if position == len(order):
            if gained > best["value"] + 1e-15:
                best["value"], best["picks"] = gained, list(current)
            return
        if gained + lp_bound(position, left) <= best["value"] + 1e-15:
            return
        group_index = order[position]
        group = groups[group_index]
        for option in range(len(group) - 1, -1, -1):
            cost = group[option].bytes
            if cost + suffix_minimum[position + 1] > left:
                continue
            current[group_index] = option
            visit(position + 1, left - cost, gained + group[option].value)

    visit(0, budget, 0.0)
    return best["picks"], best["value"]
