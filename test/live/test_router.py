"""Live: two `sglang-fair serve --fair-policy fair` servers behind sglang-router 0.3.2's power_of_two. A burst of long
prompts sent straight to server A raises A's /get_load; short requests sent through the router then land on B.

Both machine-wide server slots are held for the whole module (about 2-3 minutes), taken together (`server_slots(2)`).
"""

from __future__ import annotations

import concurrent.futures as cf
import contextlib
import threading
import time

import pytest
import requests

from server import cpu_server_args, sglang_server
from sglang_fair.live.server import requests_served, server_slots, sglang_router

pytestmark = pytest.mark.live

N_BURST = 10  # 12000 prompt tokens, ~9 s of prefill at the ~1300 tokens/s of CI's VM; routing ends ~4.7 s after
# the burst starts, so A still holds queued prefill then on a machine 1.5x faster (6 prompts left ~0.8 s)
N_ROUTED = 16
BURST_PROMPT = 1200
BURST_NEW = 16


@pytest.fixture(scope="module")
def cluster(model_path, serve_command):
    args = ["--fair-policy", "fair", "--enable-metrics", *cpu_server_args(16384)]
    with server_slots(2), sglang_server(model_path, args, command=serve_command, startup_timeout_s=600) as a, \
            sglang_server(model_path, args, command=serve_command, startup_timeout_s=600) as b, \
            sglang_router([a.url, b.url], "power_of_two", load_poll_s=1) as r:
        yield a, b, r.url


def _load(srv) -> int:
    return sum(int(e["num_tokens"]) for e in srv.get("/get_load", timeout=10).json())


def _requests_done(srv) -> int:
    n = requests_served(srv.url)
    assert n is not None, "the server's /metrics could not be read"
    return int(n)


def test_loaded_server_reports_more_load_and_the_router_sends_new_requests_to_the_other(cluster, generate_ok):
    a, b, router_url = cluster
    assert _load(a) == 0 and _load(b) == 0  # idle instances read 0
    done_a, done_b = _requests_done(a), _requests_done(b)
    loads: list[tuple[int, int]] = []
    stop = threading.Event()

    def poll():
        while not stop.is_set():
            with contextlib.suppress(requests.RequestException, ValueError):
                loads.append((_load(a), _load(b)))
            time.sleep(0.2)

    poller = threading.Thread(target=poll, daemon=True)
    poller.start()
    with cf.ThreadPoolExecutor(N_BURST + N_ROUTED) as ex:
        # The burst: long prompts, more prefill work than A can do within its TTFT horizon, and a KV-full queue.
        burst = [ex.submit(generate_ok, a.url, [(k * 977 + i * 13) % 4000 + 10 for i in range(BURST_PROMPT)], BURST_NEW)
                 for k in range(N_BURST)]
        deadline = time.monotonic() + 60
        while not (loads and loads[-1][0] > 0):
            assert time.monotonic() < deadline, f"A's load never rose: {loads[-5:]}"
            time.sleep(0.1)
        time.sleep(2.5)  # > two router polls (1 s) with A loaded
        load_a_at_routing = _load(a)
        routed = []
        for k in range(N_ROUTED):  # short requests through the router, spread over ~2 s
            routed.append(ex.submit(generate_ok, router_url, [(k * 31 + i) % 4000 + 10 for i in range(16)], 4))
            time.sleep(0.12)
        routed_out = [f.result() for f in routed]
        burst_out = [f.result() for f in burst]
    stop.set()
    poller.join(timeout=5)
    assert all(len(o["output_ids"]) == 4 for o in routed_out)
    assert all(len(o["output_ids"]) == BURST_NEW for o in burst_out)
    time.sleep(1.0)
    on_a = _requests_done(a) - done_a - N_BURST
    on_b = _requests_done(b) - done_b
    print(f"\nrouted: {on_a} to the loaded server A, {on_b} to B; A's load at routing {load_a_at_routing}, "
          f"max loads A {max(la for la, _ in loads)} / B {max(lb for _, lb in loads)}")
    assert on_a + on_b == N_ROUTED, (on_a, on_b)
    assert load_a_at_routing > 0 and max(la for la, _ in loads) > max(lb for _, lb in loads), loads
    assert on_b >= 0.75 * N_ROUTED, f"router sent {on_a} to the loaded server, {on_b} to the idle one; loads {loads}"
