"""`--fair-admission reject`: HTTP 429 at arrival for a request that cannot get its first token within its TTFT SLO.

At the scheduler's intake (the BEFORE hook on `Scheduler._add_request_to_queue`, after the SLO check) the adapter's
snapshot of the running, parked and waiting requests plus the new one is judged by `policies.admission
.arrival_verdict`: the optimistic estimate of its first token (the prefill queued ahead of it in EDF order - only the
on-time part when the policy demotes hopeless requests - and its own prompt, in infinitely fine chunks, at the share
of the device the running decodes leave) against arrival + TTFT SLO.
A request that misses is finished at once with `set_finish_with_abort(message, 429)`, as SGLang finishes a request
over `--max-queued-requests` (503): a router (or the client) sends it elsewhere instead of it waiting to fail here.
The message carries `retry after N s` (the on-time queue's drain time, at least 1 s); `RetryAfter` (engine/http.py
installs it) copies N into a `Retry-After` header of that 429. Streams get SGLang's in-stream error (status 200
already sent: no header). Prefix-cache hits are not known at intake, so a cached prompt is judged at full length.

`--fair-admission shed` does that, and refuses a queued request the moment the plan demotes it (`Plan.demoted`): one
still in SGLang's waiting queue (no KV, no token) and not in the plan's prefill is taken out of the queue and answered
HTTP 429 (`shed_demoted`), as SGLang itself evicts a queued request for a higher-priority one
(`Scheduler._abort_on_queued_limit`). A demoted request is an SLO miss either way; refused, it leaves no backlog that
the requests after an overload wait behind (docs/results.md, "Shedding demoted requests").
"""

from __future__ import annotations

import dataclasses
import math
import re

from ..policies.admission import policy_arrival_verdict

MESSAGE = ("sglang-fair: rejected at arrival: its first token would miss the TTFT SLO of {ttft_ms:.0f} ms behind "
           "{ahead_s:.1f} s of queued prefill; retry after {retry_s} s")
RETRY = re.compile(rb"retry after (\d+) s")
TOO_MANY_REQUESTS = 429


def arrival_problem(adapter, req) -> str | None:
    """The 429 message for `req`, or None when it can still be on time (or is already finishing)."""
    if getattr(req, "finished_reason", None) is not None or getattr(req, "to_finish", None) is not None:
        return None
    if getattr(req, "output_ids", None):  # a retracted request coming back is not a new arrival
        return None
    snap = adapter.current_snapshot()
    new = adapter.builder.view(req, "waiting")
    params = getattr(adapter.policy, "params", None)
    late, ahead_s = policy_arrival_verdict(params, snap, new)
    if not late:
        return None
    return MESSAGE.format(ttft_ms=new.ttft_slo_s * 1e3, ahead_s=ahead_s, retry_s=max(1, math.ceil(ahead_s)))


def reject_if_late(adapter, req) -> bool:
    """Finish `req` with HTTP 429 when it cannot be on time; True when rejected (counted on the adapter)."""
    message = arrival_problem(adapter, req)
    if message is None:
        return False
    req.set_finish_with_abort(message, status_code=TOO_MANY_REQUESTS, err_type="TooManyRequests")
    adapter.rejected_at_arrival += 1
    return True


SHED_MESSAGE = ("sglang-fair: shed from the queue: its first token can no longer meet the TTFT SLO of {ttft_ms:.0f} "
                "ms (waited {waited_s:.1f} s); retry after {retry_s} s")


def shed_demoted(adapter, sched, plan, snap) -> int:
    """Answer HTTP 429 to each request `plan` demotes that still waits in `sched.waiting_queue` and that the plan does
    not prefill (a partial prefill holds KV and is never shed). Returns how many (counted on the adapter)."""
    if not plan.demoted:
        return 0
    keep = {rid for rid, _ in plan.prefill}
    drop = {rid for rid in plan.demoted if rid not in keep}
    if not drop:
        return 0
    views = {r.rid: r for r in snap.waiting if r.rid in drop}
    queue = sched.waiting_queue
    shed = [(i, req) for i, req in enumerate(queue) if req.rid in views and not req.output_ids]
    if not shed:
        return 0
    # the retry hint, once a step: the drain time of the on-time queue ahead of the step's first shed request
    first = views[shed[0][1].rid]
    rest = dataclasses.replace(snap, waiting=tuple([r for r in snap.waiting if r.rid not in views]))
    _, ahead_s = policy_arrival_verdict(getattr(adapter.policy, "params", None), rest, first)
    retry_s = max(1, math.ceil(ahead_s))
    for i, req in reversed(shed):  # as Scheduler._abort_on_queued_limit evicts a queued request
        v = views[req.rid]
        message = SHED_MESSAGE.format(ttft_ms=v.ttft_slo_s * 1e3, waited_s=max(0.0, snap.now - v.arrival_s),
                                      retry_s=retry_s)
        sched._release_aborted_request(req)
        queue.pop(i)
        sched.beam_coordinator.retire_group(req)
        sched.send_abort_output(abort_429(req, message), req)
    adapter.shed_from_queue += len(shed)
    return len(shed)


def abort_429(req, message: str):
    """SGLang's AbortReq that answers `req` HTTP 429 with `message` (as the scheduler builds its own aborts)."""
    from sglang.srt.managers.schedule_batch import FINISH_ABORT
    from sglang.srt.managers.scheduler import _make_abort_req
    reason = FINISH_ABORT(message, status_code=TOO_MANY_REQUESTS, err_type="TooManyRequests").to_json()
    return _make_abort_req(req, finished_reason=reason)


def retry_after_s(body: bytes) -> int | None:
    """N of `retry after N s` in a 429 body (None when absent)."""
    m = RETRY.search(body)
    return int(m.group(1)) if m else None


class RetryAfter:
    """ASGI middleware: a 429 whose body carries `retry after N s` gets a `Retry-After: N` header (the response start
    is held until the first body part arrives; every other response passes untouched)."""

    def __init__(self, app) -> None:
        self.app = app

    async def __call__(self, scope, receive, send) -> None:
        if scope.get("type") != "http":
            await self.app(scope, receive, send)
            return
        held: list[dict] = []

        async def send_with_header(msg):
            if msg["type"] == "http.response.start" and msg.get("status") == TOO_MANY_REQUESTS:
                held.append(msg)
                return
            if held and msg["type"] == "http.response.body":
                start = held.pop()
                n = retry_after_s(msg.get("body", b""))
                if n is not None:
                    start = {**start, "headers": [*start.get("headers", []), (b"retry-after", str(n).encode())]}
                await send(start)
            await send(msg)

        await self.app(scope, receive, send_with_header)
