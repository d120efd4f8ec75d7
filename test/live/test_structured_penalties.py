"""Live, issue 13: `sglang-fair serve --fair-policy fair --grammar-backend xgrammar` on the CPU (one server).

- an idle json_schema request finishes in seconds (it hung: ready grammar requests reached the waiting queue only
  inside SGLang's prefill call, which the adapter skipped for plans without prefill);
- a burst of six 900-token prompts and one json_schema request, sent while eight penalized sampled requests
  (frequency / presence penalty, min_new_tokens; streamed) are decoding, all finish while fair defers decodes (parked
  copies used to share the penalizer orchestrator with the running batch and crashed the scheduler after a mixed or
  prefill step), and those read after a forward are dated back to the read before it (engine/intake.py);
- /get_load answers quickly throughout the burst, and the server is healthy and idle after it;
- `--max-queued-requests` rejects what does not fit in the waiting queue with 503 and serves the rest.
Bounded: about 2-3 minutes on a 2-core CPU.
"""

from __future__ import annotations

import concurrent.futures as cf
import json
import random
import sys
import threading
import time

import pytest
import requests

from server import cpu_server_args, sglang_server

pytestmark = pytest.mark.live

SERVE = [sys.executable, "-m", "sglang_fair.cli", "serve"]
SCHEMA = {"type": "object", "properties": {"ok": {"type": "boolean"}}, "required": ["ok"],
          "additionalProperties": False}
MAX_QUEUED = 16
TIMEOUT_S = 600  # per request: far above the ~1-2 minutes the whole module takes on an idle 2-core machine


def _args() -> list[str]:
    base = cpu_server_args(16384)
    if "--grammar-backend" in base:
        i = base.index("--grammar-backend")
        del base[i:i + 2]
    # SLOs loose enough for a shared 2-core CPU: decodes bank slack, so fair defers them while the prompts prefill
    return ["--fair-policy", "fair", "--grammar-backend", "xgrammar", "--max-queued-requests", str(MAX_QUEUED),
            "--ttft-slo-ms", "10000", "--tpot-slo-ms", "2000", "--chunked-prefill-size", "1024", *base]


@pytest.fixture(scope="module")
def srv():
    from sglang_fair.data.model import make_model
    with sglang_server(make_model(), _args(), command=SERVE, startup_timeout_s=600) as s:
        yield s


def _post(srv, body: dict, timeout: float = TIMEOUT_S) -> requests.Response:
    return requests.post(srv.url + "/generate", json=body, timeout=timeout)


def _json_request(srv) -> dict:
    body = {"text": "Answer in JSON:", "sampling_params": {"json_schema": json.dumps(SCHEMA), "max_new_tokens": 32,
                                                           "temperature": 0.0}}
    r = _post(srv, body)
    r.raise_for_status()
    return r.json()


def _ids(n: int, seed: int) -> list[int]:
    rng = random.Random(seed)
    return [rng.randrange(10, 4000) for _ in range(n)]


def _status(srv) -> dict:
    return srv.get("/sglang_fair/status").json()["ranks"][0]


def test_idle_json_schema_request_finishes_in_seconds(srv):
    t0 = time.monotonic()
    out = _json_request(srv)
    elapsed = time.monotonic() - t0
    print(f"idle json_schema request: {elapsed:.2f} s, text {out['text']!r}")
    assert elapsed < 20.0
    assert out["meta_info"]["finish_reason"]["type"] in ("stop", "length")
    if out["meta_info"]["finish_reason"]["type"] == "stop":
        assert isinstance(json.loads(out["text"])["ok"], bool)


def test_burst_with_penalties_and_grammar_defers_decodes_and_completes(srv):
    before = _status(srv)
    loads, load_times, stop = [], [], threading.Event()

    def poll_load():
        while not stop.is_set():
            t = time.monotonic()
            r = requests.get(srv.url + "/get_load", timeout=10)
            load_times.append(time.monotonic() - t)
            loads.append((r.status_code, r.json()))
            time.sleep(0.2)

    decoding = threading.Semaphore(0)  # released once per penalized request, at its first streamed token

    def penalized(i: int) -> dict:
        sp = {"temperature": 0.8, "top_p": 0.95, "frequency_penalty": 0.5, "presence_penalty": 0.3,
              "repetition_penalty": 1.1 if i % 2 else 1.0, "min_new_tokens": 16, "max_new_tokens": 32,
              "sampling_seed": i}
        last, first = None, True
        with requests.post(srv.url + "/generate", json={"input_ids": _ids(40 + 10 * i, i), "sampling_params": sp,
                                                        "stream": True}, stream=True, timeout=TIMEOUT_S) as r:
            r.raise_for_status()
            for line in r.iter_lines():
                if line.startswith(b"data:") and line != b"data: [DONE]":
                    last = json.loads(line[5:])
                    if first:
                        first = False
                        decoding.release()
        assert last is not None, f"penalized request {i} streamed nothing"
        return last

    def long_prompt(i: int) -> dict:
        r = _post(srv, {"input_ids": _ids(900, 100 + i), "sampling_params": {"temperature": 0.0, "max_new_tokens": 8,
                                                                             "ignore_eos": True}})
        r.raise_for_status()
        return r.json()

    # a router polls from the server's start, so its first /get_load is long past; the very first one waits up to
    # 10 s for the scheduler's first answer by design (engine/http.py LoadCache), which a busy 2-core CI machine used
    requests.get(srv.url + "/get_load", timeout=15).raise_for_status()
    t0 = time.monotonic()
    poller = threading.Thread(target=poll_load, daemon=True)
    poller.start()
    with cf.ThreadPoolExecutor(16) as ex:
        pen = [ex.submit(penalized, i) for i in range(8)]
        # the prompts arrive once every penalized request is decoding (with at least 15 tokens to go), however slow
        # this machine is today: a fixed sleep let a loaded machine deliver them all at once, leaving no decode to defer
        for _ in range(8):
            assert decoding.acquire(timeout=TIMEOUT_S), "a penalized request produced no first token"
        longs = [ex.submit(long_prompt, i) for i in range(6)]
        js = ex.submit(_json_request, srv)
        pen_out = [f.result() for f in pen]
        long_out = [f.result() for f in longs]
        js_out = js.result()
    elapsed = time.monotonic() - t0
    stop.set()
    poller.join(timeout=15)
    after = _status(srv)
    deferred = after["deferred_total"] - before["deferred_total"]
    print(f"burst: {elapsed:.1f} s, deferred row-steps {deferred}, mixed forwards "
          f"{after['mixed_forwards'] - before['mixed_forwards']}, /get_load max {max(load_times):.2f} s over "
          f"{len(load_times)} polls, faults {after['faults']}, no_defer_reasons {after['no_defer_reasons']}")
    for o in pen_out:
        assert 16 <= o["meta_info"]["completion_tokens"] <= 32
    assert all(o["meta_info"]["completion_tokens"] == 8 for o in long_out)
    assert js_out["meta_info"]["finish_reason"]["type"] in ("stop", "length")
    assert deferred > 0, "fair deferred no decode during the burst"
    # the prompts came in while forwards ran: read at a forward's end, each is dated back to the read before it
    assert after["arrivals_backdated"] > before["arrivals_backdated"], (before, after)
    assert 0 < after["arrival_backdate_ms_mean"] < 60_000
    assert not after["faults"]
    assert loads and all(code == 200 and isinstance(body, list) for code, body in loads)
    assert max(load_times) < 3.0
    assert any(body[0]["num_tokens"] > 0 for _, body in loads)
    # healthy and idle after
    assert requests.get(srv.url + "/health", timeout=10).status_code == 200
    deadline = time.monotonic() + 30
    while (st := _status(srv))["num_running_reqs"] or st["deferred_now"]:
        assert time.monotonic() < deadline, st
        time.sleep(0.3)
    assert len(_json_request(srv)["output_ids"]) >= 1


def test_max_queued_requests_rejects_the_overflow_with_503(srv):
    def short(i: int, n: int = 20) -> tuple[int, str]:
        body = {"input_ids": _ids(n, 1000 + i), "sampling_params": {"temperature": 0.0, "max_new_tokens": 2,
                                                                    "ignore_eos": True}}
        r = _post(srv, body)
        return r.status_code, r.text

    with cf.ThreadPoolExecutor(3 * MAX_QUEUED + 1) as ex:
        busy = ex.submit(short, -1, 1000)  # a long prefill keeps the scheduler busy while the rest arrive
        time.sleep(0.3)
        res = list(ex.map(short, range(3 * MAX_QUEUED)))
        assert busy.result()[0] == 200
    rejected = [t for code, t in res if code == 503]
    served = [t for code, t in res if code == 200]
    print(f"max-queued-requests {MAX_QUEUED}: {len(served)} served, {len(rejected)} rejected")
    assert len(served) + len(rejected) == len(res)
    assert served and rejected
    assert all("queue is full" in t for t in rejected)
    assert requests.get(srv.url + "/health", timeout=10).status_code == 200
