"""`slai`: last schedulable times, critical decodes, FCFS partials, SPF with strict users first, fill, caps."""

from __future__ import annotations

from dataclasses import replace

import pytest
from factories import kv_after, make_req, make_running, make_snapshot

from sglang_fair.policies import make_policy
from sglang_fair.policies.slai import SlaiParams, SlaiPolicy, last_schedulable_s

DEFAULTS = SlaiParams()
BUDGET, MAX_DECODES = DEFAULTS.token_budget, DEFAULTS.max_decodes
NOW = 50.0
ITER = 0.02  # mean iteration time: offset 5 -> 100 ms, offset 10 -> 200 ms


def dec(rid, *, tpot, last_ago, arrival=0.0, **kw):
    return make_running(rid, arrival_s=arrival, tpot_slo_s=tpot, last_token_s=NOW - last_ago, **kw)


def test_lst_formula():
    r = dec("a", tpot=0.5, last_ago=0.3)
    assert last_schedulable_s(r, 5 * ITER) == pytest.approx(NOW - 0.3 + 0.5 - 0.1)
    assert last_schedulable_s(replace(r, last_token_s=None), 0.1) == float("-inf")  # no token time: critical


def test_worked_example_step_by_step():
    # LST = last + tpot - 5 * 20 ms:
    #   d: NOW-0.2+0.1-0.1 = NOW-0.2 (critical)   a: NOW-0.05 (critical, arrived 1.0)
    #   b: NOW-0.42+0.5-0.1 = NOW-0.02 (critical)   c: NOW-0.1+0.5-0.1 = NOW+0.3 (not critical)
    # 1. critical decodes in LST order: d, a, b -> 3 tokens
    # 2. partial prefill p: 300 tokens -> 303
    # 3. new prefills, strict first then shortest: z (strict, 200) -> 503; y (50) gets the last 9 of the default
    #    budget (512); x (300) none
    # 4. no tokens left for c: deferred
    run = [dec("c", tpot=0.5, last_ago=0.1, arrival=0.5), dec("b", tpot=0.5, last_ago=0.42, arrival=2.0),
           dec("a", tpot=0.1, last_ago=0.05, arrival=1.0), dec("d", tpot=0.1, last_ago=0.2, arrival=3.0)]
    snap = make_snapshot(now=NOW, running=run, recent_iter_s=ITER,
                         prefilling=[make_req("p", arrival_s=10.0, prompt_tokens=1000, prefilled_tokens=700)],
                         waiting=[make_req("x", arrival_s=20.0, prompt_tokens=300),
                                  make_req("y", arrival_s=21.0, prompt_tokens=50),
                                  make_req("z", arrival_s=22.0, prompt_tokens=200, strict=True)])
    plan = make_policy("slai").plan(snap)
    assert plan.decode == ("d", "a", "b")
    assert plan.prefill == (("p", 300), ("z", 200), ("y", 9))
    assert plan.deferred(snap) == ("c",)
    assert len(plan.decode) + plan.prefill_tokens == BUDGET


def test_equal_lst_ties_go_by_arrival():
    run = [dec("second", tpot=0.1, last_ago=0.5, arrival=2.0), dec("first", tpot=0.1, last_ago=0.5, arrival=1.0)]
    plan = SlaiPolicy(token_budget=1).plan(make_snapshot(now=NOW, running=run, recent_iter_s=ITER))
    assert plan.decode == ("first",)


def test_without_user_priority_pure_shortest_prompt_first():
    wait = [make_req("x", arrival_s=1.0, prompt_tokens=300), make_req("z", arrival_s=2.0, prompt_tokens=200,
                                                                       strict=True),
            make_req("y", arrival_s=3.0, prompt_tokens=50), make_req("y2", arrival_s=4.0, prompt_tokens=50)]
    plan = SlaiPolicy(user_priority=False).plan(make_snapshot(now=NOW, waiting=wait))
    assert plan.prefill == (("y", 50), ("y2", 50), ("z", 200), ("x", 212))  # ties stay FCFS


def test_non_critical_decodes_fill_leftover_in_lst_order():
    run = [dec("late", tpot=0.5, last_ago=0.0), dec("early", tpot=0.5, last_ago=0.2)]  # LST NOW+0.4, NOW+0.2
    plan = make_policy("slai").plan(make_snapshot(now=NOW, running=run, recent_iter_s=ITER,
                                                  waiting=[make_req("w", prompt_tokens=100)]))
    assert plan.prefill == (("w", 100),)
    assert plan.decode == ("early", "late")


def test_high_kv_usage_doubles_the_offset():
    # e: LST = NOW-0.35+0.5-offset: NOW+0.05 at offset 5 (not critical), NOW-0.05 at offset 10 (critical).
    # The waiting prompt fills the budget, so e decodes only when it is critical.
    e = dec("e", tpot=0.5, last_ago=0.35)
    w = make_req("w", prompt_tokens=3000, max_new_tokens=0)
    low = make_snapshot(now=NOW, running=[e], waiting=[w], recent_iter_s=ITER, kv_capacity_tokens=100_000)
    held = e.context_tokens
    high = make_snapshot(now=NOW, running=[e], waiting=[w], recent_iter_s=ITER, kv_used_tokens=96_000,
                         kv_capacity_tokens=100_000)
    assert held < 96_000
    pol = SlaiPolicy(kv_reserve_output_ratio=0.0)
    assert pol.plan(low).decode == () and pol.plan(low).prefill == (("w", BUDGET),)
    assert pol.plan(high).decode == ("e",) and pol.plan(high).prefill == (("w", BUDGET - 1),)


def test_unknown_iteration_time_means_zero_offset():
    # recent_iter_s = 0: LST = last + tpot; critical iff the TPOT has fully elapsed since the last token
    run = [dec("due", tpot=0.1, last_ago=0.1), dec("fresh", tpot=0.1, last_ago=0.09)]
    snap = make_snapshot(now=NOW, running=run, recent_iter_s=0.0,
                         waiting=[make_req("w", prompt_tokens=5000, max_new_tokens=0)])
    plan = make_policy("slai").plan(snap)
    assert plan.decode == ("due",)


def test_at_most_max_decodes_and_token_budget():
    n = MAX_DECODES + 72
    run = [dec(f"d{i:03d}", tpot=0.1, last_ago=0.5, arrival=float(i)) for i in range(n)]  # all critical
    snap = make_snapshot(now=NOW, running=run, recent_iter_s=ITER, waiting=[make_req("w", prompt_tokens=5000)])
    plan = make_policy("slai").plan(snap)
    assert len(plan.decode) == MAX_DECODES and plan.decode[0] == "d000"
    assert plan.prefill == (("w", BUDGET - MAX_DECODES),)
    assert len(plan.deferred(snap)) == n - MAX_DECODES


def test_critical_decode_preempts_latest_paused_prefill_when_kv_is_full():
    d = dec("d", tpot=0.1, last_ago=0.5, prompt_tokens=10)
    p1 = make_req("p1", arrival_s=1.0, prompt_tokens=100, prefilled_tokens=30)
    p2 = make_req("p2", arrival_s=2.0, prompt_tokens=100, prefilled_tokens=20)
    held = d.context_tokens + p1.context_tokens + p2.context_tokens
    snap = make_snapshot(now=NOW, running=[d], prefilling=[p1, p2], kv_capacity_tokens=held, recent_iter_s=ITER)
    plan = make_policy("slai").plan(snap)
    assert plan.preempt == ("p2",)
    assert plan.decode == ("d",)
    assert plan.prefill == (("p1", 19),)  # 20 freed, 1 used by the decode
    assert kv_after(snap, plan) <= snap.kv_capacity_tokens


def test_decode_preempts_itself_when_nothing_else_can_go():
    d1 = dec("d1", tpot=0.1, last_ago=0.5, arrival=1.0, prompt_tokens=10)
    d2 = dec("d2", tpot=0.1, last_ago=0.4, arrival=2.0, prompt_tokens=10)
    snap = make_snapshot(now=NOW, running=[d1, d2], kv_capacity_tokens=d1.context_tokens + d2.context_tokens,
                         recent_iter_s=ITER)
    plan = make_policy("slai").plan(snap)
    # d1 (earliest LST) finds no free KV and no paused prefill: it is preempted, which frees room for d2
    assert plan.preempt == ("d1",) and plan.decode == ("d2",)


@pytest.mark.parametrize("kw", [{"token_budget": 0}, {"max_decodes": 0}, {"offset_iters": -1},
                                {"memory_limit_fraction": 1.5}, {"user_priority": "yes"}])
def test_bad_params_rejected(kw):
    with pytest.raises(ValueError):
        SlaiParams(**kw)
