"""Live: the README's first command runs. `sglang-fair demo` (what `make demo` runs after its set-up) serves the
embedded model with the fair policy, replays the head of the Azure code trace and prints its summary; here with 8
requests instead of 24 to stay short (about a minute on a 2-core CPU)."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys

import pytest

pytestmark = pytest.mark.live

REQUESTS = 8


def test_demo_serves_every_request_under_fair_and_prints_its_summary(tmp_path):
    from sglang_fair.live.server import server_slots

    log = tmp_path / "demo.log"
    argv = [sys.executable, "-m", "sglang_fair.cli", "demo", "--requests", str(REQUESTS)]
    with server_slots(1), open(log, "w") as out:
        proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            proc.wait(timeout=600)
        finally:
            try:
                os.killpg(proc.pid, signal.SIGKILL)  # its own group: the server it started, should any be left
            except ProcessLookupError:
                pass
            proc.wait()
    text = log.read_text(errors="replace")
    assert proc.returncode == 0, text[-3000:]
    assert f"demo: {REQUESTS} requests of azure-code" in text and "policy fair" in text, text[-3000:]
    served = re.search(r"server: policy fair, hooks verified True, planned iterations (\d+)", text)
    assert served and int(served.group(1)) >= REQUESTS, text[-3000:]  # every request needs a planned prefill
    assert f"requests: {REQUESTS} sent, {REQUESTS} completed, 0 errors" in text, text[-3000:]
    ttft = re.search(r"TTFT ms: p50 (\d+)  p90 (\d+)  p99 (\d+)", text)
    assert ttft and 0 < int(ttft.group(1)) <= int(ttft.group(2)) <= int(ttft.group(3)), text[-3000:]
    assert re.search(r"SLO attainment: \d+%   throughput \d+ output tok/s", text), text[-3000:]
