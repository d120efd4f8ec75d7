"""`fair` with `full_kv_progress`: with no free KV and no urgent decode the default plan is empty (the engine idles
until a decode turns urgent); with the parameter the least-slack decode runs now and the most-slack one is preempted.
No decode is urgent only when the least slack exceeds max_budget_ms + TPOT and the token-gap guard allows a full
budget (TPOT > max_budget_ms / max_token_gap_tpot = 200 ms): relaxed SLOs, here TPOT 1 s."""

from __future__ import annotations

import pytest
from factories import kv_held, make_req, make_running_with_slack, make_snapshot

from sglang_fair.policies import make_policy
from sglang_fair.policies.fair import FairParams

NOW = 100.0


def full_snapshot():
    running = [make_running_with_slack(f"d{i}", slack_s=5.0 + i, now=NOW, tpot_slo_s=1.0, last_token_s=NOW - 0.01)
               for i in range(3)]
    return make_snapshot(now=NOW, running=running, waiting=[make_req("w", arrival_s=NOW)],
                         kv_capacity_tokens=kv_held(running))


def test_full_kv_without_urgent_decodes_idles_by_default_and_makes_progress_with_the_parameter():
    snap = full_snapshot()
    assert make_policy("fair").plan(snap).is_empty
    plan = make_policy("fair", full_kv_progress=True).plan(snap)
    assert plan.preempt == ("d2",) and plan.decode[0] == "d0"  # the KV d2 frees lets d1 decode too


def test_full_kv_progress_changes_nothing_while_kv_is_free():
    snap = full_snapshot()
    roomy = make_snapshot(now=NOW, running=snap.running, waiting=snap.waiting, kv_capacity_tokens=10**6)
    assert make_policy("fair", full_kv_progress=True).plan(roomy) == make_policy("fair").plan(roomy)
    with pytest.raises(ValueError, match="full_kv_progress"):
        FairParams(full_kv_progress=1)
