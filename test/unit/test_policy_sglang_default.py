"""`sglang-default` and `sglang-mixed`: stock SGLang's batch formation (prefill first, 8192-token chunks, decodes
only in steps without prefill; with mixed chunk, decode rows take their share of a 2048 budget)."""

from __future__ import annotations

from dataclasses import replace

import pytest
from factories import make_req, make_running, make_snapshot

from sglang_fair.policies import make_policy
from sglang_fair.policies.sglang_default import SglangParams
from sglang_fair.sim.cli import parse_policy_spec

RUNNING = [make_running(f"d{i}", output_tokens=700, max_new_tokens=800) for i in range(10)]


def test_prefill_first_and_no_decode_in_a_prefill_step():
    snap = make_snapshot(running=RUNNING, waiting=[make_req("w", prompt_tokens=300)])
    plan = make_policy("sglang-default").plan(snap)
    assert plan.prefill == (("w", 300),) and plan.decode == ()
    drained = make_policy("sglang-default").plan(replace(snap, waiting=()))
    assert drained.prefill == () and drained.decode == tuple(r.rid for r in RUNNING)


def test_chunk_cap_8192_and_one_chunked_request_ends_the_pass():
    snap = make_snapshot(waiting=[make_req("a", prompt_tokens=20_000), make_req("b", prompt_tokens=10)])
    assert make_policy("sglang-default").plan(snap).prefill == (("a", 8192),)
    snap = make_snapshot(waiting=[make_req("a", prompt_tokens=5000), make_req("b", prompt_tokens=5000),
                                  make_req("c", prompt_tokens=10)])
    assert make_policy("sglang-default").plan(snap).prefill == (("a", 5000), ("b", 3192))
    # the chunked request continues first, then FCFS
    partial = make_req("a", prompt_tokens=20_000, prefilled_tokens=16_384)
    snap = make_snapshot(prefilling=[partial], waiting=[make_req("b", prompt_tokens=5000)])
    assert make_policy("sglang-default").plan(snap).prefill == (("a", 3616), ("b", 4576))


def test_kv_blocked_head_lets_the_decodes_run():
    waiting = [make_req("w", prompt_tokens=5000, max_new_tokens=100)]
    snap = make_snapshot(running=RUNNING, waiting=waiting, kv_capacity_tokens=sum(r.context_tokens for r in RUNNING)
                         + 3000)
    plan = make_policy("sglang-default").plan(snap)
    assert plan.prefill == () and len(plan.decode) == len(RUNNING)


def test_new_token_ratio_starts_at_0_7_and_decays_with_decode_steps():
    p = SglangParams()
    young = make_snapshot(running=[make_running("d", output_tokens=1)])
    old = make_snapshot(running=[make_running("d", output_tokens=1000)])
    assert p.new_token_ratio(young) == pytest.approx(0.7)
    assert p.new_token_ratio(old) == pytest.approx(0.7 * 0.14)
    # 10k outstanding outputs: reserved 7000 KV tokens when young, ~980 in steady state
    d_young = make_running("d", output_tokens=1, max_new_tokens=4001, prompt_tokens=100)
    d_old = make_running("d", output_tokens=1000, max_new_tokens=5000, prompt_tokens=100)
    for d, admitted in ((d_young, False), (d_old, True)):
        cap = d.context_tokens + 1000 + 128 + 1 + 1500
        snap = make_snapshot(running=[d], waiting=[make_req("w", prompt_tokens=1000)], kv_capacity_tokens=cap)
        assert bool(make_policy("sglang-default").plan(snap).prefill) is admitted


def test_decode_step_retracts_fewest_outputs_first():
    run = [make_running("a", output_tokens=50, prompt_tokens=100), make_running("b", output_tokens=5, prompt_tokens=10),
           make_running("c", output_tokens=5, prompt_tokens=90)]
    snap = make_snapshot(running=run, kv_capacity_tokens=sum(r.context_tokens for r in run))
    plan = make_policy("sglang-default").plan(snap)
    assert plan.preempt == ("c",) and plan.decode == ("a", "b")


def test_mixed_decodes_ride_in_the_prefill_step_within_the_budget():
    snap = make_snapshot(running=RUNNING, waiting=[make_req("w", prompt_tokens=5000)])
    plan = make_policy("sglang-mixed").plan(snap)
    assert plan.decode == tuple(r.rid for r in RUNNING)
    assert plan.prefill == (("w", 2048 - len(RUNNING)),)  # each decode row takes one token of the budget
    assert plan.prefill_tokens + len(plan.decode) <= 2048
    # a running batch as large as the budget leaves no prefill: decode step
    many = [make_running(f"d{i}") for i in range(64)]
    plan = make_policy("sglang-mixed", token_budget=64).plan(make_snapshot(running=many, waiting=[make_req("w")]))
    assert plan.prefill == () and len(plan.decode) == 64
    # where the engine cannot mix it is sglang-default with a 2048 chunk
    plan = make_policy("sglang-mixed").plan(replace(snap, mixing_allowed=False))
    assert plan.decode == () and plan.prefill == (("w", 2048),)


def test_specs():
    assert parse_policy_spec("sglang-mixed-2048") == ("sglang-mixed", {"token_budget": 2048})
    assert parse_policy_spec("sglang-default") == ("sglang-default", {})
    assert make_policy("sglang-mixed").params.token_budget == 2048
    assert make_policy("sglang-default").params.token_budget == 8192
    with pytest.raises(ValueError, match="token_budget"):
        SglangParams(token_budget=0)
