"""SnapshotBuilder reuses the previous snapshot's views (issue 14): every snapshot must equal the one a fresh builder
makes from the same scheduler state, whatever changed in between."""

from __future__ import annotations

from factories import COST
from test_snapshot_builder import SLO, fake_req, fake_scheduler

from sglang_fair.engine.snapshot import SnapshotBuilder


def fresh(sched, running, now, token_times):
    b = SnapshotBuilder(SLO)
    b.token_times = token_times
    return b.build(sched, running, now=now, cost=COST)


def test_reused_views_equal_fresh_ones_through_tokens_prefix_hits_retraction_and_aborts():
    running = [fake_req(f"d{i}", prompt=40 + i, outputs=2 + i, recv=1.0 + i / 10, prefill_done=1.5 + i / 10,
                        last_decode=2.0) for i in range(4)]
    running[1].sampling_params.custom_params = {"tpot_slo_ms": 50, "strict": True}
    waiting = [fake_req(f"w{i}", prompt=100 + i, recv=3.0 - i / 10) for i in range(5)]
    sched = fake_scheduler(waiting=waiting)
    b = SnapshotBuilder(SLO)

    def check(now):
        snap = b.build(sched, running, now=now, cost=COST)
        assert snap == fresh(sched, running, now, b.token_times)
        return snap

    check(3.0)
    check(3.1)  # nothing changed: every view reused
    assert b.views_reused == 9 and b.views_built == 9
    for r in running[:2]:  # a decode step's result
        r.output_ids.append(7)
        r.time_stats.last_decode_finish_time = 3.15
    b.token_times.observe(running[:2], 3.2)
    waiting[0].prefix_len = 64  # a prefix match, which the adapter reports to the waiting mirror
    b.waiting.touch([waiting[0]])
    snap = check(3.3)
    assert snap.running[0].output_tokens == 3 and snap.running[0].last_token_s == 3.2
    assert b.views_updated == 2
    retracted = running.pop(3)  # retraction: back to waiting with its outputs
    retracted.time_stats.wait_queue_entry_time = 3.35
    sched.waiting_queue.append(retracted)
    sched.waiting_queue.remove(waiting[2])  # aborted while waiting: SGLang's abort_request pops it from the queue
    snap = check(3.4)
    assert retracted.rid in {v.rid for v in snap.waiting} and waiting[2].rid not in {v.rid for v in snap.waiting}
    sched.waiting_queue[1] = fake_req("w1", prompt=7, recv=2.95)  # another Req object under a known rid
    snap = check(3.5)
    assert next(v for v in snap.waiting if v.rid == "w1").prompt_tokens == 7
    sched.chunked_req = waiting[4]  # becomes the chunked request: prefilling, not waiting
    waiting[4].prefix_len = 50
    b.waiting.touch([waiting[4]])  # SGLang matched it in the batch-forming call the adapter handed it to
    snap = check(3.6)
    assert [v.rid for v in snap.prefilling] == ["w4"] and "w4" not in {v.rid for v in snap.waiting}
    sched.chunked_req = None
    running.append(sched.waiting_queue.pop(sched.waiting_queue.index(waiting[4])))  # its prefill finished
    waiting[4].output_ids.append(7)
    waiting[4].time_stats.prefill_finished_time = 3.65
    snap = check(3.7)
    assert snap.running[-1].rid == "w4" and snap.running[-1].first_token_s == 3.65


def test_a_change_the_mirror_was_not_told_of_is_corrected_at_the_next_full_read_and_counted():
    waiting = [fake_req(f"w{i}", prompt=100, recv=1.0 + i) for i in range(4)]
    sched = fake_scheduler(waiting=waiting)
    b = SnapshotBuilder(SLO, full_check_every=3)
    b.build(sched, [], now=5.0, cost=COST)  # a full read (the first)
    waiting[1].prefix_len = 40  # changed behind the mirror's back (no touch)
    waiting[2].finished = lambda: True  # finished while still queued
    stale = [b.build(sched, [], now=5.0 + i, cost=COST) for i in (0.1, 0.2)]
    assert all(s.waiting[1].prefilled_tokens == 0 and len(s.waiting) == 4 for s in stale)  # between full reads
    snap = b.build(sched, [], now=5.3, cost=COST)  # the third update after a full read re-reads the whole queue
    assert snap == fresh(sched, [], 5.3, b.token_times)
    assert [v.rid for v in snap.waiting] == ["w0", "w1", "w3"] and snap.waiting[1].prefilled_tokens == 40
    assert b.waiting.stale_fixed == 2 and b.waiting.full_reads == 2


def test_touched_and_invalidated_changes_are_not_counted_as_stale():
    waiting = [fake_req(f"w{i}", prompt=100, recv=1.0 + i) for i in range(3)]
    sched = fake_scheduler(waiting=waiting)
    b = SnapshotBuilder(SLO, full_check_every=2)
    b.build(sched, [], now=5.0, cost=COST)
    waiting[0].prefix_len = 10
    b.waiting.touch([waiting[0]])
    assert b.build(sched, [], now=5.1, cost=COST).waiting[0].prefilled_tokens == 10  # read at once, not stale
    waiting[1].prefix_len = 20
    b.waiting.invalidate()  # a stock step: SGLang worked on the whole queue
    snap = b.build(sched, [], now=5.2, cost=COST)
    assert snap.waiting[1].prefilled_tokens == 20 and b.waiting.stale_fixed == 0


def test_the_caches_hold_only_the_latest_snapshot():
    waiting = [fake_req(f"w{i}") for i in range(50)]
    sched = fake_scheduler(waiting=waiting)
    b = SnapshotBuilder(SLO)
    b.build(sched, [], now=1.0, cost=COST)
    sched.waiting_queue = waiting[:3]
    b.build(sched, [], now=1.1, cost=COST)
    assert len(b.waiting._entries) == 3 and len(b.waiting) == 3 and not b._running
