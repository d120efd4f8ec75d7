"""Prometheus gauges for the adapter, in the scheduler child, the way SGLang's SchedulerMetricsCollector makes them.

SGLang runs prometheus_client in multiprocess mode (PROMETHEUS_MULTIPROC_DIR is set before its processes start);
a Gauge created in the scheduler child with `multiprocess_mode="mostrecent"` and SGLang's own labels is written to
that directory and shows on the main process's `/metrics`. Only with `--enable-metrics`.
The adapter hands `maybe_update` its status function; the gauges call it at most every `PERIOD_S`.
"""

from __future__ import annotations

import time
from typing import Callable

PERIOD_S = 0.5

_GAUGES = {
    "budget_ms": "Iteration time budget the policy planned the last step against (ms; absent = unbounded).",
    "deferred_now": "Running decodes parked (deferred) right now.",
    "deferred_total": "Decode row-steps deferred since start.",
    "demoted_now": "Waiting requests the last plan served as best effort (their TTFT SLO can no longer be met).",
    "demotions_total": "Times a request was demoted to best effort since start (consecutive plans count once).",
    "aged_now": "Requests in fair's aged lane in the last plan (waited past the ageing bound; a share of each step).",
    "rejected_at_arrival": "Requests answered HTTP 429 at arrival since start (--fair-admission reject or shed).",
    "shed_from_queue": "Queued requests answered HTTP 429 when demoted, since start (--fair-admission shed).",
    "planned_iterations": "Iterations formed by the sglang-fair policy.",
    "admission_budget_tokens": "Prefill admission budget: new prompt tokens admissible within the load horizon.",
    "token_load": "Token load served on /get_load (lower = more room).",
    "recent_iter_ms": "Recent measured iteration time (EWMA, ms).",
    "cost_rel_err_ewma": "Relative error of the cost model's prediction (EWMA).",
    "cost_headroom": "Factor plans scale the fitted cost model by (quantile of measured/predicted, >= 1).",
}
_COEF = ("base_s", "per_prefill_token_s", "per_attn_token2_s", "per_decode_req_s", "per_context_token_s",
         "per_mixed_decode_req_s")


class Gauges:
    def __init__(self, labels: dict[str, str]) -> None:
        from prometheus_client import Gauge
        self.labels = dict(labels)
        names = list(self.labels)
        self.gauges = {k: Gauge(f"sglang_fair:{k}", doc, labelnames=names, multiprocess_mode="mostrecent")
                       for k, doc in _GAUGES.items()}
        self.faults = Gauge("sglang_fair:faults", "Steps run stock after a policy fault, by kind.",
                            labelnames=[*names, "kind"], multiprocess_mode="mostrecent")
        self.coef = Gauge("sglang_fair:cost_model_coefficient", "Current iteration cost model coefficient (s/unit).",
                          labelnames=[*names, "term"], multiprocess_mode="mostrecent")
        self._last = 0.0

    def maybe_update(self, status: Callable[[], dict]) -> None:
        """Set every gauge from `status()` if the last update is at least PERIOD_S old (status is not called
        otherwise: it builds a snapshot)."""
        now = time.monotonic()
        if now - self._last < PERIOD_S:
            return
        self._last = now
        self.update(status())

    def update(self, status: dict) -> None:
        for k, g in self.gauges.items():
            v = status.get(k)
            if v is not None:
                g.labels(**self.labels).set(float(v))
        for kind, n in status.get("faults", {}).items():
            self.faults.labels(**self.labels, kind=kind).set(n)
        for term in _COEF:
            self.coef.labels(**self.labels, term=term).set(status["cost_model"][term])


def maybe_install(sched, adapter) -> None:
    reporter = getattr(sched, "metrics_reporter", None)
    if reporter is None or not getattr(reporter, "enable_metrics", False):
        return
    collector = getattr(reporter, "metrics_collector", None)
    labels = dict(getattr(collector, "labels", {}) or {})
    adapter.gauges = Gauges(labels)
