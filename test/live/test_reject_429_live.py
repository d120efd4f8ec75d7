"""Live: `--fair-admission reject`. A burst of long prompts at a server whose TTFT SLO cannot absorb it: the requests
that cannot get their first token in time are answered HTTP 429 with a Retry-After header at arrival, the rest are
served in full, nothing is lost, the status counts the rejections, and the server is healthy and idle after."""

from __future__ import annotations

import concurrent.futures as cf
import time

import pytest
import requests

from server import cpu_server_args, sglang_server

pytestmark = pytest.mark.live

N = 12
PROMPT = 1500
TTFT_SLO_MS = 3000  # a few of these prompts fit in it on the CPU model, twelve do not


def test_a_burst_past_the_ttft_slo_gets_429_with_retry_after(serve_command, model_path, prompt_ids, generate_raw):
    args = ["--fair-policy", "fair", "--fair-admission", "reject", "--ttft-slo-ms", str(TTFT_SLO_MS),
            "--tpot-slo-ms", "2000", *cpu_server_args(32768)]
    with sglang_server(model_path, args, command=serve_command, startup_timeout_s=600) as srv:
        generate_raw(srv.url, prompt_ids(PROMPT, 99), 2)  # warm-up: the online fit learns this CPU's prefill cost
        with cf.ThreadPoolExecutor(N) as ex:
            res = list(ex.map(lambda k: generate_raw(srv.url, prompt_ids(PROMPT, k), 4), range(N)))
        status = srv.get("/sglang_fair/status").json()
        deadline = time.monotonic() + 60
        while srv.get("/sglang_fair/status").json()["ranks"][0]["num_waiting_reqs"]:
            assert time.monotonic() < deadline
            time.sleep(0.5)
        assert requests.get(srv.url + "/health", timeout=10).status_code == 200
    codes = [r.status_code for r in res]
    rejected = [r for r in res if r.status_code == 429]
    served = [r for r in res if r.status_code == 200]
    print(f"reject mode: {len(served)} served, {len(rejected)} rejected (HTTP 429), "
          f"Retry-After {[r.headers.get('Retry-After') for r in rejected]}")
    assert len(served) + len(rejected) == N, codes  # every request answered one way or the other
    assert served and rejected
    assert all(len(r.json()["output_ids"]) == 4 for r in served)
    for r in rejected:
        assert "rejected at arrival" in r.text and int(r.headers["Retry-After"]) >= 1
    rank = status["ranks"][0]
    assert rank["admission"] == "reject" and rank["rejected_at_arrival"] == len(rejected) and not rank["faults"]


def test_a_streamed_rejection_is_an_error_the_replay_reads_not_a_lost_request(serve_command, model_path):
    """Streams get SGLang's in-stream abort (the 200 status is already sent): the replay records it as "HTTP 429",
    one per rejection the server counts, and every other request gets all its tokens."""
    from sglang_fair.live.replay import ReplayRequest, replay
    args = ["--fair-policy", "fair", "--fair-admission", "reject", "--ttft-slo-ms", str(TTFT_SLO_MS),
            "--tpot-slo-ms", "2000", *cpu_server_args(32768)]
    with sglang_server(model_path, args, command=serve_command, startup_timeout_s=600) as srv:
        replay(srv.url, [ReplayRequest(0.0, PROMPT, 2)], seed=99)  # warm-up, as above
        recs = replay(srv.url, [ReplayRequest(0.0, PROMPT, 4) for _ in range(N)], seed=1, timeout_s=300)
        rank = srv.get("/sglang_fair/status").json()["ranks"][0]
    refused = [r for r in recs if r.error is not None]
    assert refused and all(r.error.startswith("HTTP 429") and "rejected at arrival" in r.error for r in refused)
    assert all(len(r.token_times_s) == 4 for r in recs if r.error is None)
    assert rank["rejected_at_arrival"] == len(refused)
