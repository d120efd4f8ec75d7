"""Per-request SLO validation and arrival estimates at the scheduler's intake, the one point every entry point passes.

The HTTP middleware (engine/http.py) answers 400 early for the routes it knows, but requests also arrive through
other routes (/v1/responses takes SGLang's default sampling params), compressed bodies, the Engine API and
`--preferred-sampling-params`. All of them reach `Scheduler._add_request_to_queue(req)`; a BEFORE hook there (see
scheduler_hooks.py) calls `check_request`. An invalid SLO finishes the request the way SGLang finishes a too-long
prompt at intake: `req.set_finish_with_abort(message)` (HTTP 400 / ValueError naming the bad key for the client, an
in-stream error for streams), the request then leaves through SGLang's usual abort path. The SLO keys are removed
from the aborted request's custom_params, so the snapshot never sees an invalid SLO.

Arrival. SGLang stamps `scheduler_recv_time` when its loop reads the socket, once per pass: a request that came in
while a forward ran waits for the forward's end before it is read, up to a whole iteration (on the EMULATED A100 x 6
soak, 80 ms of device time at the median, 241 ms at the 99th percentile, while the client's TTFT counts from its send).
Planning TTFT from the receipt let fair finish requests at their deadline on its clock and just after it on the
client's. `ArrivalEstimate` gives the earliest time the request can have reached the server instead: the start of
the previous loop pass (the previous read) when a forward ran since, else the receipt itself (an idle loop reads at
once). The intake hook stamps it on the Req (`ARRIVAL_ATTR`), once, before the request is first viewed; the snapshot
takes it as `arrival_s` (engine/snapshot.py). The simulator sees true arrivals, so this brings the live view to it.
"""

from __future__ import annotations

from collections.abc import Mapping

from ..config import SloConfig
from ..config import parse_request_slos

ERROR_PREFIX = "sglang-fair: invalid per-request SLO: "


def slo_problem(req, default: SloConfig) -> str | None:
    """Why `req`'s per-request SLOs are invalid (None when valid, absent, or the request is already finishing or has
    produced output: a retracted request was checked when it first arrived)."""
    if getattr(req, "to_finish", None) is not None or getattr(req, "finished_reason", None) is not None:
        return None
    if getattr(req, "output_ids", None):
        return None
    params = getattr(getattr(req, "sampling_params", None), "custom_params", None)
    try:
        parse_request_slos(params, default)
    except ValueError as exc:
        return str(exc)
    return None


def check_request(req, default: SloConfig) -> str | None:
    """Abort `req` at intake when its SLOs are invalid; returns the error message given to the client (or None)."""
    problem = slo_problem(req, default)
    if problem is None:
        return None
    message = ERROR_PREFIX + problem
    req.set_finish_with_abort(message)
    sp = req.sampling_params
    params = sp.custom_params
    sp.custom_params = ({k: v for k, v in params.items()
                         if not (isinstance(k, str) and k.startswith(("ttft", "tpot", "strict")))}
                        if isinstance(params, Mapping) else None)
    return message


ARRIVAL_ATTR = "_sglang_fair_arrival_s"
"""Attribute on SGLang's Req holding `ArrivalEstimate.arrival_s` of its intake (perf_counter seconds)."""


class ArrivalEstimate:
    """The earliest a request the scheduler reads now can have arrived (module docstring). `on_pass(t)` at the start
    of each loop pass's batch selection (after its read), `on_forward(t)` when a forward starts (the real start, not
    an emulated overlap's)."""

    def __init__(self) -> None:
        self.pass_s: float | None = None
        self.forward_s: float | None = None
        self.backdated = 0
        """Requests dated back to the previous read (status `arrivals_backdated`)."""
        self.backdated_s_total = 0.0

    def on_pass(self, t: float) -> None:
        self.pass_s = t

    def on_forward(self, t: float) -> None:
        self.forward_s = t

    def arrival_s(self, recv_s: float) -> float:
        p, f = self.pass_s, self.forward_s
        if p is not None and f is not None and p <= f <= recv_s:
            self.backdated += 1
            self.backdated_s_total += recv_s - p
            return p  # read after a forward: it may have arrived any time since the previous read
        return recv_s

    def status(self) -> dict:
        n = self.backdated
        return {"arrivals_backdated": n,
                "arrival_backdate_ms_mean": round(1e3 * self.backdated_s_total / n, 3) if n else None}


def stamp_arrival(req, estimate: ArrivalEstimate) -> None:
    """Set `req`'s ARRIVAL_ATTR from its receipt, unless it has one (a retracted request re-queued keeps its own)."""
    if getattr(req, ARRIVAL_ATTR, None) is not None:
        return
    ts = req.time_stats
    recv = ts.scheduler_recv_time or ts.wait_queue_entry_time
    if recv:
        setattr(req, ARRIVAL_ATTR, estimate.arrival_s(float(recv)))
