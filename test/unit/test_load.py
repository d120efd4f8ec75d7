"""Prefill admission budget and its conversion to sglang-router's power_of_two load number."""

from __future__ import annotations

import pytest
from factories import make_req, make_running_with_slack, make_snapshot
from hypothesis import given, settings
from hypothesis import strategies as st

from sglang_fair.core.cost_model import CostModel
from sglang_fair.core.load import envelope_tokens_due, prefill_admission_budget, router_load_tokens

NOW = 10.0
LINEAR = CostModel(base_s=0.005, per_prefill_token_s=1e-4, per_decode_req_s=2e-4)  # 10k prefill tokens per second


def test_idle_instance_has_full_budget_and_zero_load():
    b = prefill_admission_budget(make_snapshot(now=NOW, cost=LINEAR), horizon_s=1.0)
    assert b.tokens == b.idle_tokens and abs(b.tokens - 10_000) <= 1
    assert b.router_load_tokens == 0


def test_worked_example_running_and_queued_work():
    # H = 1 s. One decode with slack 50 ms and TPOT 100 ms owes floor(0.95 / 0.1) + 1 = 10 tokens within H:
    # 10 x 0.2 ms = 2 ms, plus 10 iterations x 5 ms base = 50 ms. A queued 1000-token prompt takes 100 ms.
    # Time left 1 - 0.052 - 0.1 = 0.848 s -> 8480 tokens.
    snap = make_snapshot(now=NOW, cost=LINEAR,
                         running=[make_running_with_slack("d", 0.05, now=NOW, max_new_tokens=1000)],
                         waiting=[make_req("w", arrival_s=NOW, prompt_tokens=1000, max_new_tokens=0)])
    b = prefill_admission_budget(snap, horizon_s=1.0, kv_reserve_output_ratio=0.0)
    assert b.decode_s == pytest.approx(0.052)
    assert b.queued_prefill_s == pytest.approx(0.1)
    assert abs(b.time_tokens - 8480) <= 1
    assert b.tokens == b.time_tokens  # KV is ample
    assert b.router_load_tokens == b.idle_tokens - b.tokens > 0


def test_envelope_tokens_due():
    assert envelope_tokens_due(slack_s=0.05, tpot_slo_s=0.1, horizon_s=1.0, outstanding=1000) == 10
    assert envelope_tokens_due(slack_s=0.05, tpot_slo_s=0.1, horizon_s=1.0, outstanding=3) == 3
    assert envelope_tokens_due(slack_s=1.5, tpot_slo_s=0.1, horizon_s=1.0, outstanding=1000) == 0  # banked slack
    assert envelope_tokens_due(slack_s=-0.3, tpot_slo_s=0.1, horizon_s=1.0, outstanding=1000) == 14  # late: catch up


def test_banked_slack_frees_budget():
    behind = make_snapshot(now=NOW, cost=LINEAR, running=[make_running_with_slack("d", 0.0, now=NOW,
                                                                                  max_new_tokens=500)])
    ahead = make_snapshot(now=NOW, cost=LINEAR, running=[make_running_with_slack("d", 0.8, now=NOW,
                                                                                 max_new_tokens=500)])
    assert prefill_admission_budget(ahead, 1.0).tokens > prefill_admission_budget(behind, 1.0).tokens


def test_kv_limits_the_budget():
    snap = make_snapshot(now=NOW, cost=LINEAR, kv_capacity_tokens=3000,
                         waiting=[make_req("w", prompt_tokens=1000, max_new_tokens=100)])
    b = prefill_admission_budget(snap, horizon_s=1.0, kv_reserve_output_ratio=0.5)
    assert b.kv_tokens == 3000 - 1000 - 50
    assert b.tokens == b.kv_tokens < b.time_tokens


def test_overloaded_budget_is_negative_and_load_exceeds_idle():
    snap = make_snapshot(now=NOW, cost=LINEAR, waiting=[make_req(f"w{i}", prompt_tokens=4000) for i in range(5)])
    b = prefill_admission_budget(snap, horizon_s=1.0)
    assert b.tokens < 0  # 2 s of queued prefill against a 1 s horizon
    assert b.router_load_tokens > b.idle_tokens


@pytest.mark.parametrize("h", [0.0, -1.0, float("inf"), float("nan")])
def test_bad_horizon_rejected(h):
    with pytest.raises(ValueError):
        prefill_admission_budget(make_snapshot(), horizon_s=h)


@settings(max_examples=60, deadline=None)
@given(prompts=st.lists(st.integers(1, 4000), max_size=8), extra=st.integers(1, 4000),
       slacks=st.lists(st.floats(-0.5, 2.0), max_size=8))
def test_more_queued_work_never_lowers_the_load(prompts, extra, slacks):
    run = [make_running_with_slack(f"d{i}", s, now=NOW, max_new_tokens=300) for i, s in enumerate(slacks)]
    wait = [make_req(f"w{i}", prompt_tokens=p) for i, p in enumerate(prompts)]
    base = prefill_admission_budget(make_snapshot(now=NOW, cost=LINEAR, running=run, waiting=wait), 1.0)
    more = prefill_admission_budget(make_snapshot(now=NOW, cost=LINEAR, running=run,
                                                  waiting=[*wait, make_req("x", prompt_tokens=extra)]), 1.0)
    assert more.tokens <= base.tokens
    assert more.router_load_tokens >= base.router_load_tokens >= 0


def test_router_load_conversion():
    assert router_load_tokens(10_000, 10_000) == 0
    assert router_load_tokens(4_000, 10_000) == 6_000
    assert router_load_tokens(-500, 10_000) == 10_500
    assert router_load_tokens(12_000, 10_000) == 0  # never negative
