"""Overload and recovery in the simulator: the live soak's continuous schedule (`benchmark/soak.py --continuous`:
phases back to back, e.g. 0.9x capacity, 2x, 0.9x) replayed through each policy, with the figures per bucket of send
time and how P99 TTFT recovers after the overload (bench/phases.py).

    # issue 14's soak shape on the GPU's clock (5 minutes at 0.9x, 5 at 2x, 12 at 0.9x of 5.52 req/s)
    python benchmark/overload_recovery.py --capacity-rps 5.52 --minutes 5 5 12 --load 0.9 2 0.9
    # the twin of a live soak at dilation 6 (same arguments as soak.py's, on the server's clock)
    python benchmark/overload_recovery.py --dilation 6 --capacity-rps 0.92 --minutes 5 5 12 --load 0.9 2 0.9
    # ... and its iterations beside the live run's, per bucket (the soak run with --fair-trace; one policy)
    python benchmark/overload_recovery.py --dilation 6 --capacity-rps 0.92 --minutes 5 5 12 --load 0.9 2 0.9 \
        --policies fair --compare-live out/soak.json out/trace-fair.jsonl

The same request mix as the soak's (`--trace` lengths, seed i + 1 for phase i). By default the true iteration time is
the emulated device's model (`--device`, what `serve --emulate-device` pads to) and the policies plan with the A100
preset and an online fit (`--no-online-fit`: the preset alone), as the live server does; the waiting queue is shown
to the policy whole, as the live adapter's snapshot does (the simulator's default shows the oldest 512). Times are
the GPU's (the simulator's clock); with `--dilation k` the phases, the rate and the buckets given on the server's clock
(and --first-s) are divided (rate: multiplied) by k first.

`--compare-live SOAK_JSON TRACE`: what the live run's iterations did per bucket (device busy, prompt tokens and decode
rows served, the plans' predicted time over the device's, queue lengths, demoted and aged lists; bench/iter_series.py)
beside the twin's, from the soak's results (`soak.py --continuous --out`, its `started_wall_s`) and its server's
`--fair-trace`; where they part is where the simulator misses something the live server does.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from sglang_fair.bench import iter_series, phases
from sglang_fair.bench.trace_report import read_trace
from sglang_fair.core.presets import load_preset
from sglang_fair.live.replay import START_LEAD_S
from sglang_fair.sim.cli import device_iteration_time, make_runner
from sglang_fair.sim.engine import EngineConfig
from sglang_fair.sim.traces import Trace, load_trace

WHOLE_QUEUE = 1_000_000
"""`waiting_view_limit` that shows every waiting request (the live snapshot's view)."""


def build_trace(args) -> tuple[Trace, list[phases.Phase]]:
    k = args.dilation
    plan = [phases.Phase(f, m * 60.0 / k) for f, m in zip(args.load, args.minutes)]
    arrivals = phases.phase_arrivals(plan, args.capacity_rps * k, seed=1)
    src = load_trace(args.trace, shared=args.shared)
    mix = [pl for i, arr in enumerate(arrivals)
           for pl in phases.request_mix(src, len(arr), i + 1, length_scale=args.length_scale,
                                        max_prompt_tokens=args.max_prompt, max_output_tokens=args.max_output)]
    a = np.concatenate(arrivals)
    p, o = (np.array(x, dtype=np.int64) for x in zip(*mix))
    return Trace(f"{args.trace}-phased", a, p, o), plan


def run_policy(spec: str, trace: Trace, plan, args, recorder: iter_series.TwinRecorder | None = None) -> dict:
    """One policy through the schedule; with `recorder`, its plans and iterations recorded (one replica)."""
    engine = EngineConfig(ttft_slo_ms=args.ttft_slo_ms, tpot_slo_ms=args.tpot_slo_ms, online_fit=args.online_fit,
                          waiting_view_limit=WHOLE_QUEUE)
    cost = load_preset(args.preset)
    dev = device_iteration_time(args.device) if args.device else None
    if recorder is not None:
        dev = recorder.iteration_time(dev or cost.predict)
    res = make_runner(trace, spec, cost, engine, stop_late=False, iteration_time=dev,
                      wrap_policy=recorder.policy if recorder is not None else None)(1.0)
    recs = res.records
    bounds = phases.phase_starts(plan)
    per_phase = [{"load": ph.load, "duration_s": ph.duration_s,
                  **phases.figures([r for r in recs if bounds[i] <= r.arrival_s < bounds[i + 1]])}
                 for i, ph in enumerate(plan)]
    bucket = args.bucket_s / args.dilation
    return {"policy": spec, "requests": len(recs), "sim_s": round(res.sim_s, 1), "phases": per_phase,
            "series": phases.bucket_series(recs, bucket),
            "recovery": phases.recovery(recs, plan, bucket, first_s=args.first_s / args.dilation)}


def load_live(soak_json: str, trace_path: str) -> dict:
    """The live soak's results and its trace's rows on the device's clock (bench/iter_series.py)."""
    soak = json.loads(Path(soak_json).read_text())
    soak = next((r for r in soak if r.get("continuous")), {}) if isinstance(soak, list) else soak
    if "started_wall_s" not in soak:
        raise ValueError(f"{soak_json} has no started_wall_s (a soak.py --continuous run of this version)")
    k = float(soak.get("dilation", 1.0))
    forwards, plans = iter_series.live_rows(read_trace(trace_path), soak["started_wall_s"] + START_LEAD_S, k)
    return {"dilation": k, "forwards": forwards, "plans": plans}


def compare(live: dict, recorder: iter_series.TwinRecorder, plan, args) -> dict:
    """Per bucket, the live run's iterations and the twin's; printed and returned."""
    if abs(live["dilation"] - args.dilation) > 1e-9:
        raise SystemExit(f"--compare-live: the soak ran at dilation {live['dilation']:g}, --dilation is "
                         f"{args.dilation:g}")
    bucket, end = args.bucket_s / args.dilation, float(phases.phase_starts(plan)[-1])
    sides = {"live": iter_series.bucket_rows(live["forwards"], live["plans"], bucket, end),
             "sim": iter_series.bucket_rows(recorder.forwards, recorder.plans, bucket, end)}
    cols = ("busy", "prefill_tokens_per_s", "decode_rows_per_s", "tokens_per_busy_s", "predicted_over_device",
            "running", "waiting", "demoted_max", "aged_max")
    print("\n  iterations per bucket, live / twin (device clock):")
    print("  start_s " + " ".join(f"{c:>27}" for c in cols))
    for a, b in zip(sides["live"], sides["sim"]):
        print(f"  {a['start_s']:>7} " + " ".join(f"{_fmt(a[c]):>13}/{_fmt(b[c]):<13}" for c in cols))
    return sides


def _fmt(x) -> str:
    return "-" if x is None else f"{x:g}" if isinstance(x, int) else f"{x:.4g}"


def print_result(r: dict) -> None:
    rec = r["recovery"]
    print(f"\n{r['policy']}: {r['requests']} requests, done at {r['sim_s']} s; P99 TTFT before the overload "
          f"{rec['reference_ttft_p99_s']} s, recovered (within {rec['tolerance']:.0%}) "
          f"{rec['recovered_after_s']} s after it; attainment in the first {rec['first_s']:g} s after it "
          f"{rec['attainment_first']}")
    for i, ph in enumerate(r["phases"]):
        print(f"  phase {i} ({ph['load']:g}x, {ph['duration_s']:g} s): {ph['requests']} requests, attainment "
              f"{ph['attainment']}, P99 TTFT {ph['ttft_p99_s']} s, P99 TPOT {_ms(ph['tpot_p99_s'])} ms, "
              f"demoted {ph['demoted']}, refused {ph['rejected']}")
    print("  start_s  requests  ttft_p50_s  ttft_p99_s  tpot_p99_ms  attainment  demoted")
    for b in r["series"]:
        print(f"  {b['start_s']:>7}  {b['requests']:>8}  {b['ttft_p50_s']!s:>10}  {b['ttft_p99_s']!s:>10}  "
              f"{_ms(b['tpot_p99_s'])!s:>11}  {b['attainment']!s:>10}  {b['demoted']:>7}")


def _ms(s: float | None) -> int | None:
    return None if s is None else round(1e3 * s)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--policies", default="fair,fair+reject,sglang-default,sglang-mixed-2048",
                    help="policy specs as `sglang-fair sim` takes them; `+reject` refuses hopeless arrivals (HTTP 429 "
                         "live, --fair-admission reject), each an SLO miss")
    ap.add_argument("--capacity-rps", type=float, required=True, help="the load 1.0 stands for (server clock)")
    ap.add_argument("--minutes", type=float, nargs="+", default=[5.0, 5.0, 12.0], help="minutes per phase")
    ap.add_argument("--load", type=float, nargs="+", default=[0.9, 2.0, 0.9], help="fraction of capacity per phase")
    ap.add_argument("--dilation", type=float, default=1.0,
                    help="the live soak's dilation k: phases, rate and buckets are given on its (server's) clock")
    ap.add_argument("--bucket-s", type=float, default=60.0, help="figures per this many seconds of send time")
    ap.add_argument("--first-s", type=float, default=120.0,
                    help="also report the requests sent this long after the overload")
    ap.add_argument("--trace", default="azure-conv")
    ap.add_argument("--shared", default=None, help="data folder replacing the shipped traces")
    ap.add_argument("--length-scale", type=float, default=1.0)
    ap.add_argument("--max-prompt", type=int, default=8000)
    ap.add_argument("--max-output", type=int, default=2048)
    ap.add_argument("--ttft-slo-ms", type=float, default=2000.0, help="on the GPU's clock")
    ap.add_argument("--tpot-slo-ms", type=float, default=100.0, help="on the GPU's clock")
    ap.add_argument("--preset", default="a100-llama3-8b", help="the policies' cost model (prior of the online fit)")
    ap.add_argument("--device", default="a100-llama3-8b",
                    help="the true iteration time: this emulated device's model ('' = the preset itself)")
    ap.add_argument("--no-online-fit", dest="online_fit", action="store_false")
    ap.add_argument("--compare-live", nargs=2, metavar=("SOAK_JSON", "TRACE"), default=None,
                    help="the live soak's results (soak.py --continuous --out) and its server's --fair-trace: print "
                         "the iterations per bucket beside the twin's (one policy in --policies)")
    ap.add_argument("--out", default=None, help="write the results as JSON here")
    args = ap.parse_args(argv)
    if len(args.minutes) != len(args.load) or len(args.load) < 3:
        ap.error("--minutes and --load need the same number of values, at least 3 (before, overload, after)")
    for flag in ("capacity_rps", "dilation", "bucket_s", "first_s", "length_scale"):
        if not getattr(args, flag) > 0:
            ap.error(f"--{flag.replace('_', '-')} must be > 0")
    try:
        trace, plan = build_trace(args)
    except (OSError, ValueError) as exc:
        ap.error(f"--trace {args.trace}: {exc}")
    specs = [s.strip() for s in args.policies.split(",") if s.strip()]
    live = None
    if args.compare_live:
        if len(specs) != 1:
            ap.error("--compare-live compares one policy: give one spec in --policies")
        try:
            live = load_live(*args.compare_live)
        except (OSError, ValueError, KeyError) as exc:
            ap.error(f"--compare-live: {exc}")
    results = []
    for spec in specs:
        recorder = iter_series.TwinRecorder() if live else None
        try:
            r = run_policy(spec, trace, plan, args, recorder)
        except (ValueError, KeyError) as exc:
            ap.error(f"--policies {spec}: {exc}")
        print_result(r)
        if live:
            r["iterations"] = compare(live, recorder, plan, args)
        results.append(r)
    if args.out:
        head = {k: v for k, v in vars(args).items() if k != "out"}
        Path(args.out).write_text(json.dumps({"args": head, "results": results}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
