"""One partial prefill (SGLang's rule): core/prefill_shape.realised_chunks (what SGLang runs of a plan), the simulator
running plans that way (EngineConfig.one_partial_prefill), and fair planning within it (Snapshot.one_partial_prefill).
"""

from __future__ import annotations

import dataclasses

from factories import COST, make_req, make_snapshot, make_trace
from sglang_fair.core.prefill_shape import realised_chunks
from sglang_fair.core.types import Plan
from sglang_fair.policies.registry import make_policy
from sglang_fair.sim.engine import EngineConfig, simulate


def test_without_a_chunked_request_sglang_fills_in_plan_order_and_stops_after_its_one_cut():
    assert realised_chunks([(300, 300), (500, 2000)], None) == ([300, 500], 0)
    # a plan that cuts its first item: SGLang runs that one further with the plan's tokens, and nothing after it
    assert realised_chunks([(200, 1000), (300, 300)], None) == ([500, 0], 0)


def test_a_chunked_request_left_partial_keeps_its_chunk_and_another_cut_runs_nothing():
    assert realised_chunks([(800, 800), (200, 200), (120, 4000), (400, 3000)], 2) == ([800, 200, 120, 0], 0)
    assert realised_chunks([(300, 300), (200, 200), (500, 2000)], 0) == ([300, 200, 500], 0)  # it finishes first
    assert realised_chunks([(800, 800), (300, 900)], -1) == ([800, 0], 1)  # left out: SGLang still runs one page


def partials_after(snap, plan) -> set[str]:
    """Requests left partially prefilled once `plan` has run."""
    views = {r.rid: r for r in (*snap.prefilling, *snap.waiting)}
    cut = {rid for rid, c in plan.prefill if c < views[rid].remaining_prompt_tokens}
    planned = {rid for rid, _ in plan.prefill}
    return cut | {r.rid for r in snap.prefilling if r.rid not in planned and r.rid not in plan.preempt}


class _TwoCuts:
    """Continues its partial request by 100 tokens and starts the next waiting one with a 100-token cut."""

    name = "two-cuts"

    def plan(self, snap):
        items = [(r.rid, min(100, r.remaining_prompt_tokens)) for r in (*snap.prefilling, *snap.waiting)][:2]
        decode = [r.rid for r in snap.running] if not items else []
        return Plan(prefill=items, decode=decode, budget_s=0.1, predicted_s=0.0)


def _run(one_partial: bool, spy: list):
    policy = _TwoCuts()
    plan = policy.plan

    def recording(snap):
        spy.append(len(snap.prefilling))
        return plan(snap)
    policy.plan = recording
    trace = make_trace([(0.0, 1000, 4), (0.0, 1000, 4), (0.0, 1000, 4)])
    return simulate(trace, policy, COST, EngineConfig(one_partial_prefill=one_partial))


def test_the_simulator_runs_plans_as_sglang_does_and_counts_the_cuts_it_drops():
    seen_one, seen_free = [], []
    one, free = _run(True, seen_one), _run(False, seen_free)
    assert max(seen_one) == 1 and max(seen_free) == 2  # as written, two requests are partial at once
    assert one.dropped_prefill_tokens > 0 and free.dropped_prefill_tokens == 0
    assert all(r.first_token_s is not None for r in one.records)  # every request still served
    assert one.sim_s > free.sim_s  # the dropped cuts are work done later


def test_fair_cuts_no_second_request_and_gives_the_time_to_the_partial_one():
    # the partial request has a later TTFT deadline than a long waiting prompt: EDF would cut the waiting one
    # (no running decodes: fair's budget is max_budget_ms, 1 s, about 10k tokens on COST)
    partial = make_req("p", arrival_s=0.0, prompt_tokens=30000, prefilled_tokens=1000, ttft_slo_s=30.0)
    long_new = make_req("n", arrival_s=0.5, prompt_tokens=20000, ttft_slo_s=10.0)
    snap = make_snapshot(now=1.0, prefilling=[partial], waiting=[long_new], cost=COST)
    fair = make_policy("fair")
    free = fair.plan(dataclasses.replace(snap, one_partial_prefill=False))
    assert partials_after(snap, free) == {"p", "n"}  # the plan SGLang cannot run: it would drop n's cut
    plan = fair.plan(snap)
    assert len(partials_after(snap, plan)) == 1
    assert plan.prefill[0][0] == "p" and plan.prefill_tokens >= free.prefill_tokens  # the time went to p


def test_fair_serves_the_request_it_went_ahead_of_once_the_partial_one_finishes():
    partial = make_req("p", arrival_s=0.0, prompt_tokens=1100, prefilled_tokens=1000, ttft_slo_s=30.0)
    long_new = make_req("n", arrival_s=0.5, prompt_tokens=20000, ttft_slo_s=10.0)
    snap = make_snapshot(now=1.0, prefilling=[partial], waiting=[long_new], cost=COST)
    plan = make_policy("fair").plan(snap)
    assert [rid for rid, _ in plan.prefill] == ["p", "n"] and plan.prefill[0][1] == 100
    assert partials_after(snap, plan) == {"n"}
