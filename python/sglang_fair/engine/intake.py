"""Per-request SLO validation at the scheduler's intake, the one point every entry point passes.

The HTTP middleware (engine/http.py) answers 400 early for the routes it knows, but requests also arrive through
other routes (/v1/responses takes SGLang's default sampling params), compressed bodies, the Engine API and
`--preferred-sampling-params`. All of them reach `Scheduler._add_request_to_queue(req)`; a BEFORE hook there (see
scheduler_hooks.py) calls `check_request`. An invalid SLO finishes the request the way SGLang finishes a too-long
prompt at intake: `req.set_finish_with_abort(message)` (HTTP 400 / ValueError naming the bad key for the client, an
in-stream error for streams), the request then leaves through SGLang's usual abort path. The SLO keys are removed
from the aborted request's custom_params, so the snapshot never sees an invalid SLO.
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
