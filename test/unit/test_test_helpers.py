"""The test suites' own machinery (no server): server slots are taken all at once or not at all, outcomes are tallied into
completed / errored / lost."""

from __future__ import annotations

import pytest

from reliability import reliability_helpers as rh  # test/reliability (a namespace package under test/)
import sglang_fair.live.server as live_server


def test_server_slots_takes_every_slot_or_none(tmp_path, monkeypatch):
    monkeypatch.setattr(live_server, "SLOT_DIR", tmp_path)
    monkeypatch.setattr(live_server, "MAX_SERVERS", 2)
    with live_server.server_slots(1, wait_s=1):  # someone else holds one slot
        with pytest.raises(TimeoutError):
            with live_server.server_slots(2, wait_s=1.5):
                pass
        # ... and the failed attempt left the free slot free
        with live_server.server_slots(1, wait_s=1):
            pass
    with live_server.server_slots(2, wait_s=1):
        with pytest.raises(TimeoutError):  # while all are held, nobody gets one
            with live_server.server_slots(1, wait_s=1.5):
                pass
    with live_server.server_slots(1, wait_s=1):  # released on exit
        pass


def test_tally_counts_each_outcome_once():
    t = rh.Tally()
    for o in (rh.Outcome(ok=True), rh.Outcome(error="HTTP 400: bad"), rh.Outcome(lost="client timeout after 5 s"),
              rh.Outcome(ok=True)):
        t.add(o)
    f = t.figures()
    assert (f["sent"], f["completed"], f["errored"], f["lost"]) == (4, 2, 1, 1)
    assert f["reasons"] == {"HTTP 400: bad": 1, "LOST client timeout after 5 s": 1}


def test_servers_inside_server_slots_use_the_held_slots(tmp_path, monkeypatch):
    monkeypatch.setattr(live_server, "SLOT_DIR", tmp_path)
    monkeypatch.setattr(live_server, "MAX_SERVERS", 2)
    with live_server.server_slots(2, wait_s=1):
        with live_server._one_slot(), live_server._one_slot():  # both servers get a held slot, no waiting
            with pytest.raises(TimeoutError):  # a third one would need a new slot: none free
                with live_server._one_slot(wait_s=1.5):
                    pass
    with pytest.raises(ValueError, match="server_slots"):
        with live_server.server_slots(3):
            pass


def test_test_file_names_are_unique_across_suites():
    """pytest imports test files by basename (no packages under test/): two suites with the same file name stop the
    whole collection with an 'import file mismatch'."""
    from collections import Counter
    from pathlib import Path

    names = Counter(p.name for p in Path(__file__).resolve().parents[1].rglob("test_*.py"))
    assert not [n for n, k in names.items() if k > 1]


def test_a_server_that_hangs_at_start_up_reports_its_log_and_stacks(tmp_path):
    """A child that never becomes ready: the error names where the log stopped (without SGLang's import noise) and
    where each thread of the group was stuck (faulthandler on SIGABRT)."""
    import sys
    script = ("import sys, time\n"
              "print('Ignore import error when loading sglang.srt.models.x: noise', flush=True)\n"
              "print('Memory pool end. avail mem=20 GB', flush=True)\n"
              "def stuck_in_warmup():\n"
              "    time.sleep(120)\n"
              "stuck_in_warmup()\n")
    with pytest.raises(TimeoutError) as err:
        with live_server._spawned([sys.executable, "-c", script], url="http://127.0.0.1:9", ready=lambda srv: False,
                                  startup_timeout_s=2, what="fake server", log_prefix="hang-", log_dir=tmp_path):
            pass
    msg = str(err.value)
    head, stacks = msg.split("--- stacks on SIGABRT ---")
    assert "Memory pool end" in head and "Ignore import error" not in head
    assert "stuck_in_warmup" in stacks and "Current thread" in stacks
