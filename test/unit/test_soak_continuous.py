"""benchmark/soak.py --continuous without a server: the replay and the server's state are stand-ins, so what is
checked is the bookkeeping: one schedule over all phases, figures on the device's clock, a demotion the server lists
matched to its request, an HTTP 429 counted as refused (an SLO miss), nothing counted lost."""

from __future__ import annotations

import argparse

from factories import load_benchmark
from sglang_fair.live.replay import ReplayRecord


def args(**kw):
    base = dict(load=[0.5, 2.0, 0.5], minutes=[1.0, 1.0, 1.0], trace="azure-conv", shared=None, length_scale=1.0,
                max_prompt=8000, max_output=16, api_key=None, timeout_s=60.0, ttft_slo_ms=2000.0, tpot_slo_ms=100.0,
                bucket_s=30.0, first_s=60.0)
    base.update(kw)
    return argparse.Namespace(**base)


def test_continuous_soak_books_each_request_once_on_the_device_clock(monkeypatch):
    soak = load_benchmark("soak")
    k = 6.0
    seen = {}

    def fake_replay(url, reqs, **kw):
        seen["reqs"] = reqs
        out = []
        for i, r in enumerate(reqs):
            rec = ReplayRecord(request=r, sent_s=r.arrival_s)
            if i == 5:
                rec.error = "HTTP 429: over capacity"
            else:  # first token 0.6 s after sending (0.1 s on the device), then 60 ms per token (10 ms)
                rec.token_times_s = [r.arrival_s + 0.6 + 0.06 * j for j in range(r.output_tokens)]
            out.append(rec)
        return out

    monkeypatch.setattr(soak, "replay", fake_replay)
    monkeypatch.setattr(soak, "emulated_state", lambda url, key: None)

    def fake_idle(url, key, timeout_s):
        r = seen["reqs"][7]  # the server demoted request 7: listed by prompt length and arrival (wall clock)
        return {"kv_used_tokens": 0, "num_running_reqs": 0, "demotions_total": 1,
                "demoted_recent": [{"rid": "x", "prompt_tokens": r.prompt_tokens,
                                    "arrival_wall_s": seen["t0"] + r.arrival_s + 0.2}]}

    monkeypatch.setattr(soak, "wait_idle", fake_idle)
    real_time = soak.time.time
    monkeypatch.setattr(soak.time, "time", lambda: seen.setdefault("t0", real_time()))
    res = soak.run_continuous("http://x", args(), cap=2.0, pgid=None, k=k)
    n = len(seen["reqs"])
    # one schedule: phase arrivals at 1, 4 and 1 req/s, back to back over 180 s (server clock)
    assert [p["sent"] for p in res["phases"]] == [sum(1 for r in seen["reqs"] if a <= r.arrival_s < b)
                                                 for a, b in ((0, 60), (60, 120), (120, 180))]
    assert sum(p["sent"] for p in res["phases"]) == res["sent"] == n
    assert (res["lost"], res["errored"], res["completed"]) == (0, 1, n - 1)
    assert (res["demoted_matched"], res["demoted_unmatched"]) == (1, 0)
    rows = res["requests"]["rows"]
    assert rows[7][5] is True and rows[5][6] is True and rows[5][1] is None
    assert abs(rows[0][1] - 0.1) < 1e-9                       # TTFT on the device clock: 0.6 s / 6
    assert abs(rows[0][0] - seen["reqs"][0].arrival_s / k) < 1e-4   # rounded to 0.1 ms
    # buckets of 30 s on the server clock = 5 s on the device's: 6 over the 30 s run, 2 in the recovery phase
    assert [b["start_s"] for b in res["series"]] == [0.0, 5.0, 10.0, 15.0, 20.0, 25.0]
    assert len(res["recovery"]["series"]) == 2
    assert res["recovery"]["first_s"] == 10.0
    assert sum(b["demoted"] for b in res["series"]) == 1 and sum(b["rejected"] for b in res["series"]) == 1


def test_an_in_stream_abort_is_read_as_its_http_status():
    """A stream's status line is sent before SGLang aborts the request (e.g. 429 from --fair-admission reject), so
    the abort arrives as an event; the replay must not count it as a token."""
    from sglang_fair.live.replay import abort_reason
    event = {"text": "", "meta_info": {"completion_tokens": 0, "finish_reason": {
        "type": "abort", "message": "sglang-fair: rejected at arrival: ...", "status_code": 429}}}
    assert abort_reason(event) == "HTTP 429: sglang-fair: rejected at arrival: ..."
    done = {"meta_info": {"completion_tokens": 3, "finish_reason": {"type": "length", "length": 3}}}
    assert abort_reason(done) is None
    assert abort_reason({"meta_info": {"completion_tokens": 1, "finish_reason": None}}) is None
