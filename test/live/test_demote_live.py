"""Live: fair's default admission (`demote-longest`). A burst of long prompts at a server whose TTFT SLO cannot absorb
it: every request is served in full (a demoted one after the on-time work), the status lists each demotion with the
prompt's length and its arrival on the wall clock (what the bench matches its requests by, bench/demotions.py), and
the bench's matching finds each listed demotion among the requests sent."""

from __future__ import annotations

import concurrent.futures as cf
import time

import pytest

from server import cpu_server_args, sglang_server
from sglang_fair.bench.demotions import mark_demoted
from sglang_fair.core.metrics import RequestTimes

pytestmark = pytest.mark.live

N = 12
TTFT_SLO_MS = 3000  # a few of these prompts fit in it on the CPU model, twelve do not


def length(k: int) -> int:
    return 1200 + 50 * k  # one length per request, so each demotion names its request


def test_a_burst_past_the_ttft_slo_is_served_and_its_demotions_are_listed(serve_command, model_path, prompt_ids,
                                                                           generate_raw):
    args = ["--fair-policy", "fair", "--ttft-slo-ms", str(TTFT_SLO_MS), "--tpot-slo-ms", "2000",
            *cpu_server_args(32768)]
    sent = [0.0] * N

    def send(k: int):
        sent[k] = time.time()
        return generate_raw(srv.url, prompt_ids(length(k), k), 4), time.time()

    with sglang_server(model_path, args, command=serve_command, startup_timeout_s=600) as srv:
        generate_raw(srv.url, prompt_ids(1500, 99), 2)  # warm-up: the online fit learns this CPU's prefill cost
        start = time.time()
        with cf.ThreadPoolExecutor(N) as ex:
            res = list(ex.map(send, range(N)))
        rank = srv.get("/sglang_fair/status").json()["ranks"][0]
    assert all(r.status_code == 200 and len(r.json()["output_ids"]) == 4 for r, _ in res)  # none lost
    listed = rank["demoted_recent"]
    lags = [round(e["arrival_wall_s"] - sent[(e["prompt_tokens"] - 1200) // 50], 3) for e in listed]
    print(f"demote-longest: {rank['demotions_total']} demotions, lengths {[e['prompt_tokens'] for e in listed]}, "
          f"arrival after the send (s) {lags}")
    assert listed and rank["demotions_total"] >= len({e["rid"] for e in listed}) and not rank["faults"]
    for e in listed:  # the prompt as the server counted it, and its arrival on the client's wall clock
        k = (e["prompt_tokens"] - 1200) // 50
        assert e["prompt_tokens"] == length(k)
        # the server's arrival is the earliest the request can have reached it (engine/intake.py): the start of the
        # forward during which it came, so up to one forward before the send (0.2 s seen in CI, the burst's threads
        # starting late on 2 cores); and at most a forward under way after it
        assert sent[k] - 1.0 <= e["arrival_wall_s"] <= sent[k] + 5.0, (e, sent[k])
    records = [RequestTimes(f"c{k}", sent[k] - start, done - start, done - start, 4, TTFT_SLO_MS / 1e3, 2.0, 4)
               for k, (_, done) in enumerate(res)]
    m = mark_demoted(records, [length(k) for k in range(N)], start, listed)
    assert (m.demoted, m.unmatched) == (len({e["rid"] for e in listed}), 0)
    assert {k for k, r in enumerate(m.records) if r.demoted} == {(e["prompt_tokens"] - 1200) // 50 for e in listed}
