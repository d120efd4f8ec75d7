"""`--fair-admission reject`: the arrival verdict (policies/admission.py), the 429 at intake with its retry hint
(engine/reject.py), the Retry-After header, and the flag's validation."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace

import pytest
from factories import COST, make_req, make_running, make_snapshot

from sglang_fair.engine import reject
from sglang_fair.policies.admission import arrival_verdict, policy_arrival_verdict, prefill_s
from sglang_fair.policies.fair import FairParams
from sglang_fair.serve import build_parser, runtime_config


def _queue(n: int, prompt: int):
    return [make_req(f"w{i}", arrival_s=0.0, prompt_tokens=prompt, ttft_slo_s=2.0) for i in range(n)]


def test_an_empty_server_admits_and_a_long_queue_rejects():
    new = make_req("new", arrival_s=1.0, prompt_tokens=500, ttft_slo_s=2.0)
    late, ahead = arrival_verdict(make_snapshot(now=1.0), new)
    assert not late and ahead == 0.0
    one, own = prefill_s(COST, make_req(prompt_tokens=4000)), prefill_s(COST, new)
    n = int(2.0 / one) + 2  # more queued prefill than the TTFT SLO can absorb
    queued = make_snapshot(now=1.0, waiting=_queue(n, 4000))
    late, ahead = arrival_verdict(queued, new)
    assert late and ahead == pytest.approx(n * one)  # every earlier deadline is ahead of it
    few = make_snapshot(now=1.0, waiting=_queue(1, 4000))
    assert arrival_verdict(few, new)[0] == (one + own > 2.0)
    # when the policy demotes hopeless requests, only the on-time ones are ahead
    late, ahead = arrival_verdict(queued, new, demoting=True)
    on_time = sum(1 for k in range(1, n + 1) if k * one <= 2.0 - 1.0 + 1e-12)
    assert ahead == pytest.approx(on_time * one) and late == (1.0 + ahead + own > 3.0)


def test_under_demote_longest_the_verdict_demotes_the_longest_as_the_policy_does():
    # TTFT 1 s, 0.1 ms a token: a queued 8000-token prompt (0.8 s) and a 3000-token arrival (0.3 s) cannot both be on
    # time. Plain demote keeps the queued one and so refuses the arrival; demote-longest demotes the longer queued
    # prompt instead, as fair's plan will, and admits the arrival.
    queued = make_snapshot(now=0.0, waiting=[make_req("long", arrival_s=0.0, prompt_tokens=8000)])
    new = make_req("new", arrival_s=0.0, prompt_tokens=3000)
    assert arrival_verdict(queued, new, demoting=True)[0]
    late, ahead = arrival_verdict(queued, new, demoting=True, longest=True)
    assert not late and ahead == 0.0
    assert policy_arrival_verdict(FairParams(), queued, new) == (late, ahead)  # fair's default: demote-longest
    assert policy_arrival_verdict(FairParams(admission="demote"), queued, new)[0]
    assert policy_arrival_verdict(None, queued, new)[0]  # a policy without admission: everything queued is ahead


def test_running_decodes_slow_the_estimate_down():
    new = make_req("new", arrival_s=0.0, prompt_tokens=3000, ttft_slo_s=2.0)
    alone = prefill_s(COST, new)
    assert alone < 2.0 and not arrival_verdict(make_snapshot(now=0.0), new)[0]
    # decodes that take nearly all of each TPOT leave 5% of the device to prefill
    busy = [make_running(f"d{i}", prompt_tokens=4000, output_tokens=10, tpot_slo_s=0.02) for i in range(64)]
    assert arrival_verdict(make_snapshot(now=0.0, running=busy), new)[0] == (alone / 0.05 > 2.0)


class _Req:
    def __init__(self):
        self.rid, self.output_ids, self.finished_reason, self.to_finish = "new", [], None, None
        self.aborted = None

    def set_finish_with_abort(self, message, status_code=400, err_type="BadRequestError"):
        self.aborted = (message, status_code, err_type)


def _adapter(snap, new_view):
    return SimpleNamespace(current_snapshot=lambda: snap,
                           policy=SimpleNamespace(params=SimpleNamespace(admission="off")),
                           builder=SimpleNamespace(view=lambda req, state: new_view), rejected_at_arrival=0)


def test_a_late_arrival_is_finished_with_429_and_a_retry_hint():
    new = make_req("new", arrival_s=1.0, prompt_tokens=500, ttft_slo_s=2.0)
    ad = _adapter(make_snapshot(now=1.0, waiting=_queue(40, 4000)), new)
    req = _Req()
    assert reject.reject_if_late(ad, req) and ad.rejected_at_arrival == 1
    message, code, kind = req.aborted
    assert code == 429 and kind == "TooManyRequests" and "2000 ms" in message
    assert reject.retry_after_s(message.encode()) >= 1
    ok = _adapter(make_snapshot(now=1.0), new)
    fresh = _Req()
    assert not reject.reject_if_late(ok, fresh) and fresh.aborted is None and ok.rejected_at_arrival == 0
    fresh.output_ids = [5]  # a retracted request re-entering the queue is never rejected
    assert reject.arrival_problem(ad, fresh) is None


def _serve(app, scope):
    sent = []

    async def receive():
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(msg):
        sent.append(msg)

    asyncio.run(reject.RetryAfter(app)(scope, receive, send))
    return sent


def _app(status: int, body: bytes):
    async def app(scope, receive, send):
        await send({"type": "http.response.start", "status": status, "headers": [(b"content-type", b"json")]})
        await send({"type": "http.response.body", "body": body})
    return app


def test_retry_after_header_on_the_429_only():
    body = b'{"error": "sglang-fair: rejected at arrival: ...; retry after 7 s"}'
    start, part = _serve(_app(429, body), {"type": "http"})
    assert (b"retry-after", b"7") in start["headers"] and part["body"] == body
    start, _ = _serve(_app(200, b"retry after 7 s"), {"type": "http"})
    assert all(k != b"retry-after" for k, _ in start["headers"])
    start, _ = _serve(_app(429, b"queue full"), {"type": "http"})  # a 429 not ours: untouched
    assert all(k != b"retry-after" for k, _ in start["headers"])


def test_the_flag_needs_an_active_policy():
    parse = build_parser().parse_known_args
    assert runtime_config(parse(["--fair-policy", "fair", "--fair-admission", "reject"])[0]).admission == "reject"
    with pytest.raises(ValueError, match="--fair-admission"):
        runtime_config(parse(["--fair-policy", "off", "--fair-admission", "reject"])[0])
    with pytest.raises(SystemExit):
        parse(["--fair-admission", "sometimes"])


# ---- `--fair-admission shed`: the demoted requests still queued are answered 429 (engine/reject.py) -------------
class _QueuedReq:
    def __init__(self, rid, output_ids=()):
        self.rid, self.output_ids = rid, list(output_ids)


class _Sched:
    """The scheduler calls `shed_demoted` makes, recorded."""

    def __init__(self, queue):
        self.waiting_queue = list(queue)
        self.calls = []
        self.beam_coordinator = SimpleNamespace(retire_group=lambda req: self.calls.append(("retire", req.rid)))

    def _release_aborted_request(self, req):
        self.calls.append(("release", req.rid))

    def send_abort_output(self, abort_req, req):
        assert abort_req[0] is req
        self.calls.append(("abort", req.rid, abort_req[1]))


def test_shed_takes_the_demoted_queued_requests_out_and_answers_429(monkeypatch):
    from sglang_fair.core.types import Plan
    monkeypatch.setattr(reject, "abort_429", lambda req, message: (req, message))
    waiting = [make_req(f"w{i}", arrival_s=0.0, prompt_tokens=1000, ttft_slo_s=2.0) for i in range(5)]
    snap = make_snapshot(now=3.0, waiting=waiting)
    back = _QueuedReq("w4", output_ids=[7])  # a retracted request back in the queue: it has streamed tokens
    sched = _Sched([_QueuedReq("w0"), _QueuedReq("w1"), _QueuedReq("w2"), _QueuedReq("w3"), back])
    ad = SimpleNamespace(policy=SimpleNamespace(params=FairParams()), shed_from_queue=0)
    # w1 and w3 demoted and waiting: shed; w2 demoted but prefilled this step: kept; w4 has tokens: kept
    plan = Plan(prefill=(("w0", 1000), ("w2", 1000)), demoted=("w1", "w2", "w3", "w4"))
    assert reject.shed_demoted(ad, sched, plan, snap) == 2 and ad.shed_from_queue == 2
    assert [r.rid for r in sched.waiting_queue] == ["w0", "w2", "w4"]
    aborts = [c for c in sched.calls if c[0] == "abort"]
    assert [c[1] for c in aborts] == ["w3", "w1"]  # popped from the back, so the indices stay valid
    for _, rid, message in aborts:
        assert ("release", rid) in sched.calls and ("retire", rid) in sched.calls
        assert "shed from the queue" in message and "2000 ms" in message and "waited 3.0 s" in message
        assert reject.retry_after_s(message.encode()) >= 1
    nothing = Plan(prefill=(("w0", 1000),))
    assert reject.shed_demoted(ad, sched, nothing, snap) == 0 and len(sched.waiting_queue) == 3


def test_shed_is_a_choice_of_the_flag_and_needs_an_active_policy():
    parse = build_parser().parse_known_args
    assert runtime_config(parse(["--fair-policy", "fair", "--fair-admission", "shed"])[0]).admission == "shed"
    with pytest.raises(ValueError, match="--fair-admission"):
        runtime_config(parse(["--fair-policy", "off", "--fair-admission", "shed"])[0])
