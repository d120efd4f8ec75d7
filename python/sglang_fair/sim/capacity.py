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
from ..metrics import Summary, meets_attainment, meets_tail, summarize
from .engine import SimResult


def mean_work_s(trace, cost: CostModel) -> float:
    """Mean marginal seconds of work per request (W in the module docstring)."""
    p = trace.prompt_tokens.astype(np.float64)
    o = trace.output_tokens.astype(np.float64)
    prefill = p * (cost.per_prefill_token_s + cost.per_attn_token2_s * p)
    k = o - 1.0
    decode = k * cost.per_decode_req_s + cost.per_context_token_s * (k * p + k * (k + 1.0) / 2.0)
    return float(np.mean(prefill + decode))


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

    def to_json(self) -> dict:
        return {"capacity": self.capacity, "capacity_attainment": self.capacity_attainment,
                "p99_ttft_ms": self.p99_ttft_ms, "p99_tpot_ms": self.p99_tpot_ms,
                "attainment_at_capacity": self.attainment_at_capacity, "bound_scale": self.bound_scale,
                "bound_fraction": self.bound_fraction, "capacity_rps": self.capacity_rps,
                "evaluations": {str(k): {"goodput_rps": v.goodput_rps, "attainment": v.attainment,
                                         "p99_ttft_ms": v.p99_ttft_s * 1e3, "p99_tpot_ms": v.p99_tpot_s * 1e3}
                                for k, v in sorted(self.evaluations.items())}}


def find_capacity(run: Callable[[float], SimResult], trace, cost: CostModel, ttft_slo_s: float, tpot_slo_s: float,
                  *, gpus: int = 1, attainment_target: float = 0.9, rel_tol: float = 0.03,
                  start: float | None = None) -> tuple[CapacityResult, Search]:
    """Both capacities of `run` on `trace`, with the bound and the metrics at the tail capacity."""
    bound = stability_bound_scale(trace, cost, tpot_slo_s, gpus)
    search = Search(run)
    x0 = start if start is not None else max(bound * 0.5, 1e-3)
    cap = bisect_capacity(search, lambda s: meets_tail(s, ttft_slo_s, tpot_slo_s), x0, rel_tol=rel_tol)
    cap_att = bisect_capacity(search, lambda s: meets_attainment(s, attainment_target), max(cap, x0),
                              rel_tol=rel_tol)
    at = search.evaluate(cap) if cap > 0 else None
    return CapacityResult(
        capacity=cap, capacity_attainment=cap_att,
        p99_ttft_ms=at.p99_ttft_s * 1e3 if at else math.nan, p99_tpot_ms=at.p99_tpot_s * 1e3 if at else math.nan,
        attainment_at_capacity=at.attainment if at else math.nan,
        bound_scale=bound, bound_fraction=cap / bound if bound > 0 else math.nan,
        capacity_rps=cap * trace.rate_rps, evaluations=dict(search.summaries)), search


def late_limit(n_requests: int, attainment_target: float = 0.9) -> int:
    """Requests with a late first token beyond which both criteria surely fail (runs may stop there)."""
    return int(math.floor((1.0 - attainment_target) * n_requests)) + 1
