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
    # the same phases back to back (the last arrives on the overload's backlog): how the tail recovers
    python benchmark/soak.py --emulate a100-llama3-8b:6 --capacity-rps 0.92 --continuous --minutes 5 5 12 \
        --load 0.9 2 0.9 --length-scale 1 --max-prompt 8000 --max-output 2048

Request lengths come from a trace the package ships (default azure-conv; prompt lengths scaled by
--length-scale, clipped to --max-prompt / --max-output), arrivals are Poisson at the phase's rate. Capacity is
measured first with a closed burst of the same mix (or given with --capacity-rps). "lost" = no clear answer
(client timeout, dropped stream without an error, fewer tokens than asked); it must be 0.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import sys
import time
from pathlib import Path

import numpy as np
import requests

from sglang_fair.bench import phases
from sglang_fair.bench.demotions import mark_demoted
from sglang_fair.core.metrics import RequestTimes, tpot_s, ttft_s
from sglang_fair.live.monitor import RssSampler, auth, group_rss_bytes, wait_idle
from sglang_fair.live.replay import ReplayRequest, replay, request_times
from sglang_fair.live.server import (SERVE_COMMAND, cpu_server_args, embedded_model_path, exit_on_sigterm,
                                     sglang_server)


def request_mix(args, n: int, seed: int) -> list[tuple[int, int]]:
    """(prompt, output) lengths drawn from the trace (or a fixed 500/16 shape without one)."""
    try:
        from sglang_fair.sim.traces import load_trace
        tr = load_trace(args.trace, shared=args.shared)
    except (OSError, ValueError, KeyError) as exc:
        print(f"soak: no trace ({exc}); using 500-token prompts, 16 outputs", file=sys.stderr)
        return [(500, 16)] * n
    return phases.request_mix(tr, n, seed, length_scale=args.length_scale, max_prompt_tokens=args.max_prompt,
                              max_output_tokens=args.max_output)


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
    ph = phases.Phase(1.0, minutes * 60.0)
    arrivals = phases.phase_arrivals([ph], rate, seed=seed)[0]
    mix = request_mix(args, len(arrivals), seed)
    reqs = [ReplayRequest(arrival_s=float(a), prompt_tokens=p, output_tokens=o) for a, (p, o) in zip(arrivals, mix)]
    recs, wall, rss = _replay_sampled(url, args, reqs, pgid, seed)
    idle = wait_idle(url, args.api_key, timeout_s=120)
    out = {"phase": name, "rate_rps": round(rate, 3), "minutes": minutes, "wall_s": round(wall, 1),
           **classify(recs), **latency(recs), "ttft_p99_by_minute_s": ttft_by_minute(recs), **_idle_state(idle)}
    if pgid:
        out.update(rss_start_mb=rss["start"] >> 20, rss_peak_mb=max(rss["samples"], default=0) >> 20,
                   rss_end_mb=group_rss_bytes(pgid) >> 20, **rss_windows(rss["samples"], RSS_PERIOD_S))
    return out


RSS_PERIOD_S = 2.0


def _replay_sampled(url: str, args, reqs, pgid: int | None, seed: int, max_workers: int = 1024):
    """Replay `reqs` while sampling the server's RSS: (records, wall s, {"start": bytes, "samples": [bytes]})."""
    sampler = RssSampler(pgid, RSS_PERIOD_S) if pgid else None
    rss0 = group_rss_bytes(pgid) if pgid else 0
    t0 = time.monotonic()
    if sampler:
        sampler.__enter__()
    try:
        recs = replay(url, reqs, api_key=args.api_key, timeout_s=args.timeout_s, seed=seed, max_workers=max_workers,
                      progress=True)
    finally:
        if sampler:
            sampler.__exit__(None, None, None)
    return recs, time.monotonic() - t0, {"start": rss0, "samples": sampler.samples if sampler else []}


def _idle_state(idle: dict) -> dict:
    return {"kv_used_after": idle.get("kv_used_tokens"), "running_after": idle.get("num_running_reqs"),
            "deferred_after": idle.get("deferred_now"), "faults": idle.get("faults")}


def on_device_clock(t: RequestTimes, k: float) -> RequestTimes:
    """A request's times and SLOs on the emulated device's clock (server clock / k)."""
    d = lambda x: None if x is None else x / k  # noqa: E731
    return dataclasses.replace(t, arrival_s=t.arrival_s / k, first_token_s=d(t.first_token_s),
                               last_token_s=d(t.last_token_s), ttft_slo_s=t.ttft_slo_s / k,
                               tpot_slo_s=t.tpot_slo_s / k, token_times_s=None)


def run_continuous(url: str, args, cap: float, pgid: int | None, k: float) -> dict:
    """All phases as one schedule, no pause between them (the last phase arrives on the overload's backlog); phase
    figures by send time, and how P99 TTFT recovers after the overload (bench/phases.py), on the device's clock."""
    plan = [phases.Phase(f, m * 60.0) for f, m in zip(args.load, args.minutes)]
    arrivals = phases.phase_arrivals(plan, cap, seed=1)
    reqs = [ReplayRequest(arrival_s=float(a), prompt_tokens=p, output_tokens=o)
            for i, arr in enumerate(arrivals) for a, (p, o) in zip(arr, request_mix(args, len(arr), seed=i + 1))]
    started_wall_s = time.time()
    recs, wall, rss = _replay_sampled(url, args, reqs, pgid, seed=1, max_workers=4096)
    try:  # a status the server cannot give must not cost the run's records
        idle = wait_idle(url, args.api_key, timeout_s=120)
    except (requests.RequestException, ValueError, KeyError, RuntimeError) as exc:
        print(f"soak: reading the server's state failed: {exc}", file=sys.stderr)
        idle = {"error": f"{type(exc).__name__}: {exc}"}
    # the server's demotions, matched to requests by prompt length and arrival (as the bench does)
    m = mark_demoted(request_times(recs, args.ttft_slo_ms * k, args.tpot_slo_ms * k),
                     [r.request.prompt_tokens for r in recs], started_wall_s, list(idle.get("demoted_recent") or []))
    times = [on_device_clock(t, k) for t in m.records]
    bounds = phases.phase_starts(plan)
    per_phase = []
    for i, ph in enumerate(plan):
        sel = [j for j, r in enumerate(recs) if bounds[i] <= r.request.arrival_s < bounds[i + 1]]
        per_phase.append({"phase": f"{ph.load:.0%}", "rate_rps": round(ph.load * cap, 3), "minutes": ph.duration_s / 60,
                          **classify([recs[j] for j in sel]), **phases.figures([times[j] for j in sel])})
    dev = [phases.Phase(ph.load, ph.duration_s / k) for ph in plan]
    out = {"continuous": True, "capacity_rps": round(cap, 3), "dilation": k, "wall_s": round(wall, 1),
           "started_wall_s": round(started_wall_s, 3),  # replay's call (+ START_LEAD_S): to place a --fair-trace on
           "ttft_slo_ms": args.ttft_slo_ms, "tpot_slo_ms": args.tpot_slo_ms, "phases": per_phase,
           **classify(recs), "demotions_total": idle.get("demotions_total"), "demoted_matched": m.demoted,
           "demoted_unmatched": m.unmatched, "emulated_device": emulated_state(url, args.api_key),
           "series": phases.bucket_series(times, args.bucket_s / k),
           "recovery": phases.recovery(times, dev, args.bucket_s / k, first_s=args.first_s / k), **_idle_state(idle),
           "requests": {"fields": ["sent_s", "ttft_s", "tpot_s", "prompt_tokens", "output_tokens", "demoted",
                                   "rejected"],
                        "rows": [[round(t.arrival_s, 4), _finite(ttft_s(t)), _finite(tpot_s(t)),
                                  r.request.prompt_tokens, r.request.output_tokens, t.demoted, t.rejected]
                                 for t, r in zip(times, recs)]}}
    if pgid:
        out["rss_mb_by_phase"] = _rss_by_phase(rss["samples"], bounds)
    return out


def _finite(x: float) -> float | None:
    return round(x, 4) if math.isfinite(x) else None


def emulated_state(url: str, api_key: str | None) -> dict | None:
    """The emulated device's counters (overruns among them) from `/server_info`, beside the plugin's status; None
    without an emulated device or when they cannot be read."""
    try:
        st = requests.get(url + "/server_info", timeout=30, headers=auth(api_key)).json()["internal_states"][0]
    except (requests.RequestException, ValueError, KeyError, IndexError):
        return None
    emu = st.get("emulated_device")
    return {k: v for k, v in emu.items() if k != "recent"} if isinstance(emu, dict) else None


def _rss_by_phase(samples: list[int], bounds) -> list[dict]:
    """Mean RSS (MB) over each phase's first and last RSS_WINDOW_S (samples every RSS_PERIOD_S from the start)."""
    t = np.arange(len(samples)) * RSS_PERIOD_S
    out = []
    for a, b in zip(bounds[:-1], bounds[1:]):
        sel = [s for s, ts in zip(samples, t) if a <= ts < b]
        out.append(rss_windows(sel, RSS_PERIOD_S))
    return out


def soak(url: str, args, pgid: int | None, k: float = 1.0) -> list[dict]:
    cap = args.capacity_rps or measure_capacity(url, args)
    print(f"soak: capacity {cap:.2f} req/s", file=sys.stderr, flush=True)
    if args.continuous:
        res = run_continuous(url, args, cap, pgid, k)
        print("SOAK " + json.dumps(res, sort_keys=True), flush=True)
        print_recovery(res)
        return [res]
    results = []
    for i, (frac, minutes) in enumerate(zip(args.load, args.minutes)):
        res = run_phase(url, args, f"{frac:.0%}", frac * cap, minutes, pgid, seed=i + 1)
        res["capacity_rps"] = round(cap, 3)
        print("SOAK " + json.dumps(res, sort_keys=True), flush=True)
        results.append(res)
    return results


def print_recovery(res: dict) -> None:
    """The continuous run's series and recovery, as a table on stderr (times on the device's clock)."""
    rec = res["recovery"]
    print(f"recovery: P99 TTFT before the overload {rec['reference_ttft_p99_s']} s (bound "
          f"{rec['bound_ttft_p99_s']} s); recovered {rec['recovered_after_s']} s after it; attainment in the first "
          f"{rec['first_s']:g} s after it: {rec['attainment_first']}", file=sys.stderr)
    print("start_s requests ttft_p50_s ttft_p99_s tpot_p99_s attainment", file=sys.stderr)
    for b in res["series"]:
        print(b["start_s"], b["requests"], b["ttft_p50_s"], b["ttft_p99_s"], b["tpot_p99_s"], b["attainment"],
              file=sys.stderr)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--url", help="use this running server instead of starting one")
    ap.add_argument("--api-key", default=None)
    ap.add_argument("--policy", default="fair", help="the server's --fair-policy (off: stock SGLang)")
    ap.add_argument("--fair-trace", default=None, metavar="PATH",
                    help="the server writes its iteration trace here (serve --fair-trace: plans, forwards, the "
                         "emulated device's batches; `sglang-fair trace-report PATH` summarises it)")
    ap.add_argument("--fair-admission", default=None, choices=("off", "reject", "shed"),
                    help="the server's --fair-admission (reject: HTTP 429 at arrival for a request that cannot meet "
                         "its TTFT SLO; shed: also for a queued request once fair demotes it; counted as errored, "
                         "not lost, and in the figures as an SLO miss)")
    ap.add_argument("--fair-param", action="append", default=[], metavar="KEY=VALUE",
                    help="the server's --fair-param (repeatable), e.g. demoted_slot=before_aged")
    ap.add_argument("--minutes", type=float, nargs="+", default=[5.0, 5.0], help="minutes per phase")
    ap.add_argument("--load", type=float, nargs="+", default=[0.8, 1.5], help="fraction of capacity per phase")
    ap.add_argument("--capacity-rps", type=float, default=None, help="skip the capacity burst")
    ap.add_argument("--trace", default="azure-conv")
    ap.add_argument("--shared", default=None,
                    help="data folder replacing the shipped traces (default: $SGLANG_FAIR_SHARED, else the package's)")
    ap.add_argument("--length-scale", type=float, default=0.5)
    ap.add_argument("--max-prompt", type=int, default=1500)
    ap.add_argument("--max-output", type=int, default=64)
    ap.add_argument("--timeout-s", type=float, default=None,
                    help="client timeout per request (beyond = lost); default 600 s, 3600 s with --continuous")
    ap.add_argument("--continuous", action="store_true",
                    help="run the phases back to back as one schedule (the overload's backlog meets the next phase's "
                         "arrivals) and report how P99 TTFT recovers after the highest-load phase (needs 3 phases)")
    ap.add_argument("--bucket-s", type=float, default=60.0,
                    help="--continuous: the figures per this many seconds of send time (on the server's clock)")
    ap.add_argument("--first-s", type=float, default=120.0,
                    help="--continuous: also report the requests sent this long after the overload (server's clock)")
    ap.add_argument("--ttft-slo-ms", type=float, default=None,
                    help="SLO the server runs with and the attainment counts (with --emulate in the device's time; "
                         "default: 2000 with --emulate, else serve's default)")
    ap.add_argument("--tpot-slo-ms", type=float, default=None, help="as --ttft-slo-ms (default 100 with --emulate)")
    ap.add_argument("--out", default=None, help="write the phase results as JSON here")
    ap.add_argument("--emulate", metavar="PRESET[:DILATION]", default=None,
                    help="run the server on the emulated device (serve --emulate-device; SLOs 2 s / 100 ms x the "
                         "dilation); figures are emulated")
    args = ap.parse_args(argv)
    if len(args.minutes) != len(args.load):
        ap.error("--minutes and --load need the same number of values")
    if args.continuous and len(args.load) < 3:
        ap.error("--continuous needs at least 3 phases in --minutes / --load (before, overload, after)")
    if not (args.bucket_s > 0 and args.first_s > 0):
        ap.error("--bucket-s and --first-s must be > 0")
    if args.url and (args.fair_trace or args.fair_param):
        ap.error("--fair-trace and --fair-param are the started server's flags: give them to the server at --url")
    if args.timeout_s is None:
        args.timeout_s = 3600.0 if args.continuous else 600.0
    from sglang_fair.bench.emulated import EMULATED_TPOT_SLO_MS, EMULATED_TTFT_SLO_MS
    from sglang_fair.config.slo import SloConfig
    if args.ttft_slo_ms is None:
        args.ttft_slo_ms = EMULATED_TTFT_SLO_MS if args.emulate else SloConfig().ttft_slo_ms
    if args.tpot_slo_ms is None:
        args.tpot_slo_ms = EMULATED_TPOT_SLO_MS if args.emulate else SloConfig().tpot_slo_ms
    exit_on_sigterm()
    k = 1.0
    if args.url:
        results = soak(args.url.rstrip("/"), args, None)
    else:
        slo = ["--ttft-slo-ms", f"{args.ttft_slo_ms:g}", "--tpot-slo-ms", f"{args.tpot_slo_ms:g}"]
        srv_args = ["--fair-policy", args.policy, "--enable-metrics", *slo, *cpu_server_args(32768)]
        model = embedded_model_path()
        if args.emulate:
            from sglang_fair.emulate.serve_args import split_emulate_args
            try:
                _, emu = split_emulate_args(["--emulate-device", args.emulate])
            except ValueError as exc:
                ap.error(str(exc))
            micro = emu.sglang_args([])
            model = micro[micro.index("--model-path") + 1]
            k = emu.spec.dilation
            srv_args = ["--fair-policy", args.policy, "--emulate-device", args.emulate, "--enable-metrics",
                        "--ttft-slo-ms", f"{args.ttft_slo_ms * k:g}", "--tpot-slo-ms", f"{args.tpot_slo_ms * k:g}",
                        *cpu_server_args(None)]  # serve sizes the KV pool like the emulated GPU's
        if args.api_key:
            srv_args += ["--api-key", args.api_key]
        if args.fair_admission:
            srv_args += ["--fair-admission", args.fair_admission]
        if args.fair_trace:
            srv_args += ["--fair-trace", str(Path(args.fair_trace).resolve())]
        for kv in args.fair_param:
            srv_args += ["--fair-param", kv]
        with sglang_server(model, srv_args, command=SERVE_COMMAND, startup_timeout_s=900) as srv:
            results = soak(srv.url, args, srv.proc.pid, k)
            if srv.proc.poll() is not None:
                print("soak: the server died", file=sys.stderr)
                return 1
    if args.out:
        Path(args.out).write_text(json.dumps(results, indent=2))
    return 0 if all(r["lost"] == 0 for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
