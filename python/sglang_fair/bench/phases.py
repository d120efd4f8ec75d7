"""Overload and recovery: phased Poisson load and the figures of each stretch of time after it.

One load schedule, phases back to back (e.g. 0.9x capacity, then 2x, then 0.9x again), replayed without a pause
between phases, so the requests of the last phase arrive while the overload's backlog is still queued. The same
schedule runs live (`benchmark/soak.py --continuous`) and in the simulator (`benchmark/overload_recovery.py`).

Recovery (issue 14's soak criterion): P99 TTFT back within `tolerance` (20%) of its value before the overload. The
figures are per bucket of send time (`bucket_s`): each request counts in the bucket it was sent in, so a bucket's
P99 TTFT is what a client sending then saw. The time to recover is from the overload phase's end to the first bucket
start t such that the P99 TTFT of every request sent from t to the recovery phase's end is within the tolerance of
the phase before the overload (None: never). Over all requests from t on, not bucket by bucket: a bucket holds a few
hundred requests, whose P99 is its third-worst and moves by 50% from minute to minute at a steady load.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Sequence

import numpy as np

from ..core.metrics import RequestTimes, _pct, meets_slo, tail_ttft_s, tpot_s

RECOVERY_TOLERANCE = 0.2
"""P99 TTFT counts as recovered within this fraction above its value before the overload (issue 14)."""


@dataclass(frozen=True, slots=True)
class Phase:
    load: float
    """Fraction of the capacity the phase's arrivals come at."""
    duration_s: float


def phase_arrivals(phases: Sequence[Phase], capacity_rps: float, seed: int = 1) -> list[np.ndarray]:
    """Poisson arrival times of each phase, on one clock starting at 0 (phase i draws from seed + i, so a phase's
    arrivals are the same whether the phases run back to back or one by one)."""
    if not capacity_rps > 0:
        raise ValueError(f"capacity_rps must be > 0, got {capacity_rps!r}")
    out, t0 = [], 0.0
    for i, ph in enumerate(phases):
        if not (ph.load > 0 and ph.duration_s > 0):
            raise ValueError(f"phase {i}: load and duration must be > 0, got {ph}")
        rate = ph.load * capacity_rps
        rng = np.random.default_rng(seed + i)
        gaps = rng.exponential(1.0 / rate, size=int(rate * ph.duration_s * 1.5) + 10)
        a = np.cumsum(gaps)
        out.append(t0 + a[a < ph.duration_s])
        t0 += ph.duration_s
    return out


def request_mix(trace, n: int, seed: int, *, length_scale: float = 1.0, max_prompt_tokens: int = 8000,
                max_output_tokens: int = 2048) -> list[tuple[int, int]]:
    """`n` (prompt, output) lengths drawn at random from a trace (`sim.traces.Trace`), prompts scaled by
    `length_scale`, both clipped (prompts to [16, max_prompt_tokens], outputs to [1, max_output_tokens])."""
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(trace.prompt_tokens), size=n)
    p = np.clip(np.round(trace.prompt_tokens[idx] * length_scale), 16, max_prompt_tokens).astype(int)
    o = np.clip(trace.output_tokens[idx], 1, max_output_tokens).astype(int)
    return list(zip(p.tolist(), o.tolist()))


def _q(x: list[float], p: float) -> float | None:
    """Percentile (core.metrics' rule: +inf, a request never answered, ranks last), rounded; None when empty."""
    if not x:
        return None
    v = _pct(np.asarray(x, dtype=float), p)
    return v if math.isinf(v) else round(v, 4)


def phase_starts(phases: Sequence[Phase]) -> np.ndarray:
    """Each phase's start on the schedule's clock, then the end of the last: len(phases) + 1 values from 0."""
    return np.concatenate([[0.0], np.cumsum([ph.duration_s for ph in phases])])


def figures(records: Sequence[RequestTimes]) -> dict:
    """Of a group of requests: how many, P50 / P99 TTFT (s; a request never answered counts as +inf, a demoted one
    at least just over its SLO, as the tails count them), P99 TPOT (s), attainment (both SLOs met, not demoted),
    and how many were demoted or refused (None for the figures of an empty group)."""
    ttft = [tail_ttft_s(r) for r in records]
    tpot = [tpot_s(r) for r in records if r.first_token_s is not None and r.n_outputs > 1]
    return {"requests": len(records), "ttft_p50_s": _q(ttft, 50), "ttft_p99_s": _q(ttft, 99),
            "tpot_p99_s": _q(tpot, 99),
            "attainment": round(sum(map(meets_slo, records)) / len(records), 4) if records else None,
            "demoted": sum(r.demoted for r in records), "rejected": sum(r.rejected for r in records)}


def bucket_series(records: Sequence[RequestTimes], bucket_s: float, end_s: float | None = None) -> list[dict]:
    """`figures` per bucket of arrival (send) time, each with its `start_s`. Buckets cover [0, end_s) (default: up
    to the last arrival)."""
    if not bucket_s > 0:
        raise ValueError(f"bucket_s must be > 0, got {bucket_s!r}")
    last = max((r.arrival_s for r in records), default=0.0)
    n = int(math.ceil((last if end_s is None else end_s) / bucket_s)) or 1
    groups: list[list[RequestTimes]] = [[] for _ in range(n)]
    for r in records:
        i = int(r.arrival_s // bucket_s)
        if 0 <= i < n:
            groups[i].append(r)
    return [{"start_s": round(i * bucket_s, 3), **figures(g)} for i, g in enumerate(groups)]


def recovery(records: Sequence[RequestTimes], phases: Sequence[Phase], bucket_s: float,
             tolerance: float = RECOVERY_TOLERANCE, first_s: float = 120.0) -> dict:
    """How P99 TTFT recovers after the overload: the phase with the highest load (not the first or the last) is
    the overload; the reference is the P99 TTFT of the requests sent in the phase before it; the recovery phase is
    the one after it. Returns the reference, the bound (reference x (1 + tolerance)), the recovery phase's buckets
    (`series`) and `recovered_after_s`: from the overload's end to the first bucket start from which the P99 TTFT of
    every request sent until the recovery phase's end is within the bound (None: not even the last
    bucket's), plus the attainment and P99 TTFT of the requests sent in the first `first_s` after the overload
    (`attainment_first`, `ttft_p99_first_s`; issue 14 asks for recovery within two minutes)."""
    loads = [ph.load for ph in phases]
    if len(phases) < 3:
        raise ValueError("recovery needs at least three phases (before, overload, after)")
    k = max(range(1, len(phases) - 1), key=lambda i: loads[i])
    starts = phase_starts(phases)
    before = [r for r in records if starts[k - 1] <= r.arrival_s < starts[k]]
    ref = _pct(np.array([tail_ttft_s(r) for r in before]), 99) if before else math.nan
    bound = ref * (1.0 + tolerance)
    t_end, t_stop = float(starts[k + 1]), float(starts[k + 2])
    after = [_shifted(r, t_end) for r in records if t_end <= r.arrival_s < t_stop]
    series = bucket_series(after, bucket_s, end_s=t_stop - t_end)
    ttft = np.array([tail_ttft_s(r) for r in sorted(after, key=lambda r: r.arrival_s)])
    sent = np.sort([r.arrival_s for r in after])
    recovered = None
    for b in series:
        rest = ttft[np.searchsorted(sent, b["start_s"]):]
        if len(rest) and _pct(rest, 99) <= bound:
            recovered = b["start_s"]
            break
    first = [r for r in after if r.arrival_s < first_s]
    return {"overload_phase": k, "reference_ttft_p99_s": round(ref, 4), "bound_ttft_p99_s": round(bound, 4),
            "tolerance": tolerance, "recovered_after_s": recovered,
            "first_s": first_s, "ttft_p99_first_s": _q([tail_ttft_s(r) for r in first], 99),
            "attainment_first": round(sum(map(meets_slo, first)) / len(first), 4) if first else None,
            "series": series}


def _shifted(r: RequestTimes, t0: float) -> RequestTimes:
    """r on a clock starting at t0 (only arrival matters to the buckets; TTFT and TPOT are differences)."""
    sh = lambda t: None if t is None else t - t0  # noqa: E731
    return replace(r, arrival_s=r.arrival_s - t0, first_token_s=sh(r.first_token_s), last_token_s=sh(r.last_token_s),
                   token_times_s=None)
