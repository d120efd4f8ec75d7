"""Capacity search against a live server: the simulator's bracketing + log-space bisection on the rate scale
(sim/capacity.py), under a probe budget, because every live probe costs tens of seconds.

Criteria are the simulator's (metrics.meets_tail / meets_attainment). The tail capacity drives the probes; the
attainment capacity is read off the same probes (the largest probed scale that met it, so a lower bound).
"""

from __future__ import annotations

import math
from typing import Callable

from ..core.metrics import Summary, meets_attainment, meets_tail


def budgeted_capacity(evaluate: Callable[[float], Summary], ok: Callable[[Summary], bool], start: float, *,
                      max_probes: int, rel_tol: float = 0.1, step: float = 2.0) -> tuple[float, float | None]:
    """(largest passing scale or 0.0, smallest failing scale above it or None) after at most `max_probes` probes:
    multiply `start` by `step` until a failure, divide by it until a pass, then bisect geometrically while
    hi/lo > 1 + rel_tol. A small step started near a known capacity brackets it in two probes."""
    if max_probes < 1 or not start > 0:
        raise ValueError("max_probes must be >= 1 and start > 0")
    if not (step > 1.0 and math.isfinite(step)):
        raise ValueError(f"step must be a finite factor > 1, got {step!r}")
    lo = hi = None
    x = start
    for _ in range(max_probes):
        if lo is not None and hi is not None:
            if hi / lo <= 1.0 + rel_tol:
                break
            x = math.sqrt(lo * hi)
        if ok(evaluate(x)):
            lo = x
            if hi is None:
                x *= step
        else:
            hi = x
            if lo is None:
                x /= step
    return (float(f"{lo:.4g}") if lo is not None else 0.0), (float(f"{hi:.4g}") if hi is not None else None)


def live_capacities(evaluate: Callable[[float], Summary | None], ttft_slo_s: float, tpot_slo_s: float, start: float,
                    *, max_probes: int, rel_tol: float = 0.1, step: float = 2.0,
                    attainment_target: float = 0.9) -> dict:
    """Tail capacity by budgeted bisection; attainment capacity from the same probes. `evaluate` returns None for
    an invalid probe (e.g. an emulated clock that overran): it fails both criteria, so it never raises a capacity."""
    seen: dict[float, Summary | None] = {}

    def ev(x: float) -> Summary:
        x = float(f"{x:.4g}")
        if x not in seen:
            seen[x] = evaluate(x)
        return seen[x]

    cap, fail = budgeted_capacity(ev, lambda s: s is not None and meets_tail(s, ttft_slo_s, tpot_slo_s), start,
                                  max_probes=max_probes, rel_tol=rel_tol, step=step)
    att = max((x for x, s in seen.items() if s is not None and meets_attainment(s, attainment_target)), default=0.0)
    return {"capacity": cap, "first_failing_scale": fail, "capacity_attainment_lower_bound": att,
            "probes": dict(sorted(seen.items()))}
