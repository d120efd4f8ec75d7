"""Live: two `sglang-fair serve` workers (with --api-key) behind sglang-router 0.3.2; one worker's process group is
killed mid-run. Counts what the clients saw (completed / clear error / lost), shows the traffic after the kill
lands on the survivor, and checks that the router reaches our /get_load with its --api-key (GET /get_loads on the
router reports a load >= 0 per worker, -1 when the poll fails).

Needs both machine-wide server slots at once (taken together, `server_slots(2)`).
"""

from __future__ import annotations

import concurrent.futures as cf
import os
import random
import re
import signal
import threading
import time

import pytest
import requests

import reliability_helpers as rh
from sglang_fair.live.server import cpu_server_args, server_slots, sglang_router, sglang_server

pytestmark = pytest.mark.live

API_KEY = "router-test-key"
PROMPT = 200
MAX_NEW = 16


def _prompt_tokens_total(url: str) -> float:
    text = requests.get(url + "/metrics", timeout=30).text
    return sum(float(v) for v in re.findall(r"^sglang:prompt_tokens_total\{[^}]*\} ([0-9.e+]+)$", text, re.M))


def _send(url: str, seed: int, timeout: float = rh.CLIENT_TIMEOUT_S) -> rh.Outcome:
    return rh.run_request(url, rh.prompt(PROMPT, random.Random(seed)), MAX_NEW, api_key=API_KEY, timeout=timeout)


def test_killing_one_worker_behind_the_router(tmp_path):
    args = ["--fair-policy", "fair", "--api-key", API_KEY, "--enable-metrics", *cpu_server_args(16384)]
    model = rh.model_path()
    # One torch thread per worker: two schedulers with two spinning OpenMP threads each on a 2-core machine slow
    # each other down by an order of magnitude.
    kw = dict(env={"OMP_NUM_THREADS": "1"}, startup_timeout_s=600, command=rh.SERVE)
    with server_slots(2), sglang_server(model, args, **kw) as w1, sglang_server(model, args, **kw) as w2:
        with sglang_router([w1.url, w2.url], "round_robin", api_key=API_KEY) as rt:
            router = rt.url
            loads = requests.get(router + "/get_loads", timeout=30, headers=rh.auth(API_KEY)).json()
            # both workers before the kill
            with cf.ThreadPoolExecutor(8) as ex:
                warm = list(ex.map(lambda i: _send(router, i), range(8)))
            assert all(o.ok for o in warm), [o.error or o.lost for o in warm]
            one = _send(router, 50)
            assert one.ok, one
            timeout = rh.hang_bound_s(24 * one.latency_s)  # ~24 requests below, as if served one by one
            share = [_prompt_tokens_total(w.url) for w in (w1, w2)]
            assert all(s > 0 for s in share), share

            # steady traffic; kill w1's whole process group 3 s in
            outs: list = []
            killed_at = []

            def killer():
                time.sleep(3.0)
                killed_at.append(time.monotonic())
                os.killpg(w1.proc.pid, signal.SIGKILL)

            t0 = time.monotonic()
            kt = threading.Thread(target=killer)
            kt.start()
            outs = rh.open_loop(router, 3.0, 8.0, lambda i: rh.prompt(PROMPT, random.Random(100 + i)), MAX_NEW,
                                api_key=API_KEY, seed=2, timeout=timeout)
            kt.join()
            during = rh.Tally()
            for o in outs:
                during.add(o)

            # new traffic after the kill: where does it go?
            survivor_before = _prompt_tokens_total(w2.url)
            after = [_send(router, 1000 + i, timeout) for i in range(8)]
            survivor_gain = _prompt_tokens_total(w2.url) - survivor_before
            tally_after = rh.Tally()
            for o in after:
                tally_after.add(o)
            loads_after = requests.get(router + "/get_loads", timeout=30, headers=rh.auth(API_KEY)).json()
            workers_after = requests.get(router + "/workers", timeout=30, headers=rh.auth(API_KEY)).json()
    rh.report("router_fault", policy="round_robin", get_loads_before=loads, during=during.figures(),
              after=tally_after.figures(), survivor_prompt_tokens_gain=survivor_gain,
              expected_gain=tally_after.completed * PROMPT, get_loads_after=loads_after,
              workers_after=[(w.get("url"), w.get("is_healthy")) for w in workers_after.get("workers", [])],
              kill_after_s=round(killed_at[0] - t0, 1))
    assert [w["load"] >= 0 for w in loads["workers"]] == [True, True], loads  # /get_load reached with the key
    assert during.lost == 0, during.reasons
    assert tally_after.lost == 0 and tally_after.completed == len(after), tally_after.reasons
    assert survivor_gain == tally_after.completed * PROMPT  # every request after the kill was served by w2
