"""The shared metrics module on hand-computed per-request timestamps."""

from __future__ import annotations

import math

import numpy as np
import pytest

from sglang_fair.core.metrics import (RequestTimes, lateness_s, meets_attainment, meets_slo, meets_tail, summarize, tbt_s,
                                 tpot_s, ttft_s)


def rt(rid="a", arrival=0.0, first=0.5, last=0.8, n=4, ttft=1.0, tpot=0.1, expected=None, times=None):
    return RequestTimes(rid, arrival, first, last, n, ttft, tpot, expected, times)


def test_ttft_tpot_tbt_lateness_by_hand():
    r = rt(arrival=1.0, first=1.5, last=1.9, n=5, times=(1.5, 1.55, 1.75, 1.8, 1.9))
    assert ttft_s(r) == pytest.approx(0.5)
    assert tpot_s(r) == pytest.approx(0.1)
    assert list(tbt_s(r)) == pytest.approx([0.05, 0.2, 0.05, 0.1])
    # deadlines 2.0, 2.1, 2.2, 2.3, 2.4 -> all early; the least early is token 2 (1.75 - 2.2 = -0.45)
    assert lateness_s(r) == pytest.approx(-0.45)
    assert meets_slo(r)


def test_lateness_without_token_times_uses_first_and_last():
    r = rt(arrival=0.0, first=1.2, last=1.5, n=3, ttft=1.0, tpot=0.1)  # first late by 0.2, last by 1.5 - 1.2 = 0.3
    assert lateness_s(r) == pytest.approx(0.3)
    assert not meets_slo(r)  # TTFT 1.2 > 1.0


def test_single_output_and_missing_token():
    one = rt(first=0.3, last=0.3, n=1)
    assert tpot_s(one) == 0.0 and meets_slo(one)
    none = rt(first=None, last=None, n=0)
    assert math.isinf(ttft_s(none)) and math.isinf(lateness_s(none)) and not meets_slo(none)


def test_unfinished_request_misses_its_slo():
    r = rt(first=0.1, last=0.2, n=2, expected=5)
    assert not r.finished and not meets_slo(r)


def test_summary_percentiles_attainment_goodput():
    recs = [rt(rid=str(i), arrival=float(i), first=i + 0.1 * (i + 1), last=i + 0.1 * (i + 1) + 0.05 * i, n=2,
               tpot=0.12) for i in range(10)]  # TTFT 0.1..1.0, TPOT 0.0..0.45; SLO 1 s / 120 ms
    s = summarize(recs)
    ttfts = np.array([0.1 * (i + 1) for i in range(10)])
    tpots = np.array([0.05 * i for i in range(10)])
    assert s.p99_ttft_s == pytest.approx(np.percentile(ttfts, 99))
    assert s.p50_tpot_s == pytest.approx(np.percentile(tpots, 50))
    met = sum(1 for t, p in zip(ttfts, tpots) if t <= 1.0 and p <= 0.12)
    assert met == 3 and s.attainment == pytest.approx(met / 10)
    span = recs[-1].last_token_s - 0.0
    assert s.span_s == pytest.approx(span) and s.goodput_rps == pytest.approx(met / span)
    assert math.isnan(s.p99_tbt_s)


def test_missing_first_tokens_rank_last_in_percentiles():
    recs = [rt(rid=str(i), first=0.1, last=0.1, n=1) for i in range(99)] + [rt(rid="x", first=None, last=None, n=0)]
    s = summarize(recs)
    assert s.p50_ttft_s == pytest.approx(0.1)
    assert s.p99_ttft_s > 1e10 and not meets_tail(s, 1.0, 0.1)


def test_criteria():
    ok = summarize([rt(rid=str(i), first=0.2, last=0.5, n=4) for i in range(20)])
    assert meets_tail(ok, 1.0, 0.1) and meets_attainment(ok)
    slow = summarize([rt(rid=str(i), first=0.2, last=0.2 + 3 * (0.2 if i < 3 else 0.05), n=4) for i in range(20)])
    assert not meets_tail(slow, 1.0, 0.1)  # 3/20 TPOT 0.2 > 0.1 in the tail
    assert slow.attainment == pytest.approx(17 / 20) and not meets_attainment(slow)


def test_a_refusal_is_a_miss_in_the_tail_but_a_lost_request_fails_the_run():
    from dataclasses import replace
    served = [rt(rid=str(i), first=0.2, last=0.5, n=4) for i in range(199)]
    never = rt(rid="x", first=None, last=None, n=0)
    refused = summarize([*served, replace(never, rejected=True)])
    assert refused.rejected == 1 and refused.finished == 199 and refused.attainment == pytest.approx(199 / 200)
    assert meets_tail(refused, 1.0, 0.1)  # 1 of 200 with TTFT +inf: inside the 1% the P99 allows
    lost = summarize([*served, never])
    assert lost.rejected == 0 and not meets_tail(lost, 1.0, 0.1)  # accepted and never served: the run fails
    many = summarize([*served[:150], *(replace(never, rid=f"x{i}", rejected=True) for i in range(50))])
    assert not meets_tail(many, 1.0, 0.1) and many.p99_ttft_s == math.inf  # refusals are not hidden from the tail
