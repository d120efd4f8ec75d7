"""bench/iter_series.py: a live trace's iterations and a simulated twin's, on the device's clock, per bucket."""

from __future__ import annotations

import pytest

from sglang_fair.bench.iter_series import Forward, PlanRow, TwinRecorder, bucket_rows, live_rows
from sglang_fair.core.types import Plan, Snapshot
from sglang_fair.core.cost_model import CostModel


def _trace(devices=(), plans=()) -> dict:
    # the scheduler's clock reads 100.0 at wall time 1000.0
    return {"start": [{"t_s": 100.0, "wall_s": 1000.0}], "device": list(devices), "plan": list(plans)}


def _device(t_s, emulated_ms, real_ms, credit_ms=0.0, tokens=0, rows=0) -> dict:
    return {"t_s": t_s, "emulated_ms": emulated_ms, "real_ms": real_ms, "credit_ms": credit_ms,
            "prefill_tokens": tokens, "decode_rows": rows}


def test_live_rows_put_forwards_on_the_device_clock_from_the_schedules_start():
    # schedule started at wall 1010 = scheduler 110; dilation 6
    recs = _trace([_device(116.0, 60.0, 10.0, tokens=512, rows=3),
                   _device(122.0, 60.0, 30.0, credit_ms=6.0),  # began 6 ms before run_batch on the device
                   _device(128.0, 60.0, 90.0, credit_ms=6.0)])  # overran: real time + credit past the emulated 60 ms
    fwd, plans = live_rows(recs, 1010.0, 6.0)
    assert fwd[0] == Forward(1.0, pytest.approx(0.01), 512, 3)
    assert fwd[1].start_s == pytest.approx((122.0 - 0.006 - 110.0) / 6)
    assert fwd[1].device_s == pytest.approx(0.01)
    assert fwd[2].device_s == pytest.approx(0.096 / 6)
    assert plans == []


def test_live_plans_predict_only_what_they_run_and_stock_steps_are_left_out():
    recs = _trace(plans=[{"t_s": 116.0, "running": 4, "waiting": 9, "demoted": 2, "aged": 1, "decode": 4,
                          "prefill_tokens": 0, "predicted_ms": 60.0},
                         {"t_s": 117.0, "running": 0, "waiting": 0, "decode": 0, "prefill_tokens": 0,
                          "predicted_ms": 60.0},
                         {"t_s": 118.0, "stock": True}])
    _, plans = live_rows(recs, 1010.0, 6.0)
    assert plans == [PlanRow(1.0, 4, 9, 2, 1, pytest.approx(0.01)), PlanRow(pytest.approx(7 / 6), 0, 0, 0, 0, 0.0)]


def test_live_rows_need_a_start_record_and_a_positive_dilation():
    with pytest.raises(ValueError, match="start record"):
        live_rows({"device": []}, 0.0, 6.0)
    with pytest.raises(ValueError, match="dilation"):
        live_rows(_trace(), 0.0, 0.0)


def test_buckets_clip_busy_time_at_their_edges_and_rate_what_was_served():
    fwd = [Forward(0.0, 0.5, 1000, 10), Forward(0.8, 0.4, 500, 0)]  # the second spans the 1 s edge
    plans = [PlanRow(0.0, 10, 4, 0, 0, 0.6), PlanRow(0.8, 12, 2, 3, 1, 0.4), PlanRow(1.5, 8, 0, 1, 0, 0.0)]
    rows = bucket_rows(fwd, plans, 1.0, 2.0)
    assert [r["start_s"] for r in rows] == [0.0, 1.0]
    a, b = rows
    assert a["busy"] == pytest.approx(0.7)
    assert b["busy"] == pytest.approx(0.2)
    assert a["forwards"] == 2 and b["forwards"] == 0
    assert a["prefill_tokens_per_s"] == 1500 and a["decode_rows_per_s"] == 10
    assert a["tokens_per_busy_s"] == pytest.approx(1500 / 0.9, rel=1e-3)
    assert a["predicted_over_device"] == pytest.approx(1.0 / 0.9, rel=1e-3)
    assert (a["running"], a["waiting"], a["demoted_max"], a["aged_max"]) == (11.0, 3.0, 3, 1)
    assert b["tokens_per_busy_s"] is None and b["predicted_over_device"] is None and b["demoted_max"] == 1
    with pytest.raises(ValueError):
        bucket_rows(fwd, plans, 0.0, 2.0)


def test_twin_recorder_rows_each_plan_and_its_iteration_at_the_plans_time():
    cost = CostModel(base_s=0.01, per_prefill_token_s=1e-5)

    class Policy:
        name = "p"

        def plan(self, snap):
            return Plan(prefill=(("a", 300),), demoted=("b",), predicted_s=0.02)

    rec = TwinRecorder()
    pol = rec.policy(Policy())
    assert pol.name == "p"
    snap = Snapshot(now=2.5, running=(), prefilling=(), waiting=(), kv_capacity_tokens=1000, kv_used_tokens=0,
                    cost=cost)
    pol.plan(snap)
    t = rec.iteration_time(lambda prefills, decodes: 0.03)([(300, 0)], [100, 200])
    assert t == 0.03
    assert rec.plans == [PlanRow(2.5, 0, 0, 1, 0, 0.02)]
    assert rec.forwards == [Forward(2.5, 0.03, 300, 2)]
