"""Overload and recovery (bench/phases.py): phased Poisson arrivals, figures per bucket of send time, and when P99 TTFT
is back within 20% of its value before the overload."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest

from sglang_fair.bench.phases import Phase, bucket_series, phase_arrivals, recovery, request_mix
from sglang_fair.core.metrics import RequestTimes
from sglang_fair.sim.traces import Trace

TTFT_SLO_S, TPOT_SLO_S = 2.0, 0.1


def req(i: int, sent: float, ttft: float | None, tpot: float = 0.05, out: int = 11, demoted: bool = False):
    first = None if ttft is None else sent + ttft
    last = None if first is None else first + tpot * (out - 1)
    return RequestTimes(f"r{i}", sent, first, last, out if first is not None else 0, TTFT_SLO_S, TPOT_SLO_S, out,
                        demoted=demoted)


def steady(t0: float, t1: float, n: int, ttft: float, start: int = 0) -> list[RequestTimes]:
    return [req(start + j, t, ttft) for j, t in enumerate(np.linspace(t0, t1, n, endpoint=False))]


PHASES = [Phase(0.9, 100.0), Phase(2.0, 50.0), Phase(0.9, 100.0)]


def test_arrivals_follow_each_phase_rate_on_one_clock():
    arr = phase_arrivals(PHASES, capacity_rps=10.0, seed=1)
    assert [len(a) for a in arr] == pytest.approx([900, 1000, 900], rel=0.12)
    assert 0 <= arr[0][0] and arr[0][-1] < 100 <= arr[1][0] and arr[1][-1] < 150 <= arr[2][0] and arr[2][-1] < 250
    # phase i draws from seed + i: the same arrivals as phase i run alone (shifted)
    alone = phase_arrivals([Phase(0.9, 100.0)], capacity_rps=10.0, seed=3)[0]
    assert np.allclose(arr[2] - 150.0, alone)


def test_bad_phases_are_refused():
    with pytest.raises(ValueError, match="capacity_rps"):
        phase_arrivals(PHASES, capacity_rps=0.0)
    with pytest.raises(ValueError, match="phase 1"):
        phase_arrivals([Phase(1.0, 10.0), Phase(0.0, 10.0)], capacity_rps=1.0)
    with pytest.raises(ValueError, match="three phases"):
        recovery([], PHASES[:2], 10.0)


def test_request_mix_draws_trace_lengths_scaled_and_clipped():
    tr = Trace("t", np.arange(3.0), np.array([100, 5000, 9000]), np.array([10, 3000, 1]))
    mix = request_mix(tr, 300, seed=0, length_scale=1.0, max_prompt_tokens=8000, max_output_tokens=2048)
    assert set(mix) == {(100, 10), (5000, 2048), (8000, 1)}
    half = request_mix(tr, 300, seed=0, length_scale=0.5, max_prompt_tokens=8000, max_output_tokens=2048)
    assert set(half) == {(50, 10), (2500, 2048), (4500, 1)}  # scaled first, then clipped
    assert [o for _, o in half] == [o for _, o in mix]       # the same draws


def test_buckets_count_each_request_where_it_was_sent():
    refused = dataclasses.replace(req(103, 15.0, None), rejected=True)
    recs = steady(0, 10, 100, 0.5) + [req(100, 12.0, 3.0), req(101, 13.0, None), req(102, 14.0, 0.2, demoted=True),
                                      refused]
    s = bucket_series(recs, bucket_s=10.0)
    assert [b["requests"] for b in s] == [100, 4]
    assert s[0]["ttft_p99_s"] == pytest.approx(0.5) and s[0]["attainment"] == 1.0
    assert s[1]["ttft_p99_s"] == math.inf            # a request never answered ranks last
    assert s[1]["attainment"] == 0.0                 # late, unanswered, demoted, refused: four misses
    assert (s[1]["demoted"], s[1]["rejected"]) == (1, 1)
    assert s[0]["tpot_p99_s"] == pytest.approx(0.05)
    assert [b["requests"] for b in bucket_series(recs, 10.0, end_s=40.0)] == [100, 4, 0, 0]


def test_recovery_is_when_the_tail_from_then_on_is_back_within_20_percent():
    before = steady(0, 100, 500, 1.0)
    overload = steady(100, 150, 500, 30.0, start=500)
    # after: 30 s of late first tokens (the backlog), then back to 1.1 s (within 20% of 1.0)
    after = steady(150, 180, 150, 20.0, start=1000) + steady(180, 250, 350, 1.1, start=1150)
    rec = recovery(before + overload + after, PHASES, bucket_s=10.0)
    assert rec["overload_phase"] == 1
    assert rec["reference_ttft_p99_s"] == pytest.approx(1.0) and rec["bound_ttft_p99_s"] == pytest.approx(1.2)
    assert rec["recovered_after_s"] == 30.0
    assert [b["start_s"] for b in rec["series"]][:4] == [0.0, 10.0, 20.0, 30.0]
    assert rec["series"][0]["ttft_p99_s"] == pytest.approx(20.0)
    assert rec["attainment_first"] == pytest.approx(350 / 500)  # the whole 100 s phase is within the first 120 s
    assert recovery(before + overload + after, PHASES, 10.0, first_s=60.0)["attainment_first"] == pytest.approx(0.5)


def test_a_few_late_requests_in_every_bucket_keep_the_tail_from_recovering():
    """2% of the requests after the overload wait behind its backlog (demoted): the P99 never comes back, however
    good the other 98% are (the figure counts the tail, not the median)."""
    before = steady(0, 100, 500, 1.0)
    after = [req(i, t, 300.0 if i % 50 == 0 else 0.5, demoted=i % 50 == 0)
             for i, t in enumerate(np.linspace(150, 250, 500, endpoint=False))]
    rec = recovery(before + after, PHASES, bucket_s=10.0)
    assert rec["recovered_after_s"] is None
    assert rec["attainment_first"] == pytest.approx(0.98, abs=0.01)
    # the same without the late ones: recovered at once
    ok = recovery(before + [r for r in after if not r.demoted], PHASES, bucket_s=10.0)
    assert ok["recovered_after_s"] == 0.0


def test_after_an_overload_fair_serves_new_arrivals_on_time_while_stock_queues_them(tmp_path):
    """benchmark/overload_recovery.py, small: 1 minute at 0.9x, 1 at 2.5x, 2 at 0.9x of 5.52 req/s on the A100
    preset. Stock SGLang serves first come first served, so what arrives after the overload waits for its backlog;
    fair's admission serves on-time work first and the backlog behind it."""
    import json

    from factories import load_benchmark
    out = tmp_path / "r.json"
    load_benchmark("overload_recovery").main(
        ["--capacity-rps", "5.52", "--minutes", "1", "1", "2", "--load", "0.9", "2.5", "0.9", "--device", "",
         "--no-online-fit", "--policies", "fair,sglang-default", "--bucket-s", "20", "--out", str(out)])
    res = {r["policy"]: r for r in json.loads(out.read_text())["results"]}
    fair, stock = res["fair"]["recovery"], res["sglang-default"]["recovery"]
    assert fair["attainment_first"] >= 0.9 > 0.5 > stock["attainment_first"]
    assert stock["ttft_p99_first_s"] > 10.0
    # nobody lost: every request of every phase is counted
    for r in res.values():
        assert sum(ph["requests"] for ph in r["phases"]) == r["requests"]
