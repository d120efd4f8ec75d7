"""The burst bound: the largest rate scale at which ANY scheduler could still deliver enough first tokens on time.

The stability bound (sim/capacity.py) asks whether the device keeps up on average. A trace whose tail is decided by
bursts (several long prompts arriving within one TTFT) can fail its P99 TTFT far below it, for every policy. This
bound measures that ceiling from the trace and the cost model alone:

- Each request j needs prefill work w_j before its first token: at least p_j * (per_prefill_token_s +
  per_attn_token2_s * p_j / 2), the cost model's marginal prefill time in infinitely small chunks (its cheapest
  split), with no per-iteration base cost and no decode work. Every schedule needs at least this much device time.
- Its first token is on time iff that work is done inside [a_j, a_j + ttft_slo]. With one TTFT SLO for all, the
  requests whose windows lie inside a time window [a_i, a_k + ttft_slo] are exactly i..k (arrival order), and at
  most the smallest of them that fit in its length can be on time. So each such window forces
  (k - i + 1) - (how many of its smallest w fit) late first tokens.
- Windows that do not overlap in time constrain disjoint device time and disjoint requests, so their forced counts
  add up: the largest sum over non-overlapping windows (weighted interval scheduling) is a lower bound on the late
  first tokens of every schedule, preemptive or not, at that rate scale.

The bound is the largest scale (bisection, relative tolerance `rel_tol`) at which that lower bound still leaves the
criterion reachable: at most `tail_misses_allowed(n)` late requests for P99 TTFT <= ttft_slo (numpy's linear
percentile, as core.metrics computes it), or 10% for 90% attainment. Every policy's capacity is at most this (up to
the bisection tolerance); it ignores decode work, iteration overheads and KV, so it is optimistic, never pessimistic.
Windows are considered up to `max_window_s` long (bursts; sustained overload is the stability bound's domain).
"""

from __future__ import annotations

import bisect
import heapq
import math

import numpy as np

from ..core.cost_model import CostModel
from ..core.metrics import _pct


def min_prefill_work_s(prompt_tokens: np.ndarray, cost: CostModel) -> np.ndarray:
    """The least device time each prompt's prefill can take under `cost` (see the module docstring)."""
    return cost.fine_prefill_s(np.asarray(prompt_tokens, dtype=np.float64))


def min_late_first_tokens(arrival_s: np.ndarray, work_s: np.ndarray, ttft_slo_s: float, *,
                          max_window_s: float = math.inf) -> int:
    """A lower bound on how many requests get their first token after `ttft_slo_s`, under any schedule of one device
    (arrivals ascending; `work_s` per request, in the same order)."""
    a = np.asarray(arrival_s, dtype=np.float64)
    w = np.asarray(work_s, dtype=np.float64)
    n = len(a)
    if n == 0:
        return 0
    if np.any(np.diff(a) < 0):
        raise ValueError("arrival_s must be ascending")
    windows: list[tuple[float, float, int]] = []  # (start, end, forced late)
    for i in range(n):
        kept: list[float] = []  # max-heap (negated) of the smallest works that fit
        rest: list[float] = []  # min-heap of the others
        kept_sum, best = 0.0, 0
        for k in range(i, n):
            end = a[k] + ttft_slo_s
            length = end - a[i]
            if length > max_window_s:
                break
            x = float(w[k])
            if rest and x > rest[0]:  # keep the kept set the smallest ones
                x = heapq.heapreplace(rest, x)
            heapq.heappush(kept, -x)
            kept_sum += x
            while kept and kept_sum > length:
                y = -heapq.heappop(kept)
                kept_sum -= y
                heapq.heappush(rest, y)
            while rest and kept_sum + rest[0] <= length:
                y = heapq.heappop(rest)
                kept_sum += y
                heapq.heappush(kept, -y)
            forced = len(rest)
            if forced > best:  # a longer window from the same start only helps if it forces more
                best = forced
                windows.append((float(a[i]), float(end), forced))
    return _max_disjoint_sum(windows)


def _max_disjoint_sum(windows: list[tuple[float, float, int]]) -> int:
    """Weighted interval scheduling: the largest total weight of windows whose time spans do not overlap (touching
    ends allowed)."""
    if not windows:
        return 0
    windows.sort(key=lambda t: t[1])
    ends = [e for _, e, _ in windows]
    best = [0] * (len(windows) + 1)
    for j, (s, e, wt) in enumerate(windows):
        p = bisect.bisect_right(ends, s, 0, j)  # windows ending at or before this one's start
        best[j + 1] = max(best[j], best[p] + wt)
    return best[-1]


def tail_misses_allowed(n: int, q: float = 99.0) -> int:
    """The most requests that may miss (TTFT +inf) while the q-th percentile of n TTFTs (numpy's linear rule) stays
    finite and below the SLO (core.metrics' percentile): with m misses it interpolates between the (n-m)-th value
    and a miss."""
    if n <= 0:
        return 0
    m = 0
    while m < n:
        x = np.zeros(n)
        x[n - (m + 1):] = math.inf
        if _pct(x, q) > 0.0:
            return m
        m += 1
    return n


def burst_bound_scale(trace, cost: CostModel, ttft_slo_s: float, *, allowed_misses: int | None = None,
                      rel_tol: float = 0.01, max_window_s: float | None = None, max_scale: float = 1e4) -> float:
    """The largest rate scale of `trace` at which the lower bound on late first tokens is at most `allowed_misses`
    (default: what P99 TTFT allows, `tail_misses_allowed`). `max_window_s` defaults to 20 TTFTs."""
    n = len(trace)
    allowed = tail_misses_allowed(n) if allowed_misses is None else allowed_misses
    work = min_prefill_work_s(trace.prompt_tokens, cost)
    arrivals = np.asarray(trace.arrival_s, dtype=np.float64)
    order = np.argsort(arrivals, kind="stable")
    arrivals, work = arrivals[order] - arrivals[order][0], work[order]
    win = 20.0 * ttft_slo_s if max_window_s is None else max_window_s

    def ok(scale: float) -> bool:
        return min_late_first_tokens(arrivals / scale, work, ttft_slo_s, max_window_s=win) <= allowed

    lo, hi = 0.0, 1.0
    while ok(hi):
        lo, hi = hi, hi * 2.0
        if hi > max_scale:
            return math.inf
    while lo == 0.0 or hi / lo > 1.0 + rel_tol:
        mid = hi / 2.0 if lo == 0.0 else math.sqrt(lo * hi)
        if mid < 1e-6:
            return 0.0
        if ok(mid):
            lo = mid
        else:
            hi = mid
    return lo
