"""`sarathi`: stock SGLang mixed chunk / Sarathi-Serve stall-free batching, rule by rule on worked examples."""

from __future__ import annotations

import pytest
from factories import COST, batch_of, kv_after, make_req, make_running, make_snapshot

from sglang_fair.policies import make_policy
from sglang_fair.policies.sarathi import SarathiParams, SarathiPolicy


def decodes(n, *, t0=0.0, **kw):
    return [make_running(f"d{i}", arrival_s=t0 + i * 0.01, **kw) for i in range(n)]


def test_worked_example_decodes_then_partial_then_fcfs():
    # 3 decodes take 3 of 512 tokens -> 509 left; the partial prefill needs 300 -> 209 left;
    # w1 (100) fits whole -> 109 left; w2 (500) gets the last 109 tokens as a chunk; w3 gets nothing.
    snap = make_snapshot(now=5.0, running=decodes(3),
                         prefilling=[make_req("p", arrival_s=1.0, prompt_tokens=800, prefilled_tokens=500)],
                         waiting=[make_req("w1", arrival_s=2.0, prompt_tokens=100),
                                  make_req("w2", arrival_s=3.0, prompt_tokens=500),
                                  make_req("w3", arrival_s=4.0, prompt_tokens=10)])
    plan = make_policy("sarathi", token_budget=512).plan(snap)
    assert plan.decode == ("d0", "d1", "d2")
    assert plan.prefill == (("p", 300), ("w1", 100), ("w2", 109))
    assert plan.preempt == () and plan.deferred(snap) == ()
    assert len(plan.decode) + plan.prefill_tokens == 512
    assert plan.predicted_s == pytest.approx(COST.predict(*batch_of(snap, plan)))


def test_relaxed_budget_2048_takes_more_prefill():
    snap = make_snapshot(running=decodes(48), waiting=[make_req(f"w{i}", arrival_s=i, prompt_tokens=700)
                                                       for i in range(4)])
    plan = SarathiPolicy(token_budget=2048).plan(snap)
    # 2048 - 48 decodes = 2000 = 700 + 700 + 600
    assert plan.prefill == (("w0", 700), ("w1", 700), ("w2", 600))
    assert len(plan.decode) == 48


def test_decodes_count_against_the_budget_and_are_never_dropped():
    # more decodes than the budget: all of them still run (stall-free), no prefill fits
    snap = make_snapshot(running=decodes(600), waiting=[make_req("w", prompt_tokens=10)])
    plan = make_policy("sarathi", token_budget=512).plan(snap)
    assert len(plan.decode) == 600 and plan.prefill == ()
    assert plan.deferred(snap) == ()


def test_fcfs_head_of_line_blocks_on_kv():
    # w1 needs 5000 tokens of KV, only ~3000 are free: admission stops there, w2 (10 tokens) is not admitted either
    run = decodes(2)
    snap = make_snapshot(running=run, waiting=[make_req("w1", prompt_tokens=5000, max_new_tokens=0),
                                               make_req("w2", arrival_s=1.0, prompt_tokens=10, max_new_tokens=0)],
                         kv_capacity_tokens=sum(r.context_tokens for r in run) + 3000)
    plan = SarathiPolicy(SarathiParams(token_budget=8192, kv_reserve_output_ratio=0.0)).plan(snap)
    assert plan.prefill == ()
    assert plan.decode == ("d0", "d1")


def test_kv_reservation_for_outputs_delays_admission():
    run = [make_running("d0", prompt_tokens=100, output_tokens=1, max_new_tokens=1001)]  # 1000 outputs to come
    w = make_req("w", arrival_s=1.0, prompt_tokens=100, max_new_tokens=0)
    cap = run[0].context_tokens + 1 + 100 + 50  # room for the decode, the prompt and 50 spare tokens
    with_reserve = SarathiPolicy(kv_reserve_output_ratio=0.1).plan(
        make_snapshot(running=run, waiting=[w], kv_capacity_tokens=cap))
    without = SarathiPolicy(kv_reserve_output_ratio=0.0).plan(
        make_snapshot(running=run, waiting=[w], kv_capacity_tokens=cap))
    assert with_reserve.prefill == ()  # 0.1 * 1000 = 100 tokens held back > 50 spare
    assert without.prefill == (("w", 100),)


def test_preempts_partial_prefill_then_latest_decode_when_kv_is_short():
    run = [make_running(f"d{i}", arrival_s=float(i), prompt_tokens=10, output_tokens=1) for i in range(4)]
    part = make_req("p", arrival_s=0.5, prompt_tokens=50, prefilled_tokens=2)
    held = sum(r.context_tokens for r in run) + part.context_tokens  # 4 * 11 + 2 = 46
    # 1 free token for 4 decodes: preempting p frees 2 (3 free, still < 4); then d3 (latest) frees 11 -> enough for 3
    snap = make_snapshot(running=run, prefilling=[part], kv_capacity_tokens=held + 1)
    plan = make_policy("sarathi").plan(snap)
    assert plan.preempt == ("p", "d3")
    assert plan.decode == ("d0", "d1", "d2")
    assert plan.deferred(snap) == ()
    assert kv_after(snap, plan) <= snap.kv_capacity_tokens


def test_partial_prefill_chunk_limited_by_kv():
    part = make_req("p", prompt_tokens=1000, prefilled_tokens=100)
    snap = make_snapshot(prefilling=[part], kv_capacity_tokens=100 + 40)
    plan = make_policy("sarathi").plan(snap)
    assert plan.prefill == (("p", 40),)


@pytest.mark.parametrize("kw", [{"token_budget": 0}, {"token_budget": 1.5}, {"kv_reserve_output_ratio": -0.1},
                                {"kv_reserve_output_ratio": 2.0}, {"token_budget": True}])
def test_bad_params_rejected(kw):
    with pytest.raises(ValueError):
        SarathiParams(**kw)


def test_unknown_param_rejected_by_registry_naming_it_and_the_known_ones():
    with pytest.raises(ValueError, match=r"unknown parameter 'budget' for policy 'sarathi'; known: token_budget, "
                                         r"kv_reserve_output_ratio"):
        make_policy("sarathi", budget=5)
