"""Live reliability against one `sglang-fair serve --fair-policy fair --api-key ...` server on the CPU:
overload (~3x measured capacity), client disconnects mid-stream, bad input (HTTP 400 with a reason, hypothesis
fuzzing of the per-request SLO fields), API-key handling of our endpoints, loopback-only binding.

Every request carries a hard client timeout; each scenario prints one `RELIABILITY <name> {...}` line with its
figures (pytest -s). Bounds are loose on purpose: they catch hangs, lost requests, leaks and a server that stays
slow after a burst, not small performance changes (those belong to benchmark/soak.py).
"""

from __future__ import annotations

import concurrent.futures as cf
import json
import math
import re
import random
import socket
import statistics
import subprocess
import time

import psutil
import pytest
import requests
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import reliability_helpers as rh
from sglang_fair.live.server import cpu_server_args, sglang_server

API_KEY = "reliability-test-key"
PROMPT = 500
MAX_NEW = 16
OVERLOAD_FACTOR = 3.0
OVERLOAD_S = 10.0
RECOVERY_TRIES = 3


def _recovered_bound(before_s: float) -> float:
    return max(3.0 * before_s, before_s + 2.0)


@pytest.fixture(scope="module")
def srv():
    args = ["--fair-policy", "fair", "--api-key", API_KEY, "--enable-metrics", *cpu_server_args(32768)]
    with sglang_server(rh.model_path(), args, command=rh.SERVE, startup_timeout_s=600) as s:
        yield s


def _probe(url: str, rng: random.Random, n: int = 3) -> float:
    lat = []
    for _ in range(n):
        o = rh.run_request(url, rh.prompt(PROMPT, rng), MAX_NEW, api_key=API_KEY)
        assert o.ok, o
        lat.append(o.latency_s)
    return statistics.median(lat)


@pytest.mark.live
def test_overload_3x_capacity_nothing_lost_memory_bounded_latency_recovers(srv):
    rng = random.Random(0)
    _probe(srv.url, rng, 1)  # warm-up
    before_s = _probe(srv.url, rng)
    # Capacity, roughly: a closed burst of 8 requests of the same shape.
    t0 = time.monotonic()
    with cf.ThreadPoolExecutor(8) as ex:
        burst = list(ex.map(lambda i: rh.run_request(srv.url, rh.prompt(PROMPT, random.Random(100 + i)), MAX_NEW,
                                                     api_key=API_KEY), range(8)))
    capacity_rps = 8 / (time.monotonic() - t0)
    assert all(o.ok for o in burst)
    rate = OVERLOAD_FACTOR * capacity_rps
    pgid = srv.proc.pid
    rss_start = rh.group_rss_bytes(pgid)
    t0 = time.monotonic()
    with rh.RssSampler(pgid) as rss:
        # hang bound: three times the serial time of everything offered (3x capacity for OVERLOAD_S), + 1 min
        outs = rh.open_loop(srv.url, rate, OVERLOAD_S, lambda i: rh.prompt(PROMPT, random.Random(1000 + i)),
                            MAX_NEW, api_key=API_KEY, seed=1, timeout=rh.hang_bound_s(OVERLOAD_FACTOR * OVERLOAD_S))
    wall_s = time.monotonic() - t0
    tally = rh.Tally()
    for o in outs:
        tally.add(o)
    idle = rh.wait_idle(srv.url, API_KEY)
    rss_end = rh.group_rss_bytes(pgid)
    # Recovery: the idle server answers a probe about as fast as before the burst (a few tries, so a passing
    # load spike elsewhere on the machine does not count against it).
    for _ in range(RECOVERY_TRIES):
        after_s = _probe(srv.url, rng)
        if after_s <= _recovered_bound(before_s):
            break
        time.sleep(2.0)
    lat = sorted(o.latency_s for o in outs if o.ok)
    rh.report("overload", capacity_rps=round(capacity_rps, 2), offered_rps=round(rate, 2), burst_s=OVERLOAD_S,
              drain_wall_s=round(wall_s, 1), **tally.figures(),
              latency_p50_s=round(lat[len(lat) // 2], 2) if lat else None, latency_max_s=round(lat[-1], 2) if lat else None,
              probe_before_s=round(before_s, 3), probe_after_s=round(after_s, 3),
              rss_start_mb=rss_start >> 20, rss_peak_mb=rss.peak >> 20, rss_end_mb=rss_end >> 20,
              faults=idle["faults"])
    assert tally.sent >= 2 * OVERLOAD_S * capacity_rps  # it really was an overload
    assert tally.lost == 0, tally.reasons
    assert tally.completed + tally.errored == tally.sent
    assert srv.proc.poll() is None and srv.get("/health").status_code == 200
    assert idle["kv_used_tokens"] == 0 and idle["num_running_reqs"] == 0 and idle["deferred_now"] == 0
    assert not idle["faults"]
    assert rss.peak - rss_start < 1.5 * 2**30 and rss_end - rss_start < 0.5 * 2**30
    assert after_s <= _recovered_bound(before_s), (before_s, after_s)


def _stream(url: str, ids: list[int], max_new: int, disconnect_after: int | None) -> tuple[str, int]:
    body = {"input_ids": ids, "stream": True,
            "sampling_params": {"temperature": 0.0, "max_new_tokens": max_new, "ignore_eos": True}}
    seen = 0
    with requests.post(url + "/generate", json=body, stream=True, timeout=rh.CLIENT_TIMEOUT_S,
                       headers=rh.auth(API_KEY)) as r:
        if r.status_code != 200:
            return f"HTTP {r.status_code}", seen
        for line in r.iter_lines():
            if not line.startswith(b"data:") or line[5:].strip() == b"[DONE]":
                continue
            msg = json.loads(line[5:])
            if "error" in msg:
                return "error", seen
            seen = int(msg["meta_info"]["completion_tokens"])
            if disconnect_after is not None and seen >= disconnect_after:
                r.close()  # the client goes away mid-stream
                return "disconnected", seen
    return "done", seen


@pytest.mark.live
def test_client_disconnects_mid_stream_leave_nothing_behind(srv):
    ref_ids = rh.prompt(64, random.Random(7))
    ref = rh.run_request(srv.url, ref_ids, 8, api_key=API_KEY)
    assert ref.ok
    rng = random.Random(3)
    jobs = [(rh.prompt(300, rng), 3 if i % 2 == 0 else None) for i in range(12)]  # half of them disconnect
    with cf.ThreadPoolExecutor(len(jobs)) as ex:
        res = list(ex.map(lambda j: _stream(srv.url, j[0], 48, j[1]), jobs))
    idle = rh.wait_idle(srv.url, API_KEY)
    after = rh.run_request(srv.url, ref_ids, 8, api_key=API_KEY)
    status = srv.get("/sglang_fair/status", headers=rh.auth(API_KEY)).json()["ranks"][0]
    rh.report("aborts", sent=len(jobs), disconnected=sum(r[0] == "disconnected" for r in res),
              completed=sum(r == ("done", 48) for r in res), lost=sum(r[0] not in ("done", "disconnected") for r in res),
              kv_used_after=idle["kv_used_tokens"], running_after=idle["num_running_reqs"],
              waiting_after=idle["num_waiting_reqs"], deferred_after=idle["deferred_now"])
    assert [r[0] for r in res] == ["disconnected" if d else "done" for _, d in jobs]
    assert all(n == 48 for (s, n) in res if s == "done")
    assert idle["kv_used_tokens"] == 0 and idle["num_running_reqs"] == 0 and idle["num_waiting_reqs"] == 0
    assert idle["deferred_now"] == 0 and status["deferred_now"] == 0 and not status["faults"]
    assert after.ok and after.output_ids == ref.output_ids  # later requests unaffected (fp32 greedy)


# ---- bad input ---------------------------------------------------------------------------------------------------
def _post_raw(srv, data: bytes, path: str = "/generate") -> requests.Response:
    return requests.post(srv.url + path, data=data, timeout=60,
                         headers={**rh.auth(API_KEY), "Content-Type": "application/json"})


def _gen_body(custom=None, **sp_over) -> dict:
    sp = {"temperature": 0.0, "max_new_tokens": 2, "ignore_eos": True, **sp_over}
    if custom is not None:
        sp["custom_params"] = custom
    return {"input_ids": [11, 12, 13, 14, 15, 16, 17, 18], "sampling_params": sp}


BAD_REQUESTS = {
    "malformed_json": (b'{"input_ids": [1, 2, 3], "sampling_params": {', None),
    "not_an_object": (b"[1, 2, 3]", None),
    "over_context_length": (json.dumps({"input_ids": [11] * 9000, "sampling_params": {"max_new_tokens": 2}}).encode(),
                            "context length|too long|exceed"),
    # SGLang's own contract check answers this one; its message gives the type, not the field name
    "max_new_tokens_wrong_type": (json.dumps(_gen_body(max_new_tokens="ten")).encode(), "invalid type|max_new_tokens"),
    "negative_temperature": (json.dumps(_gen_body(temperature=-1.0)).encode(), "temperature"),
    "top_p_out_of_range": (json.dumps(_gen_body(top_p=1.5)).encode(), "top_p"),
    "slo_negative": (json.dumps(_gen_body({"ttft_slo_ms": -5})).encode(), "ttft_slo_ms"),
    "slo_zero": (json.dumps(_gen_body({"tpot_slo_ms": 0})).encode(), "tpot_slo_ms"),
    "slo_nan": (json.dumps(_gen_body({"tpot_slo_ms": math.nan})).encode(), "tpot_slo_ms"),
    "slo_huge": (json.dumps(_gen_body({"ttft_slo_ms": 1e12})).encode(), "ttft_slo_ms"),
    "slo_infinite": (json.dumps(_gen_body({"ttft_slo_ms": math.inf})).encode(), "ttft_slo_ms"),
    "slo_wrong_type": (json.dumps(_gen_body({"ttft_slo_ms": "fast"})).encode(), "ttft_slo_ms"),
    "slo_strict_wrong_type": (json.dumps(_gen_body({"strict": "yes"})).encode(), "strict"),
    "slo_not_an_object": (json.dumps(_gen_body([1, 2])).encode(), "custom_params"),
}


@pytest.mark.live
def test_bad_input_gets_400_with_a_reason_and_the_server_keeps_serving(srv):
    got = {}
    for name, (data, reason) in BAD_REQUESTS.items():
        r = _post_raw(srv, data)
        got[name] = r.status_code
        assert r.status_code == 400, (name, r.status_code, r.text[:300])
        assert r.text.strip(), name
        if reason is not None:
            assert re.search(reason, r.text, re.I), (name, r.text[:300])
    # The largest accepted SLO is valid; so is a well-formed request after all the bad ones.
    from sglang_fair.config import MAX_SLO_MS
    ok = _post_raw(srv, json.dumps(_gen_body({"ttft_slo_ms": MAX_SLO_MS, "tpot_slo_ms": 0.5})).encode())
    assert ok.status_code == 200 and len(ok.json()["output_ids"]) == 2
    assert srv.proc.poll() is None and srv.get("/health").status_code == 200
    rh.report("bad_input", sent=len(BAD_REQUESTS) + 1, http_400=sum(v == 400 for v in got.values()),
              completed=1, lost=0, codes=got)


_slo_value = st.one_of(st.none(), st.booleans(), st.integers(-10**6, 10**15),
                       st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=4),
                       st.lists(st.integers(0, 3), max_size=2), st.dictionaries(st.text(max_size=2), st.integers(),
                                                                                 max_size=1))
_custom = st.one_of(st.dictionaries(st.sampled_from(["ttft_slo_ms", "tpot_slo_ms", "strict", "other"]), _slo_value,
                                    max_size=4),
                    _slo_value)


@pytest.mark.live
@settings(max_examples=30, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(custom=_custom, stream=st.booleans())
def test_fuzzed_request_slos_are_accepted_or_rejected_with_400(srv, custom, stream):
    from sglang_fair.config import SloConfig
    from sglang_fair.engine.http import request_slo_problem

    body = _gen_body(custom)
    body["stream"] = stream
    data = json.dumps(body).encode()  # NaN/Infinity as the json module writes them; the server's json reads them
    problem = request_slo_problem("/generate", json.loads(data), SloConfig())
    r = _post_raw(srv, data)
    if problem is not None:
        assert r.status_code == 400, (custom, r.status_code, r.text[:200])
        assert r.json()["error"]["message"] == problem
    elif custom is not None and not isinstance(custom, dict):
        # not our field's shape (SGLang's own check of custom_params decides), but never a server error or a hang
        assert r.status_code in (200, 400), (custom, r.status_code, r.text[:200])
    else:
        assert r.status_code == 200, (custom, r.status_code, r.text[:200])
        n = (r.text.count("data:") - r.text.count("[DONE]")) if stream else len(r.json()["output_ids"])
        assert n >= 1


# ---- security defaults ---------------------------------------------------------------------------------------------
@pytest.mark.live
def test_api_key_guards_our_endpoints_like_sglangs_own(srv):
    codes = {}
    for path in ("/sglang_fair/status", "/get_load", "/server_info", "/v1/loads", "/health", "/metrics"):
        codes[path] = (srv.get(path).status_code,
                       srv.get(path, headers={"Authorization": "Bearer wrong"}).status_code,
                       srv.get(path, headers=rh.auth(API_KEY)).status_code)
    rh.report("api_key", codes=codes)
    for ours, theirs in (("/sglang_fair/status", "/server_info"), ("/get_load", "/v1/loads")):
        assert codes[ours] == codes[theirs] == (401, 401, 200), codes
    assert codes["/health"] == codes["/metrics"] == (200, 200, 200)  # SGLang leaves probes and scraping open
    assert rh.generate(srv.url, [11, 12, 13], 2).status_code == 401
    metrics = srv.get("/metrics").text
    assert "sglang_fair:planned_iterations" in metrics


def _non_loopback_ipv4() -> str | None:
    for addrs in psutil.net_if_addrs().values():
        for a in addrs:
            if a.family == socket.AF_INET and not a.address.startswith("127."):
                return a.address
    return None


@pytest.mark.live
def test_serve_listens_on_loopback_only(srv):
    port = int(srv.url.rsplit(":", 1)[1])
    listening = [c.laddr.ip for c in psutil.net_connections("inet") if c.status == psutil.CONN_LISTEN
                 and c.laddr.port == port]
    assert listening == ["127.0.0.1"], listening
    addr = _non_loopback_ipv4()
    if addr is None:
        pytest.skip("this machine has no non-loopback IPv4 address to try the port on")
    with pytest.raises(OSError), socket.create_connection((addr, port), timeout=3):
        pass
    rh.report("bind", listening=listening, refused_on=addr)


def test_bad_serve_flags_are_cli_errors_before_any_model_loads():
    p = subprocess.run([*rh.SERVE, "--fair-policy", "nope"], capture_output=True, text=True, timeout=120)
    assert p.returncode == 2 and "--fair-policy must be one of" in p.stderr, p.stderr[-500:]
    for flags, needle in ((["--ttft-slo-ms", "-1"], "--ttft-slo-ms"), (["--fair-param", "token_budget"], "KEY=VALUE"),
                          (["--fair-param", "nonsense=1"], "--fair-param")):
        p = subprocess.run([*rh.SERVE, *flags], capture_output=True, text=True, timeout=120)
        assert p.returncode == 2 and needle in p.stderr, (flags, p.stderr[-500:])
