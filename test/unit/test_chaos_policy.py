"""The `chaos` testing aid (no server): every injected fault is one the adapter must catch, except `kv_overflow`,
which must stay a valid plan; the schedule is deterministic; bad chaos parameters are rejected."""

from __future__ import annotations

import pytest

from factories import make_req, make_running, make_snapshot
from sglang_fair.policies import make_policy
from sglang_fair.core.plan_check import plan_problem
from sglang_fair.policies.chaos import COUNTED_KINDS, FAULT_KINDS, ChaosParams, ChaosPolicy


def _snaps():
    busy = make_snapshot(running=[make_running("d0"), make_running("d1")],
                         prefilling=[make_req("p", prompt_tokens=300, prefilled_tokens=100)],
                         waiting=[make_req("w", prompt_tokens=50)])
    only_running = make_snapshot(running=[make_running("d0")])
    only_waiting = make_snapshot(waiting=[make_req("w", prompt_tokens=50)])
    return {"busy": busy, "only_running": only_running, "only_waiting": only_waiting, "idle": make_snapshot()}


@pytest.mark.parametrize("snap_name", ["busy", "only_running", "only_waiting", "idle"])
@pytest.mark.parametrize("kind", COUNTED_KINDS)
def test_every_counted_fault_is_caught_by_the_adapter_checks(kind, snap_name):
    snap = _snaps()[snap_name]
    chaos = ChaosPolicy(make_policy("fair"), ChaosParams(every_n_steps=1, kinds=(kind,)))
    if kind == "raise":
        with pytest.raises(RuntimeError, match="chaos"):
            chaos.plan(snap)
    else:
        assert plan_problem(chaos.plan(snap), snap) is not None
    assert chaos.injected == {kind: 1}


@pytest.mark.parametrize("snap_name", ["busy", "only_running", "only_waiting", "idle"])
def test_kv_overflow_is_a_valid_plan(snap_name):
    snap = _snaps()[snap_name]
    chaos = ChaosPolicy(make_policy("fair"), ChaosParams(every_n_steps=1, kinds=("kv_overflow",)))
    plan = chaos.plan(snap)
    assert plan_problem(plan, snap) is None
    if snap.waiting or snap.prefilling:
        assert plan.prefill_tokens == sum(r.remaining_prompt_tokens for r in (*snap.prefilling, *snap.waiting))


def test_schedule_is_every_nth_call_cycling_through_kinds():
    snap = _snaps()["busy"]
    inner = make_policy("sarathi")
    chaos = ChaosPolicy(inner, ChaosParams(every_n_steps=3, kinds=("unknown_rid", "empty_plan")))
    plans = [chaos.plan(snap) for _ in range(12)]
    faulty = [i for i, p in enumerate(plans) if plan_problem(p, snap) is not None]
    assert faulty == [2, 5, 8, 11]
    assert chaos.injected == {"unknown_rid": 2, "empty_plan": 2}
    assert all(plans[i] == inner.plan(snap) for i in range(12) if i not in faulty)


def test_bad_chaos_params_are_rejected():
    for bad in ({"every_n_steps": 0}, {"every_n_steps": 1.5}, {"every_n_steps": True}, {"kinds": ()},
                {"kinds": ("meteor",)}):
        with pytest.raises(ValueError):
            ChaosParams(**bad)
    assert set(ChaosParams().kinds) == set(FAULT_KINDS)


def test_serve_rejects_chaos_on_the_command_line():
    from sglang_fair import serve

    ns, _ = serve.build_parser().parse_known_args(["--fair-param", 'chaos={"every_n_steps": 2}'])
    with pytest.raises(ValueError, match="fair-param"):
        serve.runtime_config(ns)
