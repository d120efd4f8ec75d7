"""engine/intake.py's arrival estimate: a request read after a forward may have arrived at the previous read; the
snapshot plans its TTFT from that (the client's clock), not from SGLang's receipt stamp."""

from __future__ import annotations

from test_snapshot_builder import build, fake_req, fake_scheduler

from sglang_fair.engine.intake import ARRIVAL_ATTR, ArrivalEstimate, stamp_arrival


def test_a_request_read_after_a_forward_is_dated_back_to_the_previous_read():
    est = ArrivalEstimate()
    est.on_pass(10.0)  # a pass read the socket and planned
    est.on_forward(10.01)  # its forward ran (600 ms)
    assert est.arrival_s(10.62) == 10.0
    est.on_pass(10.63)  # the next pass: nothing ran, the loop read again at once (idle)
    assert est.arrival_s(10.7) == 10.7
    assert est.status() == {"arrivals_backdated": 1, "arrival_backdate_ms_mean": 620.0}


def test_before_any_pass_or_forward_the_receipt_stands():
    est = ArrivalEstimate()
    assert est.arrival_s(5.0) == 5.0
    assert est.status() == {"arrivals_backdated": 0, "arrival_backdate_ms_mean": None}
    est.on_pass(4.0)
    assert est.arrival_s(5.0) == 5.0  # no forward since the read
    est.on_forward(6.0)  # a forward later than the receipt cannot have delayed it
    assert est.arrival_s(5.0) == 5.0


def test_stamped_once_so_a_requeued_request_keeps_its_arrival_and_the_snapshot_uses_it():
    est = ArrivalEstimate()
    est.on_pass(1.0)
    est.on_forward(1.01)
    req = fake_req("a", recv=1.5)
    stamp_arrival(req, est)
    assert getattr(req, ARRIVAL_ATTR) == 1.0
    est.on_pass(2.0)
    est.on_forward(2.01)
    stamp_arrival(req, est)  # back in the queue (retraction): unchanged
    assert getattr(req, ARRIVAL_ATTR) == 1.0
    other = fake_req("b", recv=1.2)  # never stamped (no intake hook): SGLang's receipt
    snap = build(fake_scheduler(waiting=[req, other]), [])
    assert {r.rid: r.arrival_s for r in snap.waiting} == {"a": 1.0, "b": 1.2}
    assert [r.rid for r in snap.waiting] == ["a", "b"]  # sorted by the estimate
