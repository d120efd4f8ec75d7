"""A live probe's demoted requests (bench/demotions.py): the servers list each demotion by prompt length and arrival
wall time; the bench marks the matching request, so attainment and the tail count it as the simulator does."""

from __future__ import annotations

from sglang_fair.bench.demotions import mark_demoted
from sglang_fair.core.metrics import RequestTimes, summarize

START = 1_000_000.0   # the probe's wall-clock start
OFFSET = 1.7          # bench_serving's start-up before the first send


def records(ttfts, dues):
    return [RequestTimes(f"r{i}", d, d + t, d + t + 0.5, 6, 2.0, 0.1, 6) for i, (t, d) in enumerate(zip(ttfts, dues))]


def entry(rid, prompt_tokens, due_s):
    return {"rid": rid, "prompt_tokens": prompt_tokens, "arrival_wall_s": START + OFFSET + due_s + 0.003}


def test_each_demotion_marks_the_request_of_its_length_and_time():
    lens = [500, 4000, 800, 4000, 6100, 4000]
    dues = [0.0, 1.0, 2.0, 3.0, 3.5, 9.0]
    recs = records([0.3] * 6, dues)
    entries = [entry("a", 6101, 3.5),   # one request that long (+1 token: within the tolerance): sets the offset
               entry("b", 4000, 3.0),   # three of that length: the one due at 3.0 s after the offset
               entry("b", 4000, 3.0),   # demoted again in a later plan: still one request
               entry("c", 7000, 5.0),   # no request that long
               {"rid": "old", "prompt_tokens": 500, "arrival_wall_s": START - 30.0}]  # an earlier probe's
    m = mark_demoted(recs, lens, START, entries)
    assert [i for i, r in enumerate(m.records) if r.demoted] == [3, 4]
    assert (m.demoted, m.unmatched) == (2, 1)
    assert [r.demoted for r in recs] == [False] * 6  # the input is left as it was


def test_demoted_requests_on_time_miss_attainment_and_floor_the_tail():
    """Three requests served under their 2 s TTFT SLO, the last two demoted: both are misses, and the P99 (between
    the two worst) is just over the SLO, as in the simulator."""
    recs = records([0.3, 1.1, 1.2], [0.0, 1.0, 2.0])
    before = summarize(recs)
    m = mark_demoted(recs, [100, 3000, 5000], START, [entry("x", 5000, 2.0), entry("y", 3000, 1.0)])
    after = summarize(m.records)
    assert before.attainment == 1.0 and after.attainment == 1 / 3
    assert before.p99_ttft_s < 2.0 < after.p99_ttft_s < 2.01


def test_no_demotions_or_a_probe_without_lengths_leave_the_records():
    recs = records([0.3, 0.4], [0.0, 1.0])
    assert mark_demoted(recs, [100, 200], START, []).records == recs
    m = mark_demoted(recs, [], START, [entry("x", 100, 0.0)])
    assert m.records == recs and (m.demoted, m.unmatched) == (0, 1)
