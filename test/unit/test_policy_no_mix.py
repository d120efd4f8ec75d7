"""`Snapshot.mixing_allowed = False` (issue 13 item 8: the engine cannot put prefill and decode in one forward):
every policy's plan is prefill-only or decode-only, still valid, and each policy keeps its character."""

from __future__ import annotations

from dataclasses import replace

import pytest
from factories import make_running, make_req, make_snapshot
from hypothesis import given
from test_policy_properties import SETTINGS, assert_valid, snapshots

from sglang_fair.policies import make_policy, policy_names


@pytest.mark.parametrize("name", policy_names())
@SETTINGS
@given(snap=snapshots())
def test_no_plan_mixes_where_mixing_is_not_allowed(name, snap):
    snap = replace(snap, mixing_allowed=False)
    plan = make_policy(name).plan(snap)
    assert_valid(snap, plan)
    assert not (plan.prefill and plan.decode)


def burst(now: float = 10.0):
    running = [make_running(f"d{i}", arrival_s=now - 5.0, output_tokens=20, first_token_s=now - 1.5,
                            last_token_s=now - 0.05) for i in range(4)]
    waiting = [make_req(f"w{i}", arrival_s=now - 0.1, prompt_tokens=300) for i in range(2)]
    return make_snapshot(now=now, running=running, waiting=waiting)


def test_fair_without_mixing_prefills_alone_while_decodes_have_slack_and_decodes_alone_when_urgent():
    snap = replace(burst(), mixing_allowed=False)
    plan = make_policy("fair").plan(snap)
    assert plan.prefill and not plan.decode
    mixed = make_policy("fair").plan(burst())
    assert mixed.prefill and mixed.decode  # the same snapshot mixes when allowed
    late = replace(snap, now=snap.now + 2.0)  # every decode is now behind: urgent
    plan = make_policy("fair").plan(late)
    assert plan.decode and not plan.prefill


def test_sarathi_without_mixing_is_sglang_without_mixed_chunk():
    snap = replace(burst(), mixing_allowed=False)
    plan = make_policy("sarathi", token_budget=512).plan(snap)
    assert plan.decode == () and plan.prefill_tokens == 512  # the whole budget goes to prefill
    drained = replace(snap, waiting=())
    assert len(make_policy("sarathi").plan(drained).decode) == 4


def test_slai_without_mixing_runs_critical_decodes_alone():
    snap = replace(burst(), mixing_allowed=False)
    plan = make_policy("slai").plan(snap)
    assert plan.prefill and not plan.decode
    critical = replace(snap, now=snap.now + 1.0)  # last token + TPOT has passed: critical
    plan = make_policy("slai").plan(critical)
    assert plan.decode and not plan.prefill
