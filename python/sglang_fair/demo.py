"""`sglang-fair demo`: the embedded model behind `sglang-fair serve`, a short burst of real-trace requests, a summary.

Starts the server in its own process group on loopback (stopped by group id whatever happens), replays the first
requests of the Azure 2023 code trace with explicit rate and length scaling, prints a TTFT/TPOT summary.
"""

from __future__ import annotations

import argparse
import math
import sys

from .live.replay import replay, request_times, requests_from_trace
from .live.server import cpu_server_args, exit_on_sigterm, sglang_server
from .core.metrics import summarize
from .data.model import make_model
from .config import has_cuda


def add_parser(subparsers) -> None:
    p = subparsers.add_parser("demo", help="serve the embedded model, replay a short real-trace burst, print a summary")
    p.add_argument("--policy", default="fair", help="--fair-policy for the server (default fair)")
    p.add_argument("--trace", default="azure-code", help="trace name or path (default azure-code)")
    p.add_argument("--requests", type=int, default=24, help="how many requests from the start of the trace")
    p.add_argument("--rate-scale", type=float, default=1.0, help="arrival gaps divided by this")
    p.add_argument("--length-scale", type=float, default=0.1, help="prompt lengths multiplied by this")
    p.add_argument("--max-prompt-tokens", type=int, default=2048)
    p.add_argument("--max-output-tokens", type=int, default=48)
    p.add_argument("--ttft-slo-ms", type=float, default=2000.0)
    p.add_argument("--tpot-slo-ms", type=float, default=200.0)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from .sim.traces import load_trace

    for flag, value, ok, need in (("--requests", args.requests, args.requests >= 1, ">= 1"),
                                  ("--rate-scale", args.rate_scale, 0 < args.rate_scale < math.inf, "> 0"),
                                  ("--length-scale", args.length_scale, 0 < args.length_scale < math.inf, "> 0"),
                                  ("--max-prompt-tokens", args.max_prompt_tokens, args.max_prompt_tokens >= 1, ">= 1"),
                                  ("--max-output-tokens", args.max_output_tokens, args.max_output_tokens >= 1, ">= 1")):
        if not ok:
            raise SystemExit(f"sglang-fair demo: {flag} must be {need}, got {value}")
    try:
        trace = load_trace(args.trace, limit=args.requests).scaled(args.rate_scale)
        reqs = requests_from_trace(trace, length_scale=args.length_scale, max_prompt_tokens=args.max_prompt_tokens,
                                   max_output_tokens=args.max_output_tokens)
    except (OSError, ValueError) as exc:
        raise SystemExit(f"sglang-fair demo: --trace: {exc}")
    exit_on_sigterm()
    model = make_model()
    cmd = [sys.executable, "-m", "sglang_fair.cli", "serve"]
    server_args = ["--fair-policy", args.policy, "--ttft-slo-ms", str(args.ttft_slo_ms),
                   "--tpot-slo-ms", str(args.tpot_slo_ms), "--enable-metrics"]
    if not has_cuda():
        server_args += cpu_server_args(max_total_tokens=32768, float32=False)
    print(f"demo: {len(reqs)} requests of {args.trace} (rate x{args.rate_scale}, prompt length x{args.length_scale}, "
          f"<= {args.max_prompt_tokens} prompt / {args.max_output_tokens} output tokens) over {trace.duration_s:.1f} s; "
          f"policy {args.policy}; SLOs TTFT {args.ttft_slo_ms:.0f} ms, TPOT {args.tpot_slo_ms:.0f} ms", flush=True)
    with sglang_server(model, server_args, command=cmd, startup_timeout_s=600) as srv:
        status = srv.get("/sglang_fair/status").json()
        records = replay(srv.url, reqs, progress=True)
        after = srv.get("/sglang_fair/status").json()
    summary = summarize(request_times(records, args.ttft_slo_ms, args.tpot_slo_ms))
    errors = sum(1 for r in records if r.error)
    print(f"server: policy {status['policy']}, hooks verified {status['hooks_verified']}, "
          f"planned iterations {after['planned_iterations']}")
    print(f"requests: {summary.n} sent, {summary.finished} completed, {errors} errors")
    print(f"TTFT ms: p50 {summary.p50_ttft_s * 1e3:.0f}  p90 {summary.p90_ttft_s * 1e3:.0f}  "
          f"p99 {summary.p99_ttft_s * 1e3:.0f}")
    print(f"TPOT ms: p50 {summary.p50_tpot_s * 1e3:.1f}  p90 {summary.p90_tpot_s * 1e3:.1f}  "
          f"p99 {summary.p99_tpot_s * 1e3:.1f}")
    print(f"SLO attainment: {summary.attainment:.0%}   throughput {summary.throughput_tok_s:.0f} output tok/s")
    return 0 if errors == 0 and summary.finished == summary.n else 1
