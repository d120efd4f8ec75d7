"""`fair`: FairBatching's budget, urgency, EDF prefills, chunk sizing, KV and preemption on worked examples.

COST (factories): 5 ms per iteration + 0.1 ms per prefill token + 0.2 ms per decode row, so times are easy by hand.
"""

from __future__ import annotations

import math

import pytest
from factories import COST, batch_of, kv_after, make_req, make_running, make_running_with_slack, make_snapshot

from sglang_fair.core.cost_model import CostModel
from sglang_fair.policies import make_policy
from sglang_fair.policies.fair import FairParams, FairPolicy

NOW = 100.0


def fair(**kw) -> FairPolicy:
    """fair with the paper's envelope (no TPOT margin: the worked examples below do its arithmetic by hand; the
    margin has its own tests, test_policy_fair_margin.py) unless `tpot_margin` is given."""
    return FairPolicy(FairParams(**{"tpot_margin": 0.0, **kw}))


def test_worked_example_urgent_decode_then_prefill_then_defer():
    # slacks 30 ms and 500 ms, tpot 100 ms: budget = max(30 ms, 100 ms) = 100 ms; urgent iff slack < 200 ms.
    # u (urgent) costs 5 + 0.2 = 5.2 ms; 94.8 ms are left -> 948 prefill tokens of w's 2000; lazy is deferred.
    # (recover_tpot off: u, 70 ms behind, would lower the budget; test_policy_fair_recover.py)
    snap = make_snapshot(now=NOW, running=[make_running_with_slack("u", 0.03, now=NOW),
                                           make_running_with_slack("lazy", 0.5, now=NOW)],
                         waiting=[make_req("w", arrival_s=NOW - 0.2, prompt_tokens=2000)])
    plan = fair(recover_tpot=False).plan(snap)
    assert plan.budget_s == pytest.approx(0.1)
    assert plan.decode == ("u",)
    assert plan.deferred(snap) == ("lazy",)
    (rid, chunk), = plan.prefill
    assert rid == "w" and chunk == COST.max_chunk(plan.budget_s - 0.0052) and abs(chunk - 948) <= 1
    assert plan.predicted_s == pytest.approx(COST.predict(*batch_of(snap, plan)))
    assert plan.predicted_s <= plan.budget_s


def test_where_the_engine_cannot_defer_every_running_decode_is_planned_and_costed():
    # the worked example above on an engine that decodes every running row in any forward that decodes (SGLang
    # serving LoRA): "lazy" is planned too, and the prefill chunk leaves room for its 0.2 ms (946 tokens, not 948)
    from dataclasses import replace
    snap = make_snapshot(now=NOW, running=[make_running_with_slack("u", 0.03, now=NOW),
                                           make_running_with_slack("lazy", 0.5, now=NOW)],
                         waiting=[make_req("w", arrival_s=NOW - 0.2, prompt_tokens=2000)])
    plan = fair(recover_tpot=False).plan(replace(snap, deferral_allowed=False))
    assert set(plan.decode) == {"u", "lazy"} and plan.deferred(snap) == ()
    (rid, chunk), = plan.prefill
    assert rid == "w" and abs(chunk - 946) <= 1
    assert plan.predicted_s == pytest.approx(COST.predict(*batch_of(snap, plan)))
    assert plan.predicted_s <= plan.budget_s


def test_budget_grows_when_decodes_run_ahead():
    # min slack 300 ms > tpot 100 ms: budget 300 ms; urgent iff slack (or time to the 500 ms gap bound) < 400 ms ->
    # only "a" ("b" got its last token just now: 500 ms to its gap bound)
    snap = make_snapshot(now=NOW, running=[make_running_with_slack("a", 0.3, now=NOW),
                                           make_running_with_slack("b", 0.6, now=NOW)],
                         waiting=[make_req("w", arrival_s=NOW, prompt_tokens=10_000)])
    plan = fair().plan(snap)
    assert plan.budget_s == pytest.approx(0.3)
    assert plan.decode == ("a",)
    # 300 - 5.2 = 294.8 ms of prefill ~ 2948 tokens: the grown budget admits ~3x what a 100 ms budget would
    assert abs(plan.prefill[0][1] - 2948) <= 1


def test_token_gap_bound_caps_the_budget():
    # both decodes far ahead of their envelopes (slack 2 s): the envelope alone would allow a 1 s budget (the cap).
    # "g" got its last token 350 ms ago, so 150 ms are left before its gap passes 5 x 100 ms: the budget is 150 ms
    # and "g" runs in it (its gap ends at 500 ms); "h" (token just now) sits out. The old guard (gap_caps_budget
    # off) also runs "g", but in a 1 s iteration: a 1.35 s gap.
    g = make_running_with_slack("g", 2.0, now=NOW, last_token_s=NOW - 0.35)
    h = make_running_with_slack("h", 2.0, now=NOW, last_token_s=NOW)
    snap = make_snapshot(now=NOW, running=[g, h], waiting=[make_req("w", arrival_s=NOW, prompt_tokens=20_000)])
    plan = fair().plan(snap)
    assert plan.budget_s == pytest.approx(0.15)
    assert plan.decode == ("g",) and plan.deferred(snap) == ("h",)
    assert NOW + plan.predicted_s - g.last_token_s <= 0.5 + 1e-9
    old = fair(gap_caps_budget=False).plan(snap)
    assert old.budget_s == pytest.approx(1.0) and "g" in old.decode
    assert NOW + old.predicted_s - g.last_token_s > 1.3


def test_decode_anchor_first_token_keeps_tpot_despite_banked_ttft_slack():
    # first token came 0.45 s before its TTFT deadline (NOW + 0.2); 3 tokens so far. Envelope slack:
    # arrival + 1 + 3 * 0.1 - NOW = 0.5 s >= budget 0.1 + tpot 0.1 (not urgent); from the first token:
    # first + 3 * 0.1 - NOW = 0.05 s (urgent). With a prefill queued, only the first-token anchor keeps it in the
    # batch; the envelope defers it and lets its TPOT slip.
    arrival, first = NOW - 0.8, NOW - 0.25
    r = make_running("r", arrival_s=arrival, output_tokens=3, last_token_s=NOW - 0.05, first_token_s=first)
    snap = make_snapshot(now=NOW, running=[make_running_with_slack("u", 0.0, now=NOW), r],
                         waiting=[make_req("w", arrival_s=NOW, prompt_tokens=5000)])
    assert r.slack_s(NOW) == pytest.approx(0.5)
    assert "r" in fair(decode_anchor="first_token").plan(snap).decode
    assert "r" in fair(decode_anchor="arrival").plan(snap).deferred(snap)


def test_budget_floor_and_cap():
    late = make_snapshot(now=NOW, running=[make_running_with_slack("a", -5.0, now=NOW, tpot_slo_s=0.001)])
    assert fair(min_budget_ms=20).plan(late).budget_s == pytest.approx(0.020)
    ahead = make_snapshot(now=NOW, running=[make_running_with_slack("a", 9.0, now=NOW)])
    assert fair(max_budget_ms=250).plan(ahead).budget_s == pytest.approx(0.25)


def test_decode_only_when_urgent_decodes_alone_exceed_budget():
    # 600 urgent decodes cost 5 + 600 * 0.2 = 125 ms > the 100 ms budget: decode-only, nothing else
    run = [make_running_with_slack(f"d{i}", 0.01, now=NOW) for i in range(600)]
    snap = make_snapshot(now=NOW, running=run, waiting=[make_req("w", arrival_s=NOW - 0.9)])
    plan = fair().plan(snap)
    assert plan.prefill == () and len(plan.decode) == 600
    assert plan.predicted_s > plan.budget_s
    assert plan.predicted_s == pytest.approx(0.125)


def test_non_urgent_decodes_fill_remaining_time_by_slack():
    # budget 100 ms (tpot floor), urgent iff slack < 200 ms. No prefill queued, so time goes to the non-urgent
    # decodes in slack order; with 30 ms per decode row, 5 + 30 (u) + 30 (n1) + 30 (n2) = 95 ms, n3 does not fit.
    cost = CostModel(base_s=0.005, per_prefill_token_s=1e-4, per_decode_req_s=0.030)
    run = [make_running_with_slack("n3", 0.9, now=NOW), make_running_with_slack("u", 0.05, now=NOW),
           make_running_with_slack("n2", 0.5, now=NOW), make_running_with_slack("n1", 0.3, now=NOW)]
    plan = fair(max_token_gap_tpot=math.inf).plan(make_snapshot(now=NOW, running=run, cost=cost))
    assert plan.decode == ("u", "n1", "n2")
    assert plan.predicted_s == pytest.approx(0.095)


def test_prefills_go_earliest_deadline_first():
    # "strict" arrived later but with a 300 ms TTFT its deadline (NOW + 0.25) precedes "old"'s (NOW + 0.5)
    old = make_req("old", arrival_s=NOW - 0.5, prompt_tokens=100)
    strict = make_req("strict", arrival_s=NOW - 0.05, prompt_tokens=100, ttft_slo_s=0.3, strict=True)
    snap = make_snapshot(now=NOW, waiting=[old, strict])
    plan = fair().plan(snap)
    assert [rid for rid, _ in plan.prefill] == ["strict", "old"]


def test_partial_prefill_competes_by_deadline():
    part = make_req("part", arrival_s=NOW - 0.1, prompt_tokens=400, prefilled_tokens=100)
    older = make_req("older", arrival_s=NOW - 0.8, prompt_tokens=50)
    plan = fair().plan(make_snapshot(now=NOW, prefilling=[part], waiting=[older]))
    assert plan.prefill == (("older", 50), ("part", 300))


def test_no_running_budget_is_the_cap():
    # nothing decodes, so no envelope to protect: budget = max_budget_ms = 300 ms; 295 ms of prefill after the
    # 5 ms base cost -> 2950 tokens
    w = make_req("w", arrival_s=NOW - 0.7, prompt_tokens=10_000)
    plan = fair(max_budget_ms=300).plan(make_snapshot(now=NOW, waiting=[w]))
    assert plan.budget_s == pytest.approx(0.3)
    assert abs(plan.prefill[0][1] - 2950) <= 1


def test_late_head_prefill_is_not_starved_into_minimum_chunks():
    # TTFT already missed and nothing running: the late prompt gets the full budget, not the minimum chunk
    w = make_req("w", arrival_s=NOW - 5.0, prompt_tokens=10_000)
    plan = fair(min_budget_ms=5, max_budget_ms=300, min_prefill_chunk_tokens=64).plan(
        make_snapshot(now=NOW, waiting=[w]))
    assert plan.budget_s == pytest.approx(0.3)
    assert plan.prefill[0][1] > 64 * 10
    assert plan.predicted_s <= plan.budget_s + 1e-12


def test_small_tail_chunk_is_not_started():
    # 100 ms budget, u takes 5.2 ms; w1 (940 tokens = 94 ms) fits whole, leaving 0.8 ms = 8 tokens < 16: w2 waits
    snap = make_snapshot(now=NOW, running=[make_running_with_slack("u", 0.0, now=NOW)],
                         waiting=[make_req("w1", arrival_s=NOW - 0.5, prompt_tokens=940),
                                  make_req("w2", arrival_s=NOW - 0.4, prompt_tokens=500)])
    plan = fair(min_prefill_chunk_tokens=16, recover_tpot=False).plan(snap)  # u's lag kept: a 100 ms budget
    assert plan.prefill == (("w1", 940),)
    plan_small = fair(min_prefill_chunk_tokens=4, recover_tpot=False).plan(snap)
    assert plan_small.prefill[1][0] == "w2" and 1 <= plan_small.prefill[1][1] <= 8


def test_token_gap_guard_makes_an_idle_decode_urgent():
    # far ahead of its envelope (slack 5 s), but its last token was 450 ms ago: with the 100 ms budget the gap
    # would reach 550 ms > 5 x 100 ms, so it runs; with the guard off it is deferred
    r = make_running_with_slack("ahead", 5.0, now=NOW, last_token_s=NOW - 0.45)
    u = make_running_with_slack("u", 0.0, now=NOW)
    snap = make_snapshot(now=NOW, running=[u, r], waiting=[make_req("w", arrival_s=NOW, prompt_tokens=5000)])
    assert "ahead" in fair(max_token_gap_tpot=5.0).plan(snap).decode
    assert "ahead" in fair(max_token_gap_tpot=math.inf).plan(snap).deferred(snap)


def test_kv_short_preempts_partial_prefill_then_most_slack():
    u1 = make_running_with_slack("u1", 0.0, now=NOW, prompt_tokens=10)
    u2 = make_running_with_slack("u2", 0.05, now=NOW, prompt_tokens=10)
    lazy = make_running_with_slack("lazy", 2.0, now=NOW, prompt_tokens=10)
    part = make_req("part", arrival_s=NOW, prompt_tokens=100, prefilled_tokens=1)
    held = u1.context_tokens + u2.context_tokens + lazy.context_tokens + part.context_tokens
    # no free KV; 2 urgent decodes need 2 tokens: part frees 1, then lazy (most slack) frees 15
    snap = make_snapshot(now=NOW, running=[u1, u2, lazy], prefilling=[part], kv_capacity_tokens=held)
    plan = fair().plan(snap)
    assert plan.preempt == ("part", "lazy")
    assert set(plan.decode) == {"u1", "u2"}
    assert kv_after(snap, plan) <= snap.kv_capacity_tokens


def test_kv_admission_head_of_line():
    run = [make_running_with_slack("u", 0.0, now=NOW)]
    big = make_req("big", arrival_s=NOW - 0.5, prompt_tokens=3000, max_new_tokens=0)
    small = make_req("small", arrival_s=NOW - 0.4, prompt_tokens=10, max_new_tokens=0)
    snap = make_snapshot(now=NOW, running=run, waiting=[big, small],
                         kv_capacity_tokens=run[0].context_tokens + 1000)
    plan = fair(kv_reserve_output_ratio=0.0).plan(snap)
    assert plan.prefill == ()  # big does not fit whole, and small may not overtake it
    assert plan.decode == ("u",)


def test_idle_snapshot_gives_empty_plan():
    plan = make_policy("fair").plan(make_snapshot(now=NOW))
    assert plan.is_empty and plan.predicted_s == 0.0


def test_plan_is_deterministic_and_instance_free():
    run = [make_running_with_slack(f"d{i}", 0.1 * (i % 4), now=NOW) for i in range(12)]
    wait = [make_req(f"w{i}", arrival_s=NOW - 1 + 0.1 * i, prompt_tokens=100 + 37 * i) for i in range(8)]
    snap = make_snapshot(now=NOW, running=run, waiting=wait)
    assert fair().plan(snap) == fair().plan(snap) == make_policy("fair", tpot_margin=0.0).plan(snap)
    assert make_policy("fair").plan(snap) == fair(tpot_margin=FairParams().tpot_margin).plan(snap)


@pytest.mark.parametrize("kw", [{"min_budget_ms": 0}, {"max_budget_ms": math.inf}, {"min_budget_ms": 10,
                                "max_budget_ms": 5}, {"min_prefill_chunk_tokens": 0}, {"max_token_gap_tpot": 0.5},
                                {"kv_reserve_output_ratio": 1.5}, {"prefill_window_reqs": -1},
                                {"decode_anchor": "tbt"}])
def test_bad_params_rejected(kw):
    with pytest.raises(ValueError):
        FairParams(**kw)


def test_catchup_tokens_let_a_decode_fall_behind_by_what_its_next_tokens_can_win_back():
    # d0 got its first token at 1.0 and has 10 tokens left; one decode step costs 5.2 ms against a 100 ms TPOT
    d0 = make_running("d0", prompt_tokens=100, output_tokens=1, first_token_s=1.0, max_new_tokens=11)
    snap = make_snapshot(now=1.0, running=[d0], waiting=[make_req("p", prompt_tokens=4000, arrival_s=1.0)])
    strict = fair().plan(snap)
    loose = fair(catchup_tokens=4).plan(snap)
    step = COST.base_s + COST.decode_s(101)
    assert strict.budget_s == pytest.approx(0.1)  # per-token deadline: one TPOT of slack
    assert loose.budget_s == pytest.approx(0.1 + 4 * (0.1 - step))  # + 4 tokens' catch-up
    assert loose.prefill_tokens > strict.prefill_tokens
    # no catch-up from tokens it will not produce: with 2 left only 1 can win time back
    d1 = make_running("d1", prompt_tokens=100, output_tokens=1, first_token_s=1.0, max_new_tokens=3)
    snap = make_snapshot(now=1.0, running=[d1], waiting=[make_req("p", prompt_tokens=4000, arrival_s=1.0)])
    assert fair(catchup_tokens=4).plan(snap).budget_s == pytest.approx(0.1 + (0.1 - step))
    with pytest.raises(ValueError, match="catchup_tokens"):
        FairPolicy(catchup_tokens=-1)


def test_a_prefill_only_step_must_carry_its_fixed_cost_in_prefill_work():
    # mixing is slow (20 ms per decode row), four decodes have one TPOT (100 ms) of slack, a prompt waits
    running = [make_running(f"d{i}", prompt_tokens=100, output_tokens=1, first_token_s=1.0) for i in range(4)]
    waiting = [make_req("p", prompt_tokens=400, arrival_s=0.9)]
    for base_s, alone in ((0.005, True), (0.03, True), (0.04, False)):
        cost = CostModel(**{**COST.to_dict(), "per_mixed_decode_req_s": 0.02, "base_s": base_s})
        plan = fair().plan(make_snapshot(now=1.0, running=running, waiting=waiting, cost=cost))
        t_dec = cost.base_s + sum(cost.decode_s(r.context_tokens) for r in running)
        # 30 ms fixed cost: the 69 ms left before the decode step hold 39 ms of prefill, worth a step of its own;
        # 40 ms: the 59 ms left would hold 19 ms of prefill - the decodes run now and the prompt gets a step later
        assert ("prefill-only" in plan.note) is alone, (base_s, plan.note)
        if alone:
            assert plan.predicted_s - cost.base_s >= cost.base_s and plan.predicted_s <= 0.1 - t_dec + 1e-9
        else:
            assert len(plan.decode) == 4
