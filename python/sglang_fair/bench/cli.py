"""`sglang-fair bench`: live A/B capacity benchmark with SGLang's bench_serving on real traces.

    sglang-fair bench --quick --json          # stock vs fair on Azure code, <= 5 min; JSON summary on stdout
    sglang-fair bench --full --out DIR --docs docs/results.md   # every policy, both Azure traces, cluster, fidelity
    sglang-fair bench --emulate a100-llama3-8b:3 --quick --json   # the same on the EMULATED A100, at its scale

Servers run on loopback in their own process groups (at most two at once, machine-wide slots), with
`--sleep-on-idle`, and are stopped by process group, also when the benchmark is interrupted.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path


def add_parser(sub) -> None:
    p = sub.add_parser("bench", help="live A/B benchmark: stock SGLang vs our policies under bench_serving",
                       description=__doc__.split("\n")[0])
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--quick", action="store_true", help="stock vs fair, Azure code, <= 5 minutes (default)")
    mode.add_argument("--full", action="store_true", help="all policies, Azure code and conv, cluster, sim fidelity")
    p.add_argument("--json", action="store_true", help="print the summary JSON on stdout")
    p.add_argument("--out", default=None, help="folder for results.json, plots and traces (default: a temp folder)")
    p.add_argument("--docs", default=None, metavar="RESULTS_MD",
                   help="regenerate the 'Live A/B benchmarks' section of this Markdown file (plots go beside it, "
                        "in img/live/)")
    p.add_argument("--policies", default=None,
                   help="comma-separated policies to run instead of the mode's (also: fair-strict); 'none' with "
                        "--cluster: the two-server runs only")
    p.add_argument("--start-scale", type=float, default=None, metavar="X",
                   help="first probe's rate scale, for every trace and the two-server runs (default: the mode's)")
    p.add_argument("--step", type=float, default=None, metavar="F",
                   help="bracketing factor of the capacity search: the first probe is multiplied (divided) by F until "
                        "one fails (passes), then the search bisects (default 2; e.g. 1.19 with --start-scale near a "
                        "known capacity brackets it in two probes)")
    p.add_argument("--max-probes", type=int, default=None, metavar="N",
                   help="most probes per policy and trace, single servers and two-server runs (default: the mode's)")
    p.add_argument("--rel-tol", type=float, default=None, metavar="R",
                   help="stop bisecting once the failing / passing scale <= 1 + R (default: the mode's)")
    p.add_argument("--ttft-slo-ms", type=float, default=None)
    p.add_argument("--tpot-slo-ms", type=float, default=None)
    p.add_argument("--no-cluster", action="store_true", help="skip the two-server runs (full mode)")
    p.add_argument("--cluster", default=None, metavar="SERVER/ROUTER,...",
                   help="two-server runs behind sglang-router instead of the mode's, e.g. "
                        "stock/cache_aware,fair/power_of_two (server policy / router policy); with --emulate they "
                        "replay twice the quick window's requests")
    p.add_argument("--emulate", metavar="PRESET[:DILATION]", default=None,
                   help="run every server on the emulated accelerator (serve --emulate-device): real trace lengths, "
                        "GPU policies, SLOs 2 s / 100 ms and arrival gaps x DILATION; figures are emulated")
    p.add_argument("--window-trace", default=None, choices=("azure-conv", "azure-code", "sharegpt"),
                   help="with --emulate --quick: the trace whose window to replay (default azure-conv: 150 requests "
                        "from request 1000; azure-code: 100 from 1073.8 s; sharegpt: its first 100; the full mode "
                        "runs all three)")
    p.add_argument("--window-start", type=int, default=None, metavar="N",
                   help="with --emulate --quick: start the window at request N of the trace (default: Azure conv's "
                        "request 1000, the others' windows as --window-trace says)")
    p.add_argument("--emulate-overlap", choices=("on", "off"), default="on",
                   help="with --emulate: emulate SGLang's GPU overlap loop, hiding the host time between forwards "
                        "behind the previous forward (default on, as SGLang runs on a GPU)")
    p.add_argument("--trace", action="store_true",
                   help="run each single server with --fair-trace OUT/trace-POLICY.jsonl and add the trace's summary "
                        "(whole run and per probe) to results.json (plugin policies; stock too with --emulate); the "
                        "two-server runs' servers too, OUT/trace-2xSERVER-ROUTER-{0,1}.jsonl")
    from ..sim.cli import add_trace_shaping
    add_trace_shaping(p)
    p.set_defaults(func=main)


ROUTER_POLICIES = ("cache_aware", "power_of_two", "round_robin", "random")
"""sglang-router 0.3.2's `--policy` choices."""


def _cluster_pairs(text: str, known) -> list[tuple[str, str]]:
    """`--cluster SERVER/ROUTER,...` -> [(server policy, router policy)], or a message naming the flag."""
    pairs = []
    for item in (x.strip() for x in text.split(",")):
        server, sep, router = item.partition("/")
        if not sep or server not in known or router not in ROUTER_POLICIES:
            raise SystemExit(f"sglang-fair bench: --cluster: {item!r} is not SERVER/ROUTER with SERVER one of "
                             f"{', '.join(known)} and ROUTER one of {', '.join(ROUTER_POLICIES)}")
        pairs.append((server, router))
    return pairs


def _config(args):
    from .emulated import EMULATED_POLICIES
    from .policies import LIVE_POLICIES
    from .runner import emulated_config, full_config, quick_config
    if args.cluster is not None and args.no_cluster:
        raise SystemExit("sglang-fair bench: --cluster: cannot be combined with --no-cluster")
    cluster = _cluster_pairs(args.cluster, EMULATED_POLICIES if args.emulate else LIVE_POLICIES) \
        if args.cluster is not None else None
    window_trace = getattr(args, "window_trace", None)
    window_flags = [flag for flag, value in (("--window-start", args.window_start), ("--window-trace", window_trace))
                    if value is not None]
    if args.emulate:
        from ..emulate.spec import parse_device_spec
        try:
            parse_device_spec(args.emulate)
        except ValueError as exc:
            raise SystemExit(f"sglang-fair bench: --emulate: {exc}") from None
        if window_flags and args.full:
            raise SystemExit(f"sglang-fair bench: {window_flags[0]}: quick mode only (the full mode has its own "
                             "windows)")
        try:
            cfg = emulated_config(args.emulate, full=args.full, start_request=args.window_start, cluster=cluster,
                                  trace=window_trace or "azure-conv")
        except ValueError as exc:
            raise SystemExit(f"sglang-fair bench: --window-start: {exc}") from None
        known = EMULATED_POLICIES
        cfg.emulate_overlap = args.emulate_overlap == "on"
    else:
        if window_flags:
            raise SystemExit(f"sglang-fair bench: {window_flags[0]}: needs --emulate (the emulated quick window)")
        cfg, known = (full_config() if args.full else quick_config()), LIVE_POLICIES
    if cluster is not None:
        cfg.cluster = cluster
    if args.policies and args.policies.strip() == "none":
        if not cfg.cluster:
            raise SystemExit("sglang-fair bench: --policies: 'none' needs --cluster (there would be nothing to run)")
        cfg.policies = []
    elif args.policies:
        names = [x.strip() for x in args.policies.split(",") if x.strip()]
        bad = [n for n in names if n not in known]
        if bad or not names:
            raise SystemExit(f"sglang-fair bench: --policies: unknown {bad or names}; choose from "
                             f"{', '.join(known)}")
        cfg.policies = names
    for flag in ("ttft_slo_ms", "tpot_slo_ms"):
        v = getattr(args, flag)
        if v is not None:
            if not v > 0:
                raise SystemExit(f"sglang-fair bench: --{flag.replace('_', '-')} must be > 0")
            setattr(cfg, flag, v)
    _search_flags(cfg, args)
    if args.no_cluster:
        cfg.cluster = []
    if args.max_context_tokens is not None and args.max_context_tokens < 3:
        raise SystemExit("sglang-fair bench: --max-context-tokens must be >= 3")
    if args.spread_arrivals or args.max_context_tokens is not None:
        cfg.workloads = [dataclasses.replace(w, spread_arrivals=args.spread_arrivals,
                                             max_context_tokens=args.max_context_tokens) for w in cfg.workloads]
    cfg.trace = bool(getattr(args, "trace", False))
    return cfg


def _search_flags(cfg, args) -> None:
    """--start-scale / --step / --max-probes / --rel-tol over the mode's capacity search."""
    import math
    for flag, ok, need in (("start_scale", lambda v: v > 0, "> 0"), ("step", lambda v: v > 1, "> 1"),
                           ("max_probes", lambda v: v >= 1, ">= 1"), ("rel_tol", lambda v: v > 0, "> 0")):
        v = getattr(args, flag, None)
        if v is None:
            continue
        if not (math.isfinite(v) and ok(v)):
            raise SystemExit(f"sglang-fair bench: --{flag.replace('_', '-')} must be {need}, got {v:g}")
        setattr(cfg, flag, v)
    if getattr(args, "start_scale", None) is not None:
        cfg.start_scales = {}
    if getattr(args, "max_probes", None) is not None:
        cfg.cluster_max_probes = args.max_probes


def main(args) -> int:
    from ..live.server import exit_on_sigterm
    exit_on_sigterm()
    cfg = _config(args)
    out = Path(args.out) if args.out else Path(tempfile.mkdtemp(prefix="sglang-fair-bench-"))
    out.mkdir(parents=True, exist_ok=True)
    results = run(cfg, out)
    cmd = "sglang-fair bench " + " ".join(a for a in sys.argv[2:]) if sys.argv[1:2] == ["bench"] else "sglang-fair bench"
    from . import report
    (out / "results.json").write_text(json.dumps(results, indent=1, default=_json_default) + "\n")
    imgs = report.plots(results, out)
    if cfg.emulate:
        from .emulated_report import emulated_summary
        summary = emulated_summary(results)
    else:
        summary = report.quick_summary(results)
    (out / "summary.json").write_text(json.dumps(summary, indent=1) + "\n")
    if args.docs:
        from .docs_section import replace_section
        docs = Path(args.docs)
        img_dir = docs.parent / "img" / "live"
        img_dir.mkdir(parents=True, exist_ok=True)
        for f in imgs:
            shutil.copy(f, img_dir / f.name)
        if cfg.emulate:
            from .emulated_report import markdown as emulated_markdown
            title = f"Emulated accelerator: live A/B ({cfg.mode})"
            text = emulated_markdown(results, cmd, "img/live")
        else:
            title = "Live A/B benchmarks (quick)" if cfg.mode == "quick" else "Live A/B benchmarks"
            text = report.markdown(results, cmd, "img/live")
        replace_section(docs, title, text)
    print(f"[bench] results in {out}", file=sys.stderr)
    if args.json:
        print(json.dumps(summary, indent=1))
    else:
        if cfg.emulate:
            from .emulated_report import valid_from
            print(f"EMULATED device {summary['emulated_device']} (dilation {summary['dilation']:g}); largest "
                  f"overrun fraction of a probe {summary['overrun_fraction']:.3f}"
                  + ("" if summary.get("min_dilation") is None else f"; {valid_from(summary['min_dilation'])}"))
        for name, p in summary["policies"].items():
            print(f"{name:>16}: capacity x{p['capacity']:g} ({p['capacity_rps']:.2f} req/s)")
        print(f"capacity ratio fair/stock: {summary['capacity_ratio_fair_vs_stock']}")
        for label, r in (summary.get("cluster") or {}).get("runs", {}).items():
            print(f"{label:>28}: capacity x{r['capacity']:g} ({r['capacity_rps']:.2f} req/s)")
        for name, ratio in (summary.get("cluster") or {}).get("ratios", {}).items():
            print(f"capacity {name}: {ratio:.2f}x")
    return 0


def _json_default(o):
    import numpy as np
    if isinstance(o, (np.integer, np.floating)):
        return o.item()
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def run(cfg, out: Path) -> dict:
    from .. import __version__
    from ..data.model import make_model
    from .fidelity import fidelity
    from .policies import SIM_SPECS, STOCK
    from .runner import Bench, machine

    t0 = time.monotonic()
    if cfg.emulate:
        from ..emulate.serve_args import MICRO_SPEC
        bench = Bench(cfg, out, str(make_model(MICRO_SPEC)))
    else:
        bench = Bench(cfg, out, str(make_model()))
    bench.log = open(out / "bench_serving.log", "w")
    bench.say("loading bench_serving")
    import sglang
    import sglang.benchmark.serving  # noqa: F401  (import once: ~15 s)
    bench.prepare()
    results: dict = {"config": cfg.to_json(), "machine": machine(), "date": dt.date.today().isoformat(),
                     "versions": _versions(__version__, sglang.__version__), "workloads": {}, "single": {},
                     "cluster": {}}
    for key, (w, trace, _) in bench.traces.items():
        results["workloads"][key] = {"rate_rps": trace.rate_rps, "span_s": trace.duration_s,
                                     "prompt_tokens_mean": float(trace.prompt_tokens.mean()),
                                     "output_tokens_mean": float(trace.output_tokens.mean()),
                                     "context_clipped": trace.context_clipped, "prompt_tokens_sent_mean": None}
    if cfg.emulate:  # stock first: fair then also probes at stock's capacity (each starts from the device prior)
        first = cfg.workloads[0].trace
        for name in sorted(cfg.policies, key=lambda n: (n != "stock", n == "fair")):
            cap = results["single"].get("stock", {}).get(first, {}).get("capacity")
            results["single"][name] = bench.run_single(name, {first: cap} if name == "fair" and cap else None)
    # fair (else the first plugin policy) first: it saves its live cost fit, the other plugin policies start from it
    order = [] if cfg.emulate else sorted(cfg.policies, key=lambda n: (n != "fair", n in STOCK))
    for name in order:
        results["single"][name] = bench.run_single(name)
    first = cfg.workloads[0].trace
    stock_cap = results["single"].get("stock", {}).get(first, {}).get("capacity") or cfg.start_scale
    for server_policy, router_policy in cfg.cluster:
        label = f"2x{server_policy}/{router_policy}"
        results["cluster"][label] = bench.run_cluster(server_policy, router_policy, start=2.0 * stock_cap)
    for key in results["workloads"]:  # the lengths bench_serving really sent, the cluster runs' included
        sent = [x for (lbl, k), ps in bench.probes.items() if k == key for p in ps.values() for x in p.input_lens]
        results["workloads"][key]["prompt_tokens_sent_mean"] = float(sum(sent) / len(sent)) if sent else None
    if bench.cost_model_path.exists():
        results["cost_model"] = json.loads(bench.cost_model_path.read_text())
    if cfg.emulate:  # the device model is the true cost: no live fit needed
        from .emulated_report import emulated_fidelity, stability_bounds
        stability_bounds(bench, results)
        results["fidelity"] = emulated_fidelity(bench, results)
    elif bench.cost_model_path.exists():
        results["fidelity"] = fidelity(
            bench.probes, bench.traces, {k: v for k, v in SIM_SPECS.items() if k in cfg.policies},
            str(bench.cost_model_path), ttft_slo_ms=cfg.ttft_slo_ms, tpot_slo_ms=cfg.tpot_slo_ms,
            kv_tokens=cfg.kv_tokens)
    results["wall_s"] = time.monotonic() - t0
    bench.log.close()
    return results


def _versions(ours: str, sglang_version: str) -> dict:
    try:
        from importlib.metadata import version
        router = version("sglang-router")
    except Exception:
        router = None
    return {"sglang_fair": ours, "sglang": sglang_version, "sglang_router": router}
