"""`fair`'s `prefill_order`: EDF by default; "sjf" serves the requests admission judged on time shortest first."""

from __future__ import annotations

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
