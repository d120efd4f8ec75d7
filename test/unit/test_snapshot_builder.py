"""SnapshotBuilder against stand-ins carrying the SGLang 0.5.23 attributes it reads (Req.time_stats, output_ids,
prefix_len, sampling_params.custom_params; the scheduler's queues and KV pool): timestamps, the first-token time,
retraction, per-request SLOs. The live tests (test/live/) check the same against the real scheduler."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from factories import COST
from sglang_fair.config import SloConfig
from sglang_fair.engine.snapshot import SnapshotBuilder

SLO = SloConfig(ttft_slo_ms=1000.0, tpot_slo_ms=100.0)


def fake_req(rid: str, *, prompt: int = 50, outputs: int = 0, recv: float = 1.0, prefill_done: float = 0.0,
             last_decode: float = 0.0, prefix_len: int = 0, custom_params=None, max_new: int = 16):
    ts = SimpleNamespace(scheduler_recv_time=recv, wait_queue_entry_time=recv, prefill_finished_time=prefill_done,
                         last_decode_finish_time=last_decode)
    sp = SimpleNamespace(custom_params=custom_params, max_new_tokens=max_new)
    return SimpleNamespace(rid=rid, time_stats=ts, origin_input_ids=list(range(prompt)), output_ids=[7] * outputs,
                           prefix_len=prefix_len, sampling_params=sp, finished=lambda: False)


def fake_scheduler(waiting=(), chunked=None, capacity: int = 4096, free: int = 4000, evictable: int = 0):
    return SimpleNamespace(waiting_queue=list(waiting), chunked_req=chunked, max_total_num_tokens=capacity,
                           token_to_kv_pool_allocator=SimpleNamespace(available_size=lambda: free),
                           tree_cache=SimpleNamespace(evictable_size=lambda: evictable))


def build(sched, running, now=10.0, builder=None):
    return (builder or SnapshotBuilder(SLO)).build(sched, running, now=now, cost=COST)


def test_first_token_time_is_the_prefill_finish_of_requests_with_outputs():
    decoding = fake_req("d", outputs=4, recv=1.0, prefill_done=1.6, last_decode=2.0)
    just_prefilled = fake_req("p", outputs=1, recv=1.5, prefill_done=1.9)
    in_flight = fake_req("f", outputs=0, recv=1.7, prefill_done=0.0)  # merged, result not processed yet (overlap)
    snap = build(fake_scheduler(), [decoding, just_prefilled, in_flight])
    by = {r.rid: r for r in snap.running}
    assert by["d"].first_token_s == 1.6 and by["d"].last_token_s == 2.0 and by["d"].arrival_s == 1.0
    assert by["p"].first_token_s == 1.9 and by["p"].last_token_s == 1.9
    assert by["f"].first_token_s is None and by["f"].output_tokens == 0


def test_retracted_request_keeps_its_first_token_and_refills_prompt_plus_outputs():
    retracted = fake_req("r", prompt=40, outputs=5, prefill_done=1.2, prefix_len=12)
    fresh = fake_req("w", prompt=30, recv=0.5)
    chunked = fake_req("c", prompt=900, recv=0.2, prefix_len=512)
    snap = build(fake_scheduler(waiting=[retracted, fresh, chunked], chunked=chunked, free=3000, evictable=100), [])
    assert [r.rid for r in snap.waiting] == ["w", "r"]  # by arrival; the chunked request is prefilling
    r = snap.waiting[1]
    assert r.first_token_s == 1.2 and r.prompt_tokens == 45 and r.prefilled_tokens == 12 and r.last_token_s is None
    assert snap.waiting[0].first_token_s is None
    assert snap.prefilling[0].prefilled_tokens == 512 and snap.prefilling[0].first_token_s is None
    assert (snap.kv_capacity_tokens, snap.kv_used_tokens) == (4096, 4096 - 3100)


def test_request_slos_are_taken_per_request_and_remembered_for_status():
    builder = SnapshotBuilder(SLO)
    own = fake_req("own", outputs=2, prefill_done=1.1, custom_params={"ttft_slo_ms": 400, "tpot_slo_ms": 25,
                                                                      "strict": True})
    plain = fake_req("plain", outputs=2, prefill_done=1.1, custom_params={"thinking_budget": 3})
    bad = fake_req("bad", outputs=2, prefill_done=1.1, custom_params={"tpot_slo_ms": -1})
    for _ in range(2):  # two iterations: counted and remembered once per request
        snap = build(fake_scheduler(), [own, plain, bad], builder=builder)
    by = {r.rid: r for r in snap.running}
    assert (by["own"].ttft_slo_s, by["own"].tpot_slo_s, by["own"].strict) == pytest.approx((0.4, 0.025, True))
    assert (by["plain"].ttft_slo_s, by["plain"].tpot_slo_s) == (1.0, 0.1)
    assert (by["bad"].ttft_slo_s, by["bad"].tpot_slo_s) == (1.0, 0.1)
    assert builder.bad_slo_requests == 1
    assert list(builder.recent_custom_slos) == ["own"]


def test_remembered_request_slos_are_bounded():
    builder = SnapshotBuilder(SLO)
    reqs = [fake_req(f"r{i}", outputs=1, prefill_done=1.0, custom_params={"tpot_slo_ms": 10 + i}) for i in range(40)]
    build(fake_scheduler(), reqs, builder=builder)
    assert len(builder.recent_custom_slos) == SnapshotBuilder.RECENT_CUSTOM
    assert next(reversed(builder.recent_custom_slos)) == "r39"
