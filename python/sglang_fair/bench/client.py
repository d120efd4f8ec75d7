"""One probe: SGLang's bench_serving replays a mooncake trace file against a server (or a router) at a rate scale.

bench_serving runs in this process (`sglang.benchmark.serving.cli_main` with its own flags: importing it costs
~14 s, once per benchmark run, not per probe), with `--dataset-name mooncake --use-trace-timestamps
--mooncake-slowdown-factor 1/scale --output-details`, no warm-up requests; its per-request output (TTFT, inter-token
latencies, lengths, errors) becomes `metrics.RequestTimes` on the trace's own clock:
arrival = scheduled send time, first token = arrival + TTFT, last token = first + sum of ITLs.
A probe past its time cap is cut: a watchdog asks every server for `/abort_request` (abort_all) until bench_serving
returns, and the probe is marked aborted (it then fails both capacity criteria).
"""

from __future__ import annotations

import contextlib
import io
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import orjson
import requests

from ..core.metrics import RequestTimes
from ..live.monitor import Background
from ..sim.traces import Trace


@dataclass
class Probe:
    scale: float
    records: list[RequestTimes]
    aborted: bool
    wall_s: float
    input_lens: list[int]
    """Prompt lengths bench_serving really sent (tokens, its own count)."""
    bench: dict = field(default_factory=dict)
    """bench_serving's own summary figures (its percentiles, throughput, goodput)."""
    started_wall_s: float = 0.0
    """Wall-clock time (time.time()) when the replay began: places the probe in a server's `--fair-trace`."""


BENCH_KEYS = ("completed", "request_throughput", "output_throughput", "mean_ttft_ms", "median_ttft_ms",
              "p99_ttft_ms", "mean_tpot_ms", "median_tpot_ms", "p99_tpot_ms", "p99_itl_ms", "duration")


def _bench_argv(base_url: str, model: str, trace_path: Path, scale: float, n: int, out_path: Path,
                seed: int) -> list[str]:
    return ["bench_serving", "--backend", "sglang", "--base-url", base_url, "--model", model, "--tokenizer", model,
            "--dataset-name", "mooncake", "--dataset-path", str(trace_path), "--use-trace-timestamps",
            "--mooncake-slowdown-factor", f"{1.0 / scale:.9g}", "--num-prompts", str(n), "--output-file",
            str(out_path), "--output-details", "--disable-tqdm", "--warmup-requests", "0", "--seed", str(seed)]


class _Watchdog(Background):
    """After `cap_s`, ask each server to abort everything, every 2 s, until stopped."""

    def __init__(self, servers: list[str], cap_s: float) -> None:
        super().__init__()
        self.servers, self.cap_s, self.fired = servers, cap_s, False

    def run(self, stop: threading.Event) -> None:
        if stop.wait(self.cap_s):
            return
        self.fired = True
        while not stop.is_set():
            for url in self.servers:
                with contextlib.suppress(requests.RequestException):
                    requests.post(url + "/abort_request", json={"abort_all": True, "rid": ""}, timeout=5)
            stop.wait(2.0)


def run_probe(base_url: str, model: str, trace: Trace, trace_path: Path, scale: float, *, work_dir: Path,
              ttft_slo_s: float, tpot_slo_s: float, cap_s: float, abort_urls: list[str] | None = None,
              seed: int = 0, log=None) -> Probe:
    """Replay `trace` (already written to `trace_path`) at `scale` through bench_serving; per-request records."""
    from sglang.benchmark import serving

    out_path = work_dir / f"probe-{time.time_ns()}.jsonl"
    argv = _bench_argv(base_url, model, trace_path, scale, len(trace), out_path, seed)
    captured = io.StringIO()
    started = time.time()
    t0 = time.monotonic()
    old_argv = sys.argv
    try:
        sys.argv = argv
        with _Watchdog(abort_urls or [base_url], cap_s) as dog, contextlib.redirect_stdout(captured):
            serving.cli_main()
    finally:
        sys.argv = old_argv
        if log is not None:
            log.write(captured.getvalue())
    wall = time.monotonic() - t0
    lines = out_path.read_bytes().splitlines() if out_path.exists() else []
    if not lines:
        raise RuntimeError(f"bench_serving wrote no result (its output ends with):\n{captured.getvalue()[-3000:]}")
    res = orjson.loads(lines[-1])
    out_path.unlink()
    return Probe(scale=scale, records=to_records(res, trace, scale, ttft_slo_s, tpot_slo_s), aborted=dog.fired,
                 wall_s=wall, input_lens=[int(x) for x in res.get("input_lens", [])],
                 bench={k: res.get(k) for k in BENCH_KEYS if k in res}, started_wall_s=started)


def to_records(res: dict, trace: Trace, scale: float, ttft_slo_s: float, tpot_slo_s: float) -> list[RequestTimes]:
    """bench_serving's per-request details (in trace order: its mooncake replay sorts by timestamp, as the trace
    is) -> RequestTimes on the scaled trace clock."""
    ttfts, itls, errors = res.get("ttfts", []), res.get("itls", []), res.get("errors", [])
    outs = res.get("output_lens", [])
    n = len(trace)
    if len(ttfts) != n:
        raise RuntimeError(f"bench_serving returned {len(ttfts)} requests for a trace of {n}")
    arrival = trace.arrival_s / scale
    recs = []
    for i in range(n):
        expected = int(trace.output_tokens[i])
        ok = not errors[i] and ttfts[i] and ttfts[i] > 0
        if not ok:
            recs.append(RequestTimes(f"r{i}", float(arrival[i]), None, None, 0, ttft_slo_s, tpot_slo_s, expected))
            continue
        first = float(arrival[i] + ttfts[i])
        gaps = np.asarray(itls[i] or [], dtype=np.float64)
        n_out = int(outs[i]) if i < len(outs) and outs[i] else len(gaps) + 1
        recs.append(RequestTimes(f"r{i}", float(arrival[i]), first, first + float(gaps.sum()), n_out, ttft_slo_s,
                                 tpot_slo_s, expected))
    return recs
