"""Capacity search (bisection on the rate scale) and the stability bound it is compared against.

Capacity of a run function `run(scale) -> SimResult` under a criterion = the largest rate scale at which the run meets
it, found by bracketing (halving/doubling from a start) and then bisecting in log space until hi/lo <= 1 + rel_tol.
It assumes the criterion is monotone in the scale (it is, up to noise from which requests land in a burst).
Criteria (docs/design.md, "Simulator"): tail = every request finished, P99 TTFT <= ttft_slo and P99 TPOT <= tpot_slo;
attainment = at least 90% of requests meet both SLOs.

Stability bound (after Li, Dai, Peng, arXiv 2504.07347: stability needs rate x mean work per request < throughput at
full batch). With the iteration model t = base + marginal work, a stream at rate L with iterations of length T carries
L*T requests' worth of work per iteration, so it keeps up iff base + L * T * W <= T, i.e.

    L < L* = (1 - base_s / T) / W,   T = tpot_slo (the longest iteration a decode may sit in: the SLO-feasible
                                         full batch),
    W = mean over requests of [ prefill_s(prompt, 0) + sum_{j=1}^{out-1} decode_s(prompt + j) ]

(the marginal seconds of one request's prefill, as one chunk, plus its out-1 decode rows). In rate-scale units the
bound is L* / (trace's mean rate at scale 1), times the number of GPUs for multi-instance runs; bound_fraction =
capacity / bound. It ignores KV limits and queueing, so it is a ceiling no policy reaches.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from ..core.cost_model import CostModel
from ..core.metrics import Summary, meets_attainment, meets_tail, summarize
from .engine import SimResult


def work_s(trace, cost: CostModel) -> np.ndarray:
    """Each request's marginal seconds of work: its prefill as one chunk plus its out-1 decode rows."""
    p = trace.prompt_tokens.astype(np.float64)
    o = trace.output_tokens.astype(np.float64)
    prefill = p * (cost.per_prefill_token_s + cost.per_attn_token2_s * p)
    k = o - 1.0
    decode = k * cost.per_decode_req_s + cost.per_context_token_s * (k * p + k * (k + 1.0) / 2.0)
    return prefill + decode


def mean_work_s(trace, cost: CostModel) -> float:
    """Mean marginal seconds of work per request (W in the module docstring)."""
    return float(np.mean(work_s(trace, cost)))


def stability_bound_rps(trace, cost: CostModel, tpot_slo_s: float, gpus: int = 1) -> float:
    """L* in requests per second (see the module docstring)."""
    if tpot_slo_s <= cost.base_s:
        return 0.0
    return gpus * (1.0 - cost.base_s / tpot_slo_s) / mean_work_s(trace, cost)


def stability_bound_scale(trace, cost: CostModel, tpot_slo_s: float, gpus: int = 1) -> float:
    """The bound as a rate scale of `trace` (scale 1 = the trace's own mean rate)."""
    return stability_bound_rps(trace, cost, tpot_slo_s, gpus) / trace.rate_rps


@dataclass
class Search:
    """Cached evaluations of one run function; both criteria share them."""

    run: Callable[[float], SimResult]
    results: dict[float, SimResult] = field(default_factory=dict)
    summaries: dict[float, Summary] = field(default_factory=dict)

    def evaluate(self, scale: float) -> Summary:
        scale = float(f"{scale:.6g}")
        if scale not in self.summaries:
            res = self.run(scale)
            self.results[scale] = res
            s = summarize(res.records)
            self.summaries[scale] = s if not res.aborted else _failed(s)
        return self.summaries[scale]


def _failed(s: Summary) -> Summary:
    """An aborted (hopelessly overloaded) run: mark it as failing both criteria."""
    d = s.to_dict()
    d["attainment"] = min(d["attainment"], 0.0)
    d["p99_ttft_s"] = math.inf
    return Summary(**d)


def bisect_capacity(search: Search, ok: Callable[[Summary], bool], start: float, *, rel_tol: float = 0.03,
                    min_scale: float = 1e-3, max_scale: float = 1e4, max_evals: int = 30) -> float:
    """Largest passing scale (0.0 if even `min_scale` fails)."""
    lo = hi = None
    x = start
    for _ in range(max_evals):
        if ok(search.evaluate(x)):
            lo = x
            if hi is not None or x >= max_scale:
                break
            x *= 2.0
        else:
            hi = x
            if lo is not None or x <= min_scale:
                break
            x /= 2.0
    if lo is None:
        return 0.0
    if hi is None:
        return lo
    for _ in range(max_evals):
        if hi / lo <= 1.0 + rel_tol:
            break
        mid = math.sqrt(lo * hi)
        if ok(search.evaluate(mid)):
            lo = mid
        else:
            hi = mid
    return float(f"{lo:.6g}")


@dataclass(frozen=True)
class CapacityResult:
    capacity: float
    """Tail-criterion capacity (rate scale)."""
    capacity_attainment: float
    """90%-attainment capacity (rate scale)."""
    p99_ttft_ms: float
    p99_tpot_ms: float
    """At the reported (tail) capacity."""
    attainment_at_capacity: float
    bound_scale: float
    bound_fraction: float
    capacity_rps: float
    evaluations: dict
    """{scale: Summary} of every run made."""
    why: tuple[str, ...] = ()
    """Why no rate scale met the tail criterion (empty when one did)."""
    why_attainment: tuple[str, ...] = ()
    """Why no rate scale met the attainment criterion (empty when one did)."""
    figures_at_scale: float | None = None
    """The scale the P99 figures were taken at: the capacity, or the lowest scale tried when the capacity is 0."""
    demoted_at_capacity: int = 0
    """Requests the policy demoted at that scale (each an SLO miss: in the P99 at the TTFT it got, at least just
    over the SLO; core/metrics.tail_ttft_s)."""

    def to_json(self) -> dict:
        return {"capacity": self.capacity, "capacity_attainment": self.capacity_attainment,
                "why": list(self.why), "why_attainment": list(self.why_attainment),
                "figures_at_scale": self.figures_at_scale,
                "p99_ttft_ms": self.p99_ttft_ms, "p99_tpot_ms": self.p99_tpot_ms,
                "attainment_at_capacity": self.attainment_at_capacity, "demoted_at_capacity": self.demoted_at_capacity,
                "bound_scale": self.bound_scale,
                "bound_fraction": self.bound_fraction, "capacity_rps": self.capacity_rps,
                "evaluations": {str(k): {"goodput_rps": v.goodput_rps, "attainment": v.attainment,
                                         "p99_ttft_ms": v.p99_ttft_s * 1e3, "p99_tpot_ms": v.p99_tpot_s * 1e3}
                                for k, v in sorted(self.evaluations.items())}}


def find_capacity(run: Callable[[float], SimResult], trace, cost: CostModel, ttft_slo_s: float, tpot_slo_s: float,
                  *, gpus: int = 1, attainment_target: float = 0.9, rel_tol: float = 0.03,
                  start: float | None = None,
                  full_run: Callable[[float], SimResult] | None = None) -> tuple[CapacityResult, Search]:
    """Both capacities of `run` on `trace`, with the bound and the metrics at the tail capacity.

    When the capacity is 0 the metrics are those of the lowest scale tried, from `full_run` (the same run without
    stopping early, so the P99 figures are finite) when given; `why` says what no scale could meet."""
    bound = stability_bound_scale(trace, cost, tpot_slo_s, gpus)
    search = Search(run)
    x0 = start if start is not None else max(bound * 0.5, 1e-3)
    cap = bisect_capacity(search, lambda s: meets_tail(s, ttft_slo_s, tpot_slo_s), x0, rel_tol=rel_tol)
    cap_att = bisect_capacity(search, lambda s: meets_attainment(s, attainment_target), max(cap, x0),
                              rel_tol=rel_tol)
    at_scale = cap if cap > 0 else min(search.summaries)
    at = search.evaluate(at_scale) if cap > 0 or full_run is None else summarize(full_run(at_scale).records)
    n = len(trace)
    lowest = (at_scale, at) if cap == 0 else (min(search.summaries), search.summaries[min(search.summaries)])
    why = () if cap > 0 else explain_no_capacity(trace, cost, ttft_slo_s, tpot_slo_s, math.floor(0.01 * (n - 1)),
                                                   "P99", lowest)
    why_att = () if cap_att > 0 else explain_no_capacity(
        trace, cost, ttft_slo_s, tpot_slo_s, math.floor((1.0 - attainment_target) * n),
        f"{attainment_target:.0%} attainment", lowest)
    return CapacityResult(
        capacity=cap, capacity_attainment=cap_att,
        p99_ttft_ms=at.p99_ttft_s * 1e3, p99_tpot_ms=at.p99_tpot_s * 1e3, attainment_at_capacity=at.attainment,
        bound_scale=bound, bound_fraction=cap / bound if bound > 0 else math.nan,
        capacity_rps=cap * trace.rate_rps, evaluations=dict(search.summaries), why=why, why_attainment=why_att,
        figures_at_scale=at_scale, demoted_at_capacity=at.demoted), search


def explain_no_capacity(trace, cost: CostModel, ttft_slo_s: float, tpot_slo_s: float, allowed_misses: int,
                        criterion: str, lowest: tuple[float, Summary] | None = None) -> tuple[str, ...]:
    """Why no rate scale meets a criterion that tolerates `allowed_misses` SLO misses, from lower bounds that hold at
    every scale (scaling divides arrival gaps, so requests that share a timestamp arrive together at every scale):

    - a prefill takes at least base + b * p + a * p^2 / 2 whichever way it is chunked (the cost model charges chunk x
      (prefix + chunk)), so a request whose bound exceeds the TTFT SLO misses it even when served alone;
    - the requests of one burst (same arrival time) cannot all start sooner than their prefill bounds added up in
      the best order (shortest first), so those whose running sum passes the TTFT SLO miss it at any scale;
    - a request's decode steps take at least base + decode_s(prompt) each, so if that exceeds the TPOT SLO it misses
      it even when served alone.
    The last line gives the figures at the lowest scale tried (`lowest` = (scale, its summary)), when given."""
    reasons = []
    p = trace.prompt_tokens.astype(np.float64)
    work = p * cost.per_prefill_token_s + cost.per_attn_token2_s * p * p / 2.0
    late = np.zeros(len(p), dtype=bool)
    alone = work + cost.base_s > ttft_slo_s
    uniq, inverse, counts = np.unique(trace.arrival_s, return_inverse=True, return_counts=True)
    worst = None  # (late in burst, size, time, seconds of prefill)
    for g in np.flatnonzero(counts > 1):
        idx = np.flatnonzero(inverse == g)
        order = idx[np.argsort(work[idx], kind="stable")]
        lates = order[cost.base_s + np.cumsum(work[order]) > ttft_slo_s]
        late[lates] = True
        k = int(np.count_nonzero(~alone[lates]))
        if k and (worst is None or k > worst[0]):
            worst = (k, len(idx), float(uniq[g]), float(cost.base_s + work[idx].sum()))
    late |= alone
    if alone.any():
        reasons.append(f"{int(alone.sum())} requests miss the TTFT SLO ({ttft_slo_s * 1e3:g} ms) even when served "
                       f"alone (their prefill alone exceeds it)")
    if worst:
        k, size, t, sec = worst
        reasons.append(f"a burst of {size} simultaneous requests at t={t:.1f} s cannot meet the TTFT SLO at any scale: "
                       f"their prefills alone take {sec:.2f} s, so at least {k} of them start late")
    tpot_floor = cost.base_s + cost.per_decode_req_s + cost.per_context_token_s * p
    tpot_alone = (trace.output_tokens > 1) & (tpot_floor > tpot_slo_s)
    if tpot_alone.any():
        reasons.append(f"{int(tpot_alone.sum())} requests miss the TPOT SLO ({tpot_slo_s * 1e3:g} ms) even when served "
                       f"alone (one decode step of theirs takes longer)")
    n_late = int(np.count_nonzero(late | tpot_alone))
    if reasons:
        reasons.append(f"together {n_late} of {len(p)} requests miss an SLO at every scale; {criterion} allows "
                       f"{allowed_misses}" if n_late > allowed_misses else
                       f"together {n_late} of {len(p)} requests miss an SLO at every scale ({criterion} allows "
                       f"{allowed_misses}); the rest is queueing at the scales tried")
    if lowest:
        lo, s = lowest
        reasons.append(f"at the lowest scale tried ({lo:g}): P99 TTFT {s.p99_ttft_s * 1e3:.0f} ms, P99 TPOT "
                       f"{s.p99_tpot_s * 1e3:.1f} ms, attainment {s.attainment:.3f}, {s.finished} of {s.n} finished")
    return tuple(reasons)


def late_limit(n_requests: int, attainment_target: float = 0.9) -> int:
    """Requests with a late first token beyond which both criteria surely fail (runs may stop there)."""
    return int(math.floor((1.0 - attainment_target) * n_requests)) + 1
