"""Soak: trace-shaped traffic against a live fair-policy server at ~80 % and then ~150 % of its measured capacity,
printing the reliability figures (sent / completed / errored / lost, memory, latency, KV and policy state after
each phase). The CI-sized version of each scenario is test/reliability/; this is the long one. Per phase also the
P99 TTFT of each minute (by send time) and the server's mean RSS over its first and last `RSS_WINDOW_S`; with
`--emulate` the server runs on the emulated device (serve --emulate-device, micro model, SLOs x the dilation) and
its times are emulated, on the dilated clock.

    python benchmark/soak.py                          # 5 min at 80 % + 5 min at 150 %, embedded model, CPU
    python benchmark/soak.py --minutes 1 1            # a short run
    python benchmark/soak.py --url http://127.0.0.1:30000 --api-key KEY   # an already running server
    # on the EMULATED A100 x 6 at real lengths: 0.9x, 2x, 0.9x of fair's emulated capacity (0.92 req/s on the clock)
    python benchmark/soak.py --emulate a100-llama3-8b:6 --capacity-rps 0.92 --minutes 10 3 6 --load 0.9 2 0.9 \
        --length-scale 1 --max-prompt 8000 --max-output 2048

Request lengths come from a trace in the shared folder (default azure-conv; prompt lengths scaled by
--length-scale, clipped to --max-prompt / --max-output), arrivals are Poisson at the phase's rate. Capacity is
measured first with a closed burst of the same mix (or given with --capacity-rps). "lost" = no clear answer
(client timeout, dropped stream without an error, fewer tokens than asked); it must be 0.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

from sglang_fair.live.monitor import RssSampler, group_rss_bytes, wait_idle
from sglang_fair.live.replay import ReplayRequest, replay
from sglang_fair.live.server import (SERVE_COMMAND, cpu_server_args, embedded_model_path, exit_on_sigterm,
                                     sglang_server)


def request_mix(args, n: int, seed: int) -> list[tuple[int, int]]:
    """(prompt, output) lengths drawn from the trace (or a fixed 500/16 shape without one)."""
    rng = np.random.default_rng(seed)
    try:
        from sglang_fair.sim.traces import load_trace
        tr = load_trace(args.trace, shared=args.shared)
        idx = rng.integers(0, len(tr.prompt_tokens), size=n)
        p = np.clip(np.round(tr.prompt_tokens[idx] * args.length_scale), 16, args.max_prompt).astype(int)
        o = np.clip(tr.output_tokens[idx], 1, args.max_output).astype(int)
        return list(zip(p.tolist(), o.tolist()))
    except (OSError, ValueError, KeyError) as exc:
        print(f"soak: no trace ({exc}); using 500-token prompts, 16 outputs", file=sys.stderr)
        return [(500, 16)] * n


def classify(records) -> dict:
    t = {"sent": len(records), "completed": 0, "errored": 0, "lost": 0, "reasons": {}}
    for rec in records:
        if rec.error is None and len(rec.token_times_s) == rec.request.output_tokens:
            t["completed"] += 1
            continue
        clear = rec.error is not None and not rec.error.split(":")[0].endswith(("Timeout", "Error", "Exception"))
        key = "errored" if clear else "lost"
        t[key] += 1
        reason = (rec.error or f"{len(rec.token_times_s)} of {rec.request.output_tokens} tokens")[:60]
        t["reasons"][reason] = t["reasons"].get(reason, 0) + 1
    return t


RSS_WINDOW_S = 300.0


def answered(records) -> list:
    """The records that got tokens and no error (the ones with a TTFT)."""
    return [r for r in records if r.error is None and r.token_times_s]


def ttft_by_minute(records) -> list[float | None]:
    """P99 TTFT (s) of the requests sent in each minute of the phase (None for a minute with no answer)."""
    ok = answered(records)
    if not ok:
        return []
    n = int(max(r.sent_s for r in ok) // 60) + 1
    out = []
    for m in range(n):
        x = [r.token_times_s[0] - r.sent_s for r in ok if m * 60 <= r.sent_s < (m + 1) * 60]
        out.append(round(float(np.percentile(x, 99)), 3) if x else None)
    return out


def rss_windows(samples: list[int], period_s: float) -> dict:
    """Mean RSS (MB) over the first and the last RSS_WINDOW_S of a phase's samples (taken every period_s)."""
    k = max(1, int(RSS_WINDOW_S / period_s))
    if not samples:
        return {}
    return {"rss_first_window_mb": round(float(np.mean(samples[:k])) / 2**20, 1),
            "rss_last_window_mb": round(float(np.mean(samples[-k:])) / 2**20, 1)}


def latency(records) -> dict:
    ok = answered(records)
    ttft = np.array([r.token_times_s[0] - r.sent_s for r in ok])
    tpot = np.array([(r.token_times_s[-1] - r.token_times_s[0]) / (len(r.token_times_s) - 1)
                     for r in ok if len(r.token_times_s) > 1])
    q = lambda a, p: round(float(np.percentile(a, p)), 3) if len(a) else None  # noqa: E731
    return {"ttft_p50_s": q(ttft, 50), "ttft_p99_s": q(ttft, 99), "tpot_p50_s": q(tpot, 50), "tpot_p99_s": q(tpot, 99)}


def measure_capacity(url: str, args) -> float:
    mix = request_mix(args, 16, seed=99)
    reqs = [ReplayRequest(arrival_s=0.0, prompt_tokens=p, output_tokens=o) for p, o in mix]
    t0 = time.monotonic()
    recs = replay(url, reqs, api_key=args.api_key, timeout_s=args.timeout_s, seed=99)
    wall = time.monotonic() - t0
    bad = [r.error for r in recs if not r.ok]
    if bad:
        raise RuntimeError(f"capacity burst failed: {bad[:3]}")
    return len(reqs) / wall


def run_phase(url: str, args, name: str, rate: float, minutes: float, pgid: int | None, seed: int) -> dict:
    dur = minutes * 60.0
    rng = np.random.default_rng(seed)
    arrivals = np.cumsum(rng.exponential(1.0 / rate, size=int(rate * dur * 1.5) + 10))
    arrivals = arrivals[arrivals < dur]
    mix = request_mix(args, len(arrivals), seed)
    reqs = [ReplayRequest(arrival_s=float(a), prompt_tokens=p, output_tokens=o) for a, (p, o) in zip(arrivals, mix)]
    sampler = RssSampler(pgid, 2.0) if pgid else None
    rss0 = group_rss_bytes(pgid) if pgid else 0
    t0 = time.monotonic()
    if sampler:
        sampler.__enter__()
    try:
        recs = replay(url, reqs, api_key=args.api_key, timeout_s=args.timeout_s, seed=seed, max_workers=1024,
                      progress=True)
    finally:
        if sampler:
            sampler.__exit__(None, None, None)
    wall = time.monotonic() - t0
    idle = wait_idle(url, args.api_key, timeout_s=120)
    out = {"phase": name, "rate_rps": round(rate, 3), "minutes": minutes, "wall_s": round(wall, 1),
           **classify(recs), **latency(recs), "ttft_p99_by_minute_s": ttft_by_minute(recs),
           "kv_used_after": idle.get("kv_used_tokens"), "running_after": idle.get("num_running_reqs"),
           "deferred_after": idle.get("deferred_now"), "faults": idle.get("faults")}
    if pgid:
        out.update(rss_start_mb=rss0 >> 20, rss_peak_mb=sampler.peak >> 20,
                   rss_end_mb=group_rss_bytes(pgid) >> 20, **rss_windows(sampler.samples, 2.0))
    return out


def soak(url: str, args, pgid: int | None) -> list[dict]:
    cap = args.capacity_rps or measure_capacity(url, args)
    print(f"soak: capacity {cap:.2f} req/s", file=sys.stderr, flush=True)
    results = []
    for i, (frac, minutes) in enumerate(zip(args.load, args.minutes)):
        res = run_phase(url, args, f"{frac:.0%}", frac * cap, minutes, pgid, seed=i + 1)
        res["capacity_rps"] = round(cap, 3)
        print("SOAK " + json.dumps(res, sort_keys=True), flush=True)
        results.append(res)
    return results


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--url", help="use this running server instead of starting one")
    ap.add_argument("--api-key", default=None)
    ap.add_argument("--policy", default="fair")
    ap.add_argument("--minutes", type=float, nargs="+", default=[5.0, 5.0], help="minutes per phase")
    ap.add_argument("--load", type=float, nargs="+", default=[0.8, 1.5], help="fraction of capacity per phase")
    ap.add_argument("--capacity-rps", type=float, default=None, help="skip the capacity burst")
    ap.add_argument("--trace", default="azure-conv")
    ap.add_argument("--shared", default=None,
                    help="data folder replacing the shipped traces (default: $SGLANG_FAIR_SHARED, else the package's)")
    ap.add_argument("--length-scale", type=float, default=0.5)
    ap.add_argument("--max-prompt", type=int, default=1500)
    ap.add_argument("--max-output", type=int, default=64)
    ap.add_argument("--timeout-s", type=float, default=600.0, help="client timeout per request (beyond = lost)")
    ap.add_argument("--out", default=None, help="write the phase results as JSON here")
    ap.add_argument("--emulate", metavar="PRESET[:DILATION]", default=None,
                    help="run the server on the emulated device (serve --emulate-device; SLOs 2 s / 100 ms x the "
                         "dilation); figures are emulated")
    args = ap.parse_args(argv)
    if len(args.minutes) != len(args.load):
        ap.error("--minutes and --load need the same number of values")
    exit_on_sigterm()
    if args.url:
        results = soak(args.url.rstrip("/"), args, None)
    else:
        srv_args = ["--fair-policy", args.policy, "--enable-metrics", *cpu_server_args(32768)]
        model = embedded_model_path()
        if args.emulate:
            from sglang_fair.bench.emulated import EMULATED_TPOT_SLO_MS, EMULATED_TTFT_SLO_MS
            from sglang_fair.emulate.serve_args import split_emulate_args
            try:
                _, emu = split_emulate_args(["--emulate-device", args.emulate])
            except ValueError as exc:
                ap.error(str(exc))
            micro = emu.sglang_args([])
            model = micro[micro.index("--model-path") + 1]
            k = emu.spec.dilation
            srv_args = ["--fair-policy", args.policy, "--emulate-device", args.emulate, "--enable-metrics",
                        "--ttft-slo-ms", f"{EMULATED_TTFT_SLO_MS * k:g}", "--tpot-slo-ms", f"{EMULATED_TPOT_SLO_MS * k:g}",
                        *cpu_server_args(None)]  # serve sizes the KV pool like the emulated GPU's
        if args.api_key:
            srv_args += ["--api-key", args.api_key]
        with sglang_server(model, srv_args, command=SERVE_COMMAND, startup_timeout_s=900) as srv:
            results = soak(srv.url, args, srv.proc.pid)
            if srv.proc.poll() is not None:
                print("soak: the server died", file=sys.stderr)
                return 1
    if args.out:
        Path(args.out).write_text(json.dumps(results, indent=2))
    return 0 if all(r["lost"] == 0 for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
