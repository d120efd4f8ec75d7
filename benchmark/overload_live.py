"""Live overload on the emulated device: `fair` with admission off (the default until the ninth session) against
fair's default since then (`admission=demote-longest, demote_max_wait_ttft=5`), one probe each at a rate scale past
capacity on the emulated quick window (Azure conv, 150 requests from request 1000, real lengths). Per configuration:
requests sent and answered, the share of first tokens within the TTFT SLO, P50 / P99 / max TTFT and P99 TPOT
(emulated GPU ms), attainment (both SLOs), and the server's planned / stock iterations, demotions and faults.
Figures are EMULATED.

    .venv/bin/python benchmark/overload_live.py --emulate a100-llama3-8b:6 --scale 2 --out out/overload

`--trace` runs each server with `--fair-trace` and adds the trace's summary (`sglang-fair trace-report`); `--only`
runs the named configurations (comma-separated; default: admission-off,default). `recover-off` is the default with
`recover_tpot=false` (the budget before the twelfth session: a decode behind its envelope stays behind); `gap-old` the
default with `gap_caps_budget=false` (the token-gap guard before the thirteenth session: a gap could pass
`max_token_gap_tpot` x TPOT by one whole budget); `aged-first` the default with `aged_share=1` (before the seventeenth
session: a request aged past `demote_max_wait_ttft` went first with the whole iteration).

One server at a time (the machine's rule: each config's server is stopped before the next starts).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import numpy as np

from sglang_fair.bench.runner import SERVE, Bench, _status, emulated_config
from sglang_fair.bench import trace_report
from sglang_fair.core.metrics import meets_slo, summarize, tpot_s, ttft_s
from sglang_fair.data.model import make_model
from sglang_fair.emulate.serve_args import MICRO_SPEC
from sglang_fair.live.server import exit_on_sigterm, sglang_server

CONFIGS = {
    "admission-off": ("fair, admission off", ["--fair-param", "admission=off"]),
    "default": ("fair (default: demote-longest k=5, aged lane 0.1, recover_tpot)", []),
    "aged-first": ("fair, aged first (aged_share=1)", ["--fair-param", "aged_share=1"]),
    "recover-off": ("fair, recover_tpot off", ["--fair-param", "recover_tpot=false"]),
    "gap-old": ("fair, gap_caps_budget off", ["--fair-param", "gap_caps_budget=false"]),
}
"""--only's name -> (label, serve flags) of each configuration."""


def probe_figures(probe, dilation: float) -> dict:
    recs = probe.records
    ms = 1e3 / dilation  # dilated seconds -> emulated GPU milliseconds
    done = [r for r in recs if r.finished]
    ttfts = np.array([ttft_s(r) for r in done]) if done else np.array([math.nan])
    s = summarize(recs)
    return {"sent": len(recs), "answered": len(done), "aborted_probe": probe.aborted,
            "first_token_on_time": sum(ttft_s(r) <= r.ttft_slo_s for r in done) / max(1, len(recs)),
            "attainment": sum(meets_slo(r) for r in recs) / max(1, len(recs)),
            "p50_ttft_ms": float(np.percentile(ttfts, 50)) * ms, "p99_ttft_ms": float(np.percentile(ttfts, 99)) * ms,
            "max_ttft_ms": float(ttfts.max()) * ms, "p99_tpot_ms": s.p99_tpot_s * ms,
            "max_tpot_ms": max((tpot_s(r) for r in done), default=math.nan) * ms,
            "tpot_over_slo": sum(r.n_outputs > 1 and tpot_s(r) > r.tpot_slo_s for r in done), "wall_s": probe.wall_s}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--emulate", default="a100-llama3-8b:6")
    ap.add_argument("--scale", type=float, default=2.0, help="rate scale of the probe (the window's capacity is ~1)")
    ap.add_argument("--out", default="out/overload")
    ap.add_argument("--only", default="admission-off,default",
                    help=f"comma-separated configurations to run, from {', '.join(CONFIGS)} (default: %(default)s)")
    ap.add_argument("--trace", action="store_true",
                    help="run each server with --fair-trace OUT/trace-NAME.jsonl and add its trace-report summary")
    args = ap.parse_args()
    if not args.scale > 0:
        raise SystemExit("overload_live.py: --scale must be > 0")
    only = [n for n in args.only.split(",") if n]
    if not only or set(only) - set(CONFIGS):
        raise SystemExit(f"overload_live.py: --only takes names from {', '.join(CONFIGS)}, got {args.only!r}")
    exit_on_sigterm()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    cfg = emulated_config(args.emulate)
    bench = Bench(cfg, out, str(make_model(MICRO_SPEC)))
    bench.log = open(out / "bench_serving.log", "w")
    import sglang.benchmark.serving  # noqa: F401  (import once)
    bench.prepare()
    key = cfg.workloads[0].trace
    results = {"emulated_device": args.emulate, "scale": args.scale, "window": cfg.workloads[0].to_json(),
               "ttft_slo_ms": cfg.ttft_slo_ms, "tpot_slo_ms": cfg.tpot_slo_ms, "configs": {}}
    for name in only:
        label, extra = CONFIGS[name]
        server_args = bench.server_args("fair") + extra
        trace = (out / f"trace-{name}.jsonl").resolve() if args.trace else None
        if trace is not None:
            server_args += ["--fair-trace", str(trace)]
        bench.say(f"starting {label}: sglang-fair serve {' '.join(server_args)}")
        with sglang_server(bench.model, server_args, command=SERVE, startup_timeout_s=600) as srv:
            bench._warm_up(srv.url)
            probe = bench._probe(srv.url, key, args.scale)
            fig = probe_figures(probe, cfg.dilation)
            fig["status"] = _status(srv)
        fig["server_args"] = server_args
        if trace is not None:  # the server is stopped: its trace is on disk but for at most its last 0.25 s
            fig["trace_summary"] = trace_report.summarize(trace_report.read_trace(trace))
            print(f"{label}: trace {trace}\n{trace_report.render(fig['trace_summary'])}")
        results["configs"][label] = fig
        bench.say(f"{label}: {json.dumps({k: v for k, v in fig.items() if k not in ('status', 'server_args')})}")
    (out / "overload.json").write_text(json.dumps(results, indent=1) + "\n")
    print(f"EMULATED {args.emulate}, Azure conv window at x{args.scale:g} (figures in emulated GPU ms)")
    print("| config | sent / answered | first tokens on time | attainment | P50 / P99 / max TTFT | P99 / max TPOT | "
          "TPOT over SLO | demotions |")
    print("|---|---|---|---|---|---|---|---|")
    for label, f in results["configs"].items():
        print(f"| {label} | {f['sent']} / {f['answered']} | {f['first_token_on_time']:.1%} | {f['attainment']:.1%} | "
              f"{f['p50_ttft_ms']:.0f} / {f['p99_ttft_ms']:.0f} / {f['max_ttft_ms']:.0f} | "
              f"{f['p99_tpot_ms']:.1f} / {f['max_tpot_ms']:.1f} | {f['tpot_over_slo']} | "
              f"{f['status'].get('demotions_total')} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
