"""Overload and recovery in the simulator: the live soak's continuous schedule (`benchmark/soak.py --continuous`:
phases back to back, e.g. 0.9x capacity, 2x, 0.9x) replayed through each policy, with the figures per bucket of send
time and how P99 TTFT recovers after the overload (bench/phases.py).

    # issue 14's soak shape on the GPU's clock (5 minutes at 0.9x, 5 at 2x, 12 at 0.9x of 5.52 req/s)
    python benchmark/overload_recovery.py --capacity-rps 5.52 --minutes 5 5 12 --load 0.9 2 0.9
    # the twin of a live soak at dilation 6 (same arguments as soak.py's, on the server's clock)
    python benchmark/overload_recovery.py --dilation 6 --capacity-rps 0.92 --minutes 5 5 12 --load 0.9 2 0.9

The same request mix as the soak's (`--trace` lengths, seed i + 1 for phase i). By default the true iteration time is
the emulated device's model (`--device`, what `serve --emulate-device` pads to) and the policies plan with the A100
preset and an online fit (`--no-online-fit`: the preset alone), as the live server does; the waiting queue is shown
to the policy whole, as the live adapter's snapshot does (the simulator's default shows the oldest 512). Times are
the GPU's (the simulator's clock); with `--dilation k` the phases, the rate and the buckets given on the server's clock
(and --first-s) are divided (rate: multiplied) by k first.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from sglang_fair.bench import phases
from sglang_fair.core.presets import load_preset
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


def run_policy(spec: str, trace: Trace, plan, args) -> dict:
    engine = EngineConfig(ttft_slo_ms=args.ttft_slo_ms, tpot_slo_ms=args.tpot_slo_ms, online_fit=args.online_fit,
                          waiting_view_limit=WHOLE_QUEUE)
    dev = device_iteration_time(args.device) if args.device else None
    res = make_runner(trace, spec, load_preset(args.preset), engine, stop_late=False, iteration_time=dev)(1.0)
    recs = res.records
    bounds = phases.phase_starts(plan)
    per_phase = [{"load": ph.load, "duration_s": ph.duration_s,
                  **phases.figures([r for r in recs if bounds[i] <= r.arrival_s < bounds[i + 1]])}
                 for i, ph in enumerate(plan)]
    bucket = args.bucket_s / args.dilation
    return {"policy": spec, "requests": len(recs), "sim_s": round(res.sim_s, 1), "phases": per_phase,
            "series": phases.bucket_series(recs, bucket),
            "recovery": phases.recovery(recs, plan, bucket, first_s=args.first_s / args.dilation)}


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
    results = []
    for spec in [s.strip() for s in args.policies.split(",") if s.strip()]:
        try:
            r = run_policy(spec, trace, plan, args)
        except (ValueError, KeyError) as exc:
            ap.error(f"--policies {spec}: {exc}")
        print_result(r)
        results.append(r)
    if args.out:
        head = {k: v for k, v in vars(args).items() if k != "out"}
        Path(args.out).write_text(json.dumps({"args": head, "results": results}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
