"""`fair`'s `prefill_order`: EDF by default; "sjf" serves the requests admission judged on time shortest first."""

from __future__ import annotations

import dataclasses

import pytest
from factories import make_req, make_snapshot

from sglang_fair.policies import make_policy

NOW = 10.0


def burst():
    # TTFT 1 s, all on time: a long prompt, then two short ones that arrived after it
    return make_snapshot(now=NOW, waiting=[make_req("long", arrival_s=NOW - 0.03, prompt_tokens=3000),
                                           make_req("short", arrival_s=NOW - 0.02, prompt_tokens=200),
                                           make_req("tiny", arrival_s=NOW - 0.01, prompt_tokens=50)])


def test_edf_serves_the_oldest_first_and_sjf_the_shortest():
    edf = make_policy("fair", max_budget_ms=50).plan(burst())
    sjf = make_policy("fair", max_budget_ms=50, prefill_order="sjf").plan(burst())
    assert [rid for rid, _ in edf.prefill] == ["long"]  # 50 ms: part of the oldest prompt
    assert [rid for rid, _ in sjf.prefill][:2] == ["tiny", "short"]
    assert dict(sjf.prefill)["tiny"] == 50 and dict(sjf.prefill)["short"] == 200
    assert sjf.demoted == edf.demoted == ()


def test_sjf_keeps_demoted_requests_after_on_time_ones():
    # "late" cannot be on time (0.95 s waited, 0.2 s of prefill); it is shorter than "ok" but still goes after it
    snap = make_snapshot(now=NOW, waiting=[make_req("late", arrival_s=NOW - 0.95, prompt_tokens=2000),
                                           make_req("ok", arrival_s=NOW - 0.01, prompt_tokens=2500)])
    plan = make_policy("fair", admission="demote", prefill_order="sjf").plan(snap)
    assert plan.demoted == ("late",) and plan.prefill[0][0] == "ok"


def test_with_admission_off_sjf_changes_nothing():
    off = make_policy("fair", admission="off", max_budget_ms=50)
    sjf = make_policy("fair", admission="off", max_budget_ms=50, prefill_order="sjf")
    assert off.plan(burst()) == sjf.plan(burst())


def test_an_unknown_order_is_refused_by_name():
    with pytest.raises(ValueError, match="prefill_order"):
        make_policy("fair", prefill_order="fifo")


def lane_and_demoted():
    # TTFT 1 s: "aged" waited 10 s (past 5 TTFT SLOs: the aged lane), "late" cannot be on time (0.9 s waited, 0.5 s
    # of prefill): demoted; "ok" is on time
    return make_snapshot(now=NOW, waiting=[make_req("aged", arrival_s=NOW - 10.0, prompt_tokens=500),
                                           make_req("late", arrival_s=NOW - 0.9, prompt_tokens=5000),
                                           make_req("ok", arrival_s=NOW - 0.01, prompt_tokens=100)])


def test_demoted_requests_follow_the_aged_lane_by_default_and_precede_it_before_aged():
    after = make_policy("fair", max_budget_ms=2000).plan(lane_and_demoted())
    before = make_policy("fair", max_budget_ms=2000, demoted_slot="before_aged").plan(lane_and_demoted())
    assert [rid for rid, _ in after.prefill] == ["ok", "aged", "late"]
    assert [rid for rid, _ in before.prefill] == ["ok", "late", "aged"]
    assert after.demoted == before.demoted == ("late",) and after.aged == before.aged == ("aged",)


def test_before_aged_leaves_the_lane_its_share():
    # 300 ms: on-time work and the demoted request may use 90% of the prefill time; the lane gets the rest
    plan = make_policy("fair", max_budget_ms=300, demoted_slot="before_aged", aged_share=0.1).plan(
        dataclasses.replace(lane_and_demoted(), one_partial_prefill=False))
    chunks = dict(plan.prefill)
    assert chunks["ok"] == 100 and 0 < chunks["aged"] < 500 and chunks["late"] < 5000
    assert chunks["aged"] * 1e-4 == pytest.approx(0.1 * (0.3 - 0.005), rel=0.02)


def test_an_unknown_demoted_slot_is_refused_by_name():
    with pytest.raises(ValueError, match="demoted_slot"):
        make_policy("fair", demoted_slot="first")
