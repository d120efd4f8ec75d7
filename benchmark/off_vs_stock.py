"""Plugin overhead: `sglang-fair serve --fair-policy off` (plugin installed and loaded, batching stock) against plain
`python -m sglang.launch_server` (plugin inactive), same model, fp32, same flags.

Both servers run at once (two machine-wide server slots, taken under the pair lock); the timed passes of a fixed
greedy workload (seeded prompts of 32-1024 tokens, `--max-new` outputs each, `--concurrency` in flight) alternate
between them, stock first in even rounds and off first in odd ones, so drifting load from other processes on the
machine hits both alike; the idle server sleeps (--sleep-on-idle). One full warm-up pass each first. Prints both
throughputs (median of `--rounds`) and whether every output matched, and with --write replaces the
"Plugin overhead (--fair-policy off vs stock)" section of docs/results.md.

    .venv/bin/python benchmark/off_vs_stock.py --write
"""

from __future__ import annotations

import argparse
import platform
import statistics
import sys
from pathlib import Path

from sglang_fair.bench.docs_section import replace_section  # noqa: E402

from sglang_fair.live.compare import fixed_prompts, mismatches, run_workload  # noqa: E402
from sglang_fair.live.server import cpu_server_args, exit_on_sigterm, server_slots, sglang_server  # noqa: E402
from sglang_fair.data.model import make_model  # noqa: E402

TITLE = "Plugin overhead (--fair-policy off vs stock)"
SERVE = [sys.executable, "-m", "sglang_fair.cli", "serve", "--fair-policy", "off"]


def summarize(label: str, runs, alone, plugin_loaded: bool) -> dict:
    out = {"label": label, "plugin_loaded": plugin_loaded, "outputs": runs[0].outputs, "alone": alone,
           "out_tps": statistics.median(r.output_tok_per_s for r in runs),
           "total_tps": statistics.median(r.total_tok_per_s for r in runs),
           "wall_s": [round(r.wall_s, 2) for r in runs],
           "stable": all(not mismatches(runs[0].outputs, r.outputs) for r in runs[1:])}
    print(f"{label:>6}: output {out['out_tps']:7.1f} tok/s, prompt+output {out['total_tps']:8.1f} tok/s "
          f"(median of {len(runs)}; walls {out['wall_s']} s), plugin loaded: {plugin_loaded}", flush=True)
    return out


def measure(args, prompts) -> tuple[dict, dict]:
    model = str(make_model())
    server_args = cpu_server_args(args.kv_tokens)
    with server_slots(2), \
            sglang_server(model, server_args, env={"SGLANG_FAIR_CONFIG": None}, startup_timeout_s=600) as stock, \
            sglang_server(model, server_args, command=SERVE, startup_timeout_s=600) as off:
        servers = {"stock": stock, "off": off}
        runs: dict[str, list] = {"stock": [], "off": []}
        for srv in servers.values():  # warm-up: a full pass (a server's first pass over new shapes is 5-10x slower)
            run_workload(srv.url, prompts, args.max_new, args.concurrency)
        for k in range(args.rounds):
            for label in (("stock", "off") if k % 2 == 0 else ("off", "stock")):
                run = run_workload(servers[label].url, prompts, args.max_new, args.concurrency)
                runs[label].append(run)
                print(f"  round {k}: {label:>5} {run.wall_s:6.1f} s", flush=True)
        alone = {label: [run_workload(srv.url, [p], args.max_new, 1).outputs[0] for p in prompts[: args.alone]]
                 for label, srv in servers.items()}
        logs = {label: srv.log_text() for label, srv in servers.items()}
    return tuple(summarize(label, runs[label], alone[label], "sglang-fair plugin active" in logs[label])
                 for label in ("stock", "off"))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--requests", type=int, default=48)
    ap.add_argument("--max-new", type=int, default=64)
    ap.add_argument("--concurrency", type=int, default=16)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--alone", type=int, default=6, help="requests also sent one at a time (strict identity)")
    ap.add_argument("--kv-tokens", type=int, default=32768)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--write", action="store_true", help="update docs/results.md")
    args = ap.parse_args()
    exit_on_sigterm()
    prompts = fixed_prompts(args.requests, seed=args.seed)
    stock, off = measure(args, prompts)
    if stock["plugin_loaded"] or not off["plugin_loaded"]:
        print("error: the plugin must be inactive in the stock run and active in the off run", file=sys.stderr)
        return 1
    diff = mismatches(stock["outputs"], off["outputs"])
    diff_alone = mismatches(stock["alone"], off["alone"])
    ratio = off["out_tps"] / stock["out_tps"]
    print(f"outputs: {len(prompts) - len(diff)}/{len(prompts)} identical concurrently, "
          f"{len(stock['alone']) - len(diff_alone)}/{len(stock['alone'])} identical one at a time; "
          f"off/stock output throughput {ratio:.3f}")
    if args.write:
        body = "\n".join([
            f"`benchmark/off_vs_stock.py` ({platform.machine()}, {platform.processor() or 'cpu'}; embedded model, "
            f"fp32, CPU flags of `cpu_server_args`, KV {args.kv_tokens} tokens). {len(prompts)} greedy requests, "
            f"prompts 32-1024 tokens (seed {args.seed}), {args.max_new} output tokens each, {args.concurrency} in "
            f"flight; median of {args.rounds} timed passes after a full warm-up pass, passes alternating between the "
            "two servers (both up, the idle one sleeping).",
            "",
            "| server | output tok/s | prompt+output tok/s | pass walls (s) |",
            "|---|---|---|---|",
            f"| `python -m sglang.launch_server` (plugin inactive) | {stock['out_tps']:.1f} | "
            f"{stock['total_tps']:.1f} | {', '.join(map(str, stock['wall_s']))} |",
            f"| `sglang-fair serve --fair-policy off` | {off['out_tps']:.1f} | {off['total_tps']:.1f} | "
            f"{', '.join(map(str, off['wall_s']))} |",
            "",
            f"off/stock output throughput: **{ratio:.3f}**. Greedy outputs identical: "
            f"{len(prompts) - len(diff)}/{len(prompts)} sent concurrently, "
            f"{len(stock['alone']) - len(diff_alone)}/{len(stock['alone'])} sent one at a time. With the policy off "
            "the plugin installs only its start-up check and the status hook (nothing runs per iteration or per "
            "request), so any difference is run-to-run noise on a shared 2-core machine.",
        ])
        replace_section(Path(__file__).resolve().parents[1] / "docs" / "results.md", TITLE, body)
        print(f"wrote docs/results.md section {TITLE!r}")
    return 0 if not diff_alone else 1


if __name__ == "__main__":
    raise SystemExit(main())
