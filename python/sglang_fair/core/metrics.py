"""One metrics module for simulated and live runs: per-request timestamps in, latency metrics and summaries out.

Definitions (seconds on the caller's clock):
- TTFT = first token - arrival.
- TPOT = (last token - first token) / (outputs - 1); 0 for a single-output request.
- TBT = gaps between consecutive token times (needs per-token times).
- Envelope deadline of token j (j = 0 first): arrival + ttft_slo + j * tpot_slo; lateness = max over tokens of
  (token time - deadline), using every token time when known, else the first and the last token.
- A request meets its SLO when it finished (produced all its outputs), TTFT <= ttft_slo and TPOT <= tpot_slo.
A request that never produced a token counts as missing its SLO; its TTFT is +inf in percentiles. So does one
refused at arrival (`RequestTimes.rejected`, HTTP 429): never served, an SLO miss. A request that a policy demoted to
best effort (`RequestTimes.demoted`, SLO-aware admission) is an SLO miss whenever it is served: in the percentiles its
TTFT is the one it got, and never less than just over its SLO (`tail_ttft_s`), as a late request that was not
demoted counts by its TTFT (docs/decisions.md, 2026-12-04).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterable, Sequence

import numpy as np


@dataclass(frozen=True, slots=True)
class RequestTimes:
    """What a run records about one request."""

    rid: str
    arrival_s: float
    first_token_s: float | None
    last_token_s: float | None
    n_outputs: int
    ttft_slo_s: float
    tpot_slo_s: float
    expected_outputs: int | None = None
    """Outputs the request asked for; None when unknown (then any produced output counts as finished)."""
    token_times_s: tuple[float, ...] | None = None
    """Every output token's time, when recorded."""
    demoted: bool = False
    """The scheduler demoted it to best effort (its TTFT SLO could no longer be met): counted as an SLO miss, in the
    percentiles at the TTFT it got but never under just over its SLO (`tail_ttft_s`)."""
    rejected: bool = False
    """Refused at arrival (HTTP 429, `--fair-admission reject`): never served, an SLO miss (no token: TTFT +inf)."""

    @property
    def finished(self) -> bool:
        if self.first_token_s is None or self.n_outputs < 1:
            return False
        return self.expected_outputs is None or self.n_outputs >= self.expected_outputs


def ttft_s(r: RequestTimes) -> float:
    return math.inf if r.first_token_s is None else r.first_token_s - r.arrival_s


def tail_ttft_s(r: RequestTimes) -> float:
    """r's TTFT as the percentiles count it: `ttft_s`, but a demoted request, an SLO miss, is never under the next
    float above its TTFT SLO. Not +inf: served, its real TTFT weighs in the tail as a late request's does, where an
    infinite one would decide a P99 of 100 requests by itself (numpy's linear rule puts 1% of the largest value in
    it) while a request as late but not demoted moves it by 1% of its lateness."""
    t = ttft_s(r)
    return max(t, math.nextafter(r.ttft_slo_s, math.inf)) if r.demoted else t


def tpot_s(r: RequestTimes) -> float:
    if r.first_token_s is None:
        return math.inf
    if r.n_outputs <= 1:
        return 0.0
    return (r.last_token_s - r.first_token_s) / (r.n_outputs - 1)


def tbt_s(r: RequestTimes) -> np.ndarray:
    """Gaps between consecutive output tokens (empty without per-token times)."""
    if not r.token_times_s or len(r.token_times_s) < 2:
        return np.empty(0)
    return np.diff(np.asarray(r.token_times_s, dtype=np.float64))


def lateness_s(r: RequestTimes) -> float:
    """Max over tokens of (token time - envelope deadline); +inf when no token came."""
    if r.first_token_s is None:
        return math.inf
    if r.token_times_s:
        t = np.asarray(r.token_times_s, dtype=np.float64)
        ddl = r.arrival_s + r.ttft_slo_s + np.arange(len(t)) * r.tpot_slo_s
        return float(np.max(t - ddl))
    first = r.first_token_s - (r.arrival_s + r.ttft_slo_s)
    last = r.last_token_s - (r.arrival_s + r.ttft_slo_s + (r.n_outputs - 1) * r.tpot_slo_s)
    return max(first, last)


def meets_slo(r: RequestTimes) -> bool:
    return not r.demoted and r.finished and ttft_s(r) <= r.ttft_slo_s and tpot_s(r) <= r.tpot_slo_s


@dataclass(frozen=True, slots=True)
class Summary:
    n: int
    finished: int
    attainment: float
    """Fraction of requests meeting their SLO."""
    goodput_rps: float
    """Requests meeting their SLO per second of the run's span (first arrival to last token)."""
    throughput_tok_s: float
    p50_ttft_s: float
    p90_ttft_s: float
    p99_ttft_s: float
    p50_tpot_s: float
    p90_tpot_s: float
    p99_tpot_s: float
    p99_tbt_s: float
    """NaN without per-token times."""
    p99_lateness_s: float
    span_s: float
    rejected: int = 0
    """Requests refused at arrival (HTTP 429): SLO misses, not lost requests (the client was told at once)."""
    demoted: int = 0
    """Requests a policy demoted to best effort (SLO misses, in the percentiles at their TTFT but at least just over
    the SLO; served all the same)."""

    def to_dict(self) -> dict:
        return {k: getattr(self, k) for k in self.__slots__}


_BIG = 1e300


def _pct(x: np.ndarray, q: float) -> float:
    """Percentile (numpy's linear rule) where +inf entries (requests without a token) rank last."""
    if not len(x):
        return math.nan
    v = float(np.percentile(np.minimum(x, _BIG), q))
    return math.inf if v > 1e200 else v


def summarize(records: Sequence[RequestTimes] | Iterable[RequestTimes]) -> Summary:
    recs = list(records)
    n = len(recs)
    ttft = np.array([tail_ttft_s(r) for r in recs], dtype=np.float64)
    tpot = np.array([tpot_s(r) for r in recs if r.first_token_s is not None and r.n_outputs > 1], dtype=np.float64)
    late = np.array([lateness_s(r) for r in recs], dtype=np.float64)
    met = sum(1 for r in recs if meets_slo(r))
    finished = sum(1 for r in recs if r.finished)
    tbts = [tbt_s(r) for r in recs if r.token_times_s]
    tbt = np.concatenate(tbts) if tbts else np.empty(0)
    start = min((r.arrival_s for r in recs), default=0.0)
    end = max((r.last_token_s for r in recs if r.last_token_s is not None), default=start)
    span = max(end - start, 0.0)
    tokens = sum(r.n_outputs for r in recs)
    return Summary(
        n=n, finished=finished, attainment=met / n if n else math.nan,
        goodput_rps=met / span if span > 0 else math.nan,
        throughput_tok_s=tokens / span if span > 0 else math.nan,
        p50_ttft_s=_pct(ttft, 50), p90_ttft_s=_pct(ttft, 90), p99_ttft_s=_pct(ttft, 99),
        p50_tpot_s=_pct(tpot, 50), p90_tpot_s=_pct(tpot, 90), p99_tpot_s=_pct(tpot, 99),
        p99_tbt_s=_pct(tbt, 99), p99_lateness_s=_pct(late, 99), span_s=span, rejected=sum(r.rejected for r in recs),
        demoted=sum(r.demoted for r in recs),
    )


def meets_tail(s: Summary, ttft_slo_s: float, tpot_slo_s: float) -> bool:
    """The tail criterion: every request finished or was refused at arrival, P99 TTFT <= ttft_slo and P99 TPOT <=
    tpot_slo. A refused request (HTTP 429, `--fair-admission reject`) is an SLO miss with TTFT +inf, and a demoted one
    a miss at its TTFT, at least just over the SLO (`tail_ttft_s`); only a request that was accepted and never
    finished fails the run outright. numpy's linear rule gives the largest value a share of a P99 over up to 100
    requests, so there one refused request (+inf) fails it."""
    tpot_ok = math.isnan(s.p99_tpot_s) or s.p99_tpot_s <= tpot_slo_s
    return s.finished + s.rejected == s.n and s.p99_ttft_s <= ttft_slo_s and tpot_ok


def meets_attainment(s: Summary, target: float = 0.9) -> bool:
    """The attainment criterion: at least `target` of the requests meet their SLO."""
    return s.attainment >= target
