"""core.plan_check: the one plan contract the live adapter, the simulator and the property tests share."""

from __future__ import annotations

import dataclasses

import pytest
from factories import make_req, make_running, make_snapshot

from sglang_fair.core.plan_check import plan_problem
from sglang_fair.core.types import Plan

SNAP = make_snapshot(running=[make_running("d")], prefilling=[make_req("p", prompt_tokens=100, prefilled_tokens=60)],
                     waiting=[make_req("w", prompt_tokens=50)])


@pytest.mark.parametrize("plan, problem", [
    (None, "not Plan"),
    (Plan(prefill=(("x", 1),)), "prefill of unknown or running request x"),
    (Plan(prefill=(("d", 1),)), "prefill of unknown or running request d"),
    (Plan(prefill=(("p", 41),)), "prefill chunk 41 of p outside 1..40"),
    (Plan(prefill=(("w", 0),)), "outside 1..50"),
    (Plan(prefill=(("w", True),)), "outside"),
    (Plan(prefill=(("w", 5), ("w", 5))), "request w planned twice"),
    (Plan(decode=("w",)), "decode of non-running request w"),
    (Plan(decode=("d", "d")), "a decode planned twice"),
    (Plan(preempt=("w",)), "preemption of unknown or not-resident request w"),
    (Plan(preempt=("d", "d")), "a preemption planned twice"),
    (Plan(decode=("d",), preempt=("d",)), "both decoded and preempted"),
    (Plan(prefill=(("p", 5),), preempt=("p",)), "both prefilled and preempted"),
    (Plan(), "empty plan while requests are pending"),
])
def test_each_broken_rule_is_named(plan, problem):
    assert problem in plan_problem(plan, SNAP)


def test_valid_plans_and_the_engine_specific_allowances():
    assert plan_problem(Plan(prefill=(("p", 40), ("w", 50)), decode=("d",)), SNAP) is None
    assert plan_problem(Plan(preempt=("p",), decode=("d",)), SNAP) is None
    assert plan_problem(Plan(), SNAP, allow_empty=True) is None
    assert plan_problem(Plan(), make_snapshot()) is None  # nothing pending: idle is fine
    no_mix = dataclasses.replace(SNAP, mixing_allowed=False)
    assert plan_problem(Plan(prefill=(("w", 5),), decode=("d",)), no_mix) == "mixed plan where the engine cannot mix"
    assert plan_problem(Plan(prefill=(("w", 5),)), no_mix) is None
