"""Live: the README's first command runs. `sglang-fair demo` (what `make demo` runs after its set-up) serves the
embedded model with the fair policy, replays the head of the Azure code trace and prints its summary; here with 8
requests instead of 24 to stay short (about a minute on a 2-core CPU)."""

from __future__ import annotations

import re
import sys

import pytest

from server import run_in_own_group

pytestmark = pytest.mark.live

REQUESTS = 8


def test_demo_serves_every_request_under_fair_and_prints_its_summary(tmp_path):
    from sglang_fair.live.server import server_slots

    log = tmp_path / "demo.log"
    argv = [sys.executable, "-m", "sglang_fair.cli", "demo", "--requests", str(REQUESTS)]
    with server_slots(1):
        returncode = run_in_own_group(argv, log, timeout_s=600)
    text = log.read_text(errors="replace")
    assert returncode == 0, text[-3000:]
    assert f"demo: {REQUESTS} requests of azure-code" in text and "policy fair" in text, text[-3000:]
    served = re.search(r"server: policy fair, hooks verified True, planned iterations (\d+)", text)
    assert served and int(served.group(1)) >= REQUESTS, text[-3000:]  # every request needs a planned prefill
    assert f"requests: {REQUESTS} sent, {REQUESTS} completed, 0 errors" in text, text[-3000:]
    ttft = re.search(r"TTFT ms: p50 (\d+)  p90 (\d+)  p99 (\d+)", text)
    assert ttft and 0 < int(ttft.group(1)) <= int(ttft.group(2)) <= int(ttft.group(3)), text[-3000:]
    assert re.search(r"SLO attainment: \d+%   throughput \d+ output tok/s", text), text[-3000:]
