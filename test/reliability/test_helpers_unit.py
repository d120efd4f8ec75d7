"""The suite's own machinery (no server): the all-slots lock never holds a partial set, outcomes are tallied into
completed / errored / lost."""

from __future__ import annotations

import pytest

import reliability_helpers as rh
import sglang_fair.live.server as live_server


def test_all_server_slots_takes_every_slot_or_none(tmp_path, monkeypatch):
    monkeypatch.setattr(live_server, "SLOT_DIR", tmp_path)
    monkeypatch.setattr(live_server, "MAX_SERVERS", 2)
    with live_server.server_slot(wait_s=1):  # someone else holds one slot
        with pytest.raises(TimeoutError):
            with rh.all_server_slots(wait_s=1.5):
                pass
        # ... and the failed attempt left the free slot free
        with live_server.server_slot(wait_s=1):
            pass
    with rh.all_server_slots(wait_s=1):
        with pytest.raises(TimeoutError):  # while all are held, nobody gets one
            with live_server.server_slot(wait_s=1.5):
                pass
    with live_server.server_slot(wait_s=1):  # released on exit
        pass


def test_tally_counts_each_outcome_once():
    t = rh.Tally()
    for o in (rh.Outcome(ok=True), rh.Outcome(error="HTTP 400: bad"), rh.Outcome(lost="client timeout after 5 s"),
              rh.Outcome(ok=True)):
        t.add(o)
    f = t.figures()
    assert (f["sent"], f["completed"], f["errored"], f["lost"]) == (4, 2, 1, 1)
    assert f["reasons"] == {"HTTP 400: bad": 1, "LOST client timeout after 5 s": 1}
