"""`fair` with SLO-aware admission (`admission="demote"`): a request whose TTFT deadline can no longer be met is
demoted to best effort, served after on-time work, flagged in the plan and counted as an SLO miss by the simulator."""

from __future__ import annotations

import dataclasses
import heapq
import math

import pytest
from factories import COST, make_req, make_running, make_snapshot, make_trace
from hypothesis import given
from hypothesis import strategies as st
from test_policy_properties import SETTINGS, assert_valid, snapshots

from sglang_fair.core.metrics import RequestTimes, meets_slo, meets_tail, summarize
from sglang_fair.policies import make_policy
from sglang_fair.policies.admission import admission_split, hopeless_split, prefill_s, prefill_share
from sglang_fair.policies.common import edf_key, edf_sorted, is_arrival_ordered, merge_edf
from sglang_fair.policies.fair import FairParams
from sglang_fair.sim.engine import EngineConfig, simulate

NOW = 10.0


def queue():
    # TTFT 1 s. "late" arrived 0.95 s ago and needs 0.2 s of prefill: hopeless. "ok" arrived just now.
    late = make_req("late", arrival_s=NOW - 0.95, prompt_tokens=2000)
    ok = make_req("ok", arrival_s=NOW - 0.01, prompt_tokens=500)
    return make_snapshot(now=NOW, waiting=[late, ok])


def test_a_hopeless_request_is_demoted_and_served_after_on_time_ones():
    snap = queue()
    off = make_policy("fair", admission="off").plan(snap)
    assert off.prefill[0][0] == "late" and off.demoted == ()  # EDF: the older deadline first
    plan = make_policy("fair", admission="demote").plan(snap)
    assert plan.demoted == ("late",)
    assert [rid for rid, _ in plan.prefill][:1] == ["ok"]  # on-time work first, the demoted one after
    assert dict(plan.prefill).get("ok") == 500


def test_demotion_counts_the_queue_ahead_and_the_decode_share():
    # each request alone is feasible; the second one behind the first is not
    a = make_req("a", arrival_s=NOW - 0.2, prompt_tokens=5000)  # 0.5 s of prefill
    b = make_req("b", arrival_s=NOW - 0.1, prompt_tokens=5000)
    snap = make_snapshot(now=NOW, waiting=[a, b])
    on_time, demoted = hopeless_split(snap)
    assert [r.rid for r in on_time] == ["a"] and [r.rid for r in demoted] == ["b"]
    # running decodes that take 60% of every TPOT leave 40% for prefill: now "a" is hopeless too
    running = [make_running(f"d{i}", arrival_s=NOW - 1.0) for i in range(275)]  # 5 ms + 275 x 0.2 ms = 60 ms
    on_time, demoted = hopeless_split(make_snapshot(now=NOW, waiting=[a, b], running=running))
    assert on_time == [] and [r.rid for r in demoted] == ["a", "b"]


def test_demote_longest_loses_fewer_requests_than_demote():
    # 1 s TTFT, 0.1 ms per token: A 0.2 s, B 0.7 s, C 0.2 s, D 0.2 s in EDF order; C would finish at 1.1 s
    w = [make_req(k, arrival_s=NOW - 0.001 * (4 - i), prompt_tokens=n)
         for i, (k, n) in enumerate((("A", 2000), ("B", 7000), ("C", 2000), ("D", 2000)))]
    snap = make_snapshot(now=NOW, waiting=w)
    on_time, demoted = hopeless_split(snap)
    assert [r.rid for r in demoted] == ["C", "D"]  # the late ones, in turn
    on_time, demoted = hopeless_split(snap, longest=True)
    assert [r.rid for r in on_time] == ["A", "C", "D"] and [r.rid for r in demoted] == ["B"]
    plan = make_policy("fair", admission="demote-longest").plan(snap)
    assert plan.demoted == ("B",) and [rid for rid, _ in plan.prefill][:3] == ["A", "C", "D"]


def test_no_demotion_without_pressure_and_the_parameter_is_checked():
    snap = make_snapshot(now=NOW, waiting=[make_req("w", arrival_s=NOW)])
    assert make_policy("fair", admission="demote").plan(snap) == make_policy("fair", admission="off").plan(snap)
    with pytest.raises(ValueError, match="admission"):
        FairParams(admission="reject")


def test_demoted_requests_count_as_misses():
    rec = RequestTimes("a", 0.0, 0.5, 1.0, 5, 1.0, 0.2, 5)
    assert meets_slo(rec)
    demoted = RequestTimes("a", 0.0, 0.5, 1.0, 5, 1.0, 0.2, 5, demoted=True)
    assert not meets_slo(demoted)
    s = summarize([demoted] * 2 + [rec] * 98)
    # served on time all the same, a demoted request is a miss: the tail counts it just over its SLO, so it fails
    assert s.attainment == 0.98 and 1.0 < s.p99_ttft_s < 1.0 + 1e-9 and not meets_tail(s, 1.0, 0.2)
    assert summarize([dataclasses.replace(demoted, first_token_s=None, last_token_s=None)]).p99_ttft_s == math.inf


def test_a_demoted_request_weighs_in_the_tail_as_a_late_one_does():
    # 100 requests, one 0.3 s past its 1 s TTFT SLO: demoted or not, the P99 (numpy's linear rule) moves by 1% of it
    ok = [RequestTimes(f"r{i}", 0.0, 0.5, 1.0, 5, 1.0, 0.2, 5) for i in range(99)]
    late = RequestTimes("late", 0.0, 1.3, 1.8, 5, 1.0, 0.2, 5)
    plain, demoted = summarize([*ok, late]), summarize([*ok, dataclasses.replace(late, demoted=True)])
    assert plain.p99_ttft_s == demoted.p99_ttft_s == pytest.approx(0.5 + 0.01 * 0.8)
    assert meets_tail(demoted, 1.0, 0.2) and demoted.demoted == 1 and demoted.attainment == 0.99


def test_simulator_records_demotion_and_demote_protects_the_rest_of_a_burst():
    # a burst of 30 prompts of 2000 tokens (0.2 s each at 1e-4 s/token): at most ~5 can start within 1 s
    rows = [(0.0, 2000, 20) for _ in range(30)] + [(1.0 + 0.05 * i, 200, 20) for i in range(20)]
    trace = make_trace(rows)
    cfg = EngineConfig(ttft_slo_ms=1000.0, tpot_slo_ms=100.0)
    off = simulate(trace, make_policy("fair", admission="off"), COST, cfg)
    dem = simulate(trace, make_policy("fair", admission="demote"), COST, cfg)
    assert not any(r.demoted for r in off.records)
    flagged = [r for r in dem.records if r.demoted]
    assert flagged and all(r.finished for r in dem.records)
    assert all(r.first_token_s - r.arrival_s > 1.0 for r in flagged)  # demoted ones were indeed late
    late_arrivals = dem.records[30:]  # the prompts after the burst are on time once the hopeless ones step aside
    assert all(meets_slo(r) for r in late_arrivals)
    assert sum(meets_slo(r) for r in dem.records) > sum(meets_slo(r) for r in off.records)


@pytest.mark.parametrize("mode", ["demote", "demote-longest"])
@SETTINGS
@given(snap=snapshots())
def test_admission_plans_are_valid_and_demote_only_waiting_requests(mode, snap):
    plan = make_policy("fair", admission=mode).plan(snap)
    assert_valid(snap, plan)
    waiting = {r.rid for r in snap.waiting}
    assert set(plan.demoted) <= waiting and len(set(plan.demoted)) == len(plan.demoted)
    # every on-time request planned comes before every demoted one
    order = [rid for rid, _ in plan.prefill]
    first_demoted = min((order.index(rid) for rid in plan.demoted if rid in order), default=len(order))
    assert not set(order[first_demoted:]) - set(plan.demoted) - {r.rid for r in snap.prefilling}


def test_a_request_waiting_past_the_age_bound_is_no_longer_demoted():
    # TTFT 1 s. "old" arrived 6 s ago (hopeless for 5 s); "new" arrived now and fits.
    old = make_req("old", arrival_s=NOW - 6.0, prompt_tokens=2000)
    new = make_req("new", arrival_s=NOW - 0.01, prompt_tokens=500)
    snap = make_snapshot(now=NOW, waiting=[old, new])
    assert [r.rid for r in hopeless_split(snap)[1]] == ["old"]  # no bound: demoted for as long as it is late
    on_time, demoted = hopeless_split(snap, aged_after_ttft=5.0)
    assert [r.rid for r in on_time] == ["old", "new"] and demoted == []  # past 5 x TTFT: EDF again, first
    plan = make_policy("fair", admission="demote", demote_max_wait_ttft=5.0).plan(snap)
    # not demoted: in the aged lane, served in the same step after the on-time "new" (test_policy_fair_aged_share.py)
    assert plan.demoted == () and [rid for rid, _ in plan.prefill] == ["new", "old"]
    plan = make_policy("fair", admission="demote", demote_max_wait_ttft=5.0, aged_share=1.0).plan(snap)
    assert plan.demoted == () and plan.prefill[0][0] == "old"  # aged first, as before the seventeenth session
    assert make_policy("fair", admission="demote", demote_max_wait_ttft=7.0).plan(snap).demoted == ("old",)


def test_demote_longest_never_picks_an_aged_request():
    # A (aged, the longest) and B, C in EDF order, 1 s TTFT, 0.1 ms per token: someone must go
    w = [make_req("A", arrival_s=NOW - 3.0, prompt_tokens=7000), make_req("B", arrival_s=NOW - 0.002,
         prompt_tokens=2000), make_req("C", arrival_s=NOW - 0.001, prompt_tokens=2000)]
    snap = make_snapshot(now=NOW, waiting=w)
    assert [r.rid for r in hopeless_split(snap, longest=True)[1]] == ["A"]
    on_time, demoted = hopeless_split(snap, longest=True, aged_after_ttft=2.0)
    assert "A" in [r.rid for r in on_time] and "A" not in [r.rid for r in demoted]


@pytest.mark.parametrize("bad", [0, -1.0, True, "5"])
def test_the_age_bound_must_be_positive(bad):
    with pytest.raises(ValueError, match="demote_max_wait_ttft"):
        FairParams(demote_max_wait_ttft=bad)


def _reference_split(snap, longest=False, aged_after_ttft=math.inf):
    """hopeless_split as first written (one request at a time, prefill_s per request): the bulk version must match."""
    now, share = snap.now, prefill_share(snap)
    waiting = snap.waiting  # EDF: kept as it is when arrival-ordered with one TTFT SLO (ties in list order)
    if not (len({r.ttft_slo_s for r in waiting}) == 1 and is_arrival_ordered(waiting)):
        waiting = sorted(waiting, key=edf_key)
    on_time, demoted, kept, ahead = [], [], [], 0.0
    for r, is_waiting in merge_edf(snap.prefilling, iter(waiting)):
        t = prefill_s(snap.cost, r)
        late = now + (ahead + t) / share > r.arrival_s + r.ttft_slo_s
        aged = is_waiting and now - r.arrival_s > aged_after_ttft * r.ttft_slo_s
        if is_waiting and late and not longest and not aged:
            demoted.append(r)
            continue
        ahead += t
        if is_waiting:
            if not aged:
                heapq.heappush(kept, (-t, -len(on_time)))  # the longest on top, the latest of equally long ones
            on_time.append(r)
        if late and longest and kept:
            neg_t, i = heapq.heappop(kept)
            ahead += neg_t
            demoted.append(on_time[-i])
            on_time[-i] = None
    if longest and demoted:
        on_time = [r for r in on_time if r is not None]
        demoted.sort(key=edf_key)
    return on_time, demoted


@pytest.mark.parametrize("longest", [False, True])
@pytest.mark.parametrize("aged_after_ttft", [math.inf, 2.0, 0.5])
@SETTINGS
@given(snap=snapshots())
def test_bulk_hopeless_split_equals_the_one_request_at_a_time_reference(longest, aged_after_ttft, snap):
    if not snap.waiting:
        return
    got = hopeless_split(snap, longest=longest, aged_after_ttft=aged_after_ttft)
    want = _reference_split(snap, longest=longest, aged_after_ttft=aged_after_ttft)
    assert [[r.rid for r in part] for part in got] == [[r.rid for r in part] for part in want]


def _head_length(snap):
    """How many of the oldest waiting requests have a TTFT deadline already behind `now` (the windowed split's head)."""
    s = 0
    for r in snap.waiting:
        if not r.arrival_s + r.ttft_slo_s < snap.now:
            break
        s += 1
    return s


@pytest.mark.parametrize("longest", [False, True])
@pytest.mark.parametrize("aged_after_ttft", [math.inf, 1.5])
@SETTINGS
@given(snap=snapshots(), window=st.integers(1, 4))
def test_the_judging_window_keeps_the_whole_walk_for_a_short_live_queue_and_is_its_spec_beyond(
        longest, aged_after_ttft, snap, window):
    if not snap.waiting:
        return
    got_on, unjudged, got_dem = admission_split(snap, longest, aged_after_ttft, window)
    want_on, want_dem = _reference_split(snap, longest=longest, aged_after_ttft=aged_after_ttft)
    s = _head_length(snap)
    assert [r.rid for r in hopeless_split(snap, longest, aged_after_ttft, window)[0]] == \
        [r.rid for r in got_on] + [r.rid for r in unjudged]
    if len(snap.waiting) - s <= window:  # every request still able to be on time is judged: the whole walk's answer
        assert unjudged == () and [r.rid for r in got_on] == [r.rid for r in want_on]
        assert sorted(r.rid for r in got_dem) == sorted(r.rid for r in want_dem)
        assert [edf_key(r)[:2] for r in got_dem] == sorted(edf_key(r)[:2] for r in got_dem)
        return
    # beyond it: the oldest past their deadline are demoted (aged ones judged), `window` more judged, the rest not
    head = snap.waiting[:s]
    aged = [r for r in head if snap.now - r.arrival_s > aged_after_ttft * r.ttft_slo_s]
    reduced = dataclasses.replace(snap, waiting=(*aged, *snap.waiting[s:s + window]))
    ref_on, ref_dem = _reference_split(reduced, longest=longest, aged_after_ttft=aged_after_ttft)
    assert [r.rid for r in got_on] == [r.rid for r in ref_on]
    assert [r.rid for r in unjudged] == [r.rid for r in snap.waiting[s + window:]]
    past = [r for r in head if r not in aged]
    assert sorted(r.rid for r in got_dem) == sorted(r.rid for r in past + ref_dem)
    assert [edf_key(r)[:2] for r in got_dem] == sorted(edf_key(r)[:2] for r in got_dem)


@pytest.mark.parametrize("mode", ["demote", "demote-longest"])
@SETTINGS
@given(snap=snapshots())
def test_windowed_admission_plans_are_valid_and_serve_judged_on_time_requests_first(mode, snap):
    plan = make_policy("fair", admission=mode, admission_window_reqs=2).plan(snap)
    assert_valid(snap, plan)
    assert set(plan.demoted) <= {r.rid for r in snap.waiting}
    order = [rid for rid, _ in plan.prefill]
    first_demoted = min((order.index(rid) for rid in plan.demoted if rid in order), default=len(order))
    assert not set(order[first_demoted:]) - set(plan.demoted) - {r.rid for r in snap.prefilling}


def test_a_long_queue_is_judged_in_a_window_and_the_late_head_still_goes():
    # 1 s TTFT; 300 requests arrived 1.5 s ago (late whatever happens) and 300 in the last 0.3 s
    late = [make_req(f"old{i}", arrival_s=NOW - 1.5 + i * 1e-4, prompt_tokens=100) for i in range(300)]
    fresh = [make_req(f"new{i}", arrival_s=NOW - 0.3 + i * 1e-4, prompt_tokens=3000 if i % 2 else 50)
             for i in range(300)]
    snap = make_snapshot(now=NOW, waiting=late + fresh)
    on_time, unjudged, demoted = admission_split(snap, longest=True, window=32)
    assert {r.rid for r in late} <= {r.rid for r in demoted}
    assert [r.rid for r in unjudged] == [r.rid for r in fresh[32:]]
    judged_dem = [r for r in demoted if r.rid.startswith("new")]
    assert judged_dem and all(r.prompt_tokens == 3000 for r in judged_dem)  # the long ones of the window go
    whole_on, whole_dem = hopeless_split(snap, longest=True)
    assert {r.rid for r in whole_dem} >= {r.rid for r in late}  # the whole walk agrees on the head


@SETTINGS
@given(st.lists(st.tuples(st.sampled_from([0.0, 0.5, 1.0, 1.5]), st.sampled_from([0.5, 1.0, 2.0]),
                          st.integers(0, 5)), max_size=30))
def test_edf_sorted_is_sorting_by_edf_key(specs):
    """`edf_sorted` (float deadlines, the tuple key only on ties) orders as `sorted(key=edf_key)`: equal deadlines from
    different arrivals and SLOs (0.5 + 1.0 = 1.0 + 0.5), equal arrivals (ties by rid), duplicates of both."""
    reqs = [make_req(f"r{rid}-{i}", arrival_s=a, ttft_slo_s=t) for i, (a, t, rid) in enumerate(specs)]
    assert edf_sorted(reqs) == sorted(reqs, key=edf_key)
