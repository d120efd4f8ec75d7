"""Regenerate the "Simulated capacity (A100 Llama-3-8B preset)" tables of docs/results.md.

    python benchmark/sim_capacity.py --part single  --out out/sim_capacity   # per-trace table + plots
    python benchmark/sim_capacity.py --part cluster --out out/sim_capacity   # routers x replicas + WindServe
    python benchmark/sim_capacity.py --part stock   --out out/sim_stock      # + SGLang's default, RAD, admission
    python benchmark/sim_capacity.py --part throughput --out out/sim_stock   # no SLOs: throughput vs the bound
    python benchmark/sim_capacity.py --part bounds --out out/sim_stock       # stability and burst bounds per trace
    python benchmark/sim_capacity.py --render out/sim_capacity               # markdown tables from the JSON
    python benchmark/sim_capacity.py --compare out/sim_stock,out/sim_stock_h100   # part stock side by side

Each run is bounded by a trace window (WINDOWS below) so the whole set finishes in well under 20 minutes on one core.
Capacity = largest rate scale meeting the criterion (bisection, rel. tolerance REL_TOL); see sglang_fair.sim.capacity.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from tqdm import tqdm

from sglang_fair.core.presets import load_preset
from sglang_fair.sim.burst_bound import burst_bound_scale
from sglang_fair.sim.capacity import find_capacity, stability_bound_scale
from sglang_fair.sim.cli import device_iteration_time, make_runner
from sglang_fair.sim.engine import EngineConfig
from sglang_fair.sim.plots import write_plots
from sglang_fair.sim.routers import ROUTERS
from sglang_fair.sim.traces import load_trace

PRESET = "a100-llama3-8b"
TTFT_MS = 2000.0
POLICIES = ["fair", "sarathi-512", "sarathi-2048", "slai"]
WINDOWS = {  # trace -> load_trace kwargs (window of the unscaled trace)
    "azure-code": {"duration_s": 600.0},
    "azure-conv": {"duration_s": 300.0},
    "sharegpt": {"limit": 1000},
}
REL_TOL = 0.06
STOCK_POLICIES = ["fair", "fair@admission=off", "fair@admission=demote@demote_max_wait_ttft=inf",
                  "fair@admission=demote-longest@demote_max_wait_ttft=inf", "sarathi-512", "sarathi-2048",
                  "sglang-default", "sglang-mixed-2048", "slai", "rad", "fair+reject",
                  "fair@admission=demote@demote_max_wait_ttft=inf+reject"]
"""Part "stock" (docs/results.md, "Simulated capacity: SGLang's default, RAD, admission"); `--policies` overrides.
`fair` is the default (admission demote-longest, k = 5); the tables measured before it became the default label
admission off `fair` and the k = inf variants without `@demote_max_wait_ttft=inf` (docs/results.md, top).
`+reject`: the server refuses hopeless arrivals (`--fair-admission reject`, sim.cli.REJECT_SUFFIX)."""
FIXED_BUDGETS = ("sarathi-512", "sarathi-2048", "sglang-default")
"""The fixed-budget baselines issue 16's goals are measured against ("best fixed" in the tables)."""
CLUSTER_TRACE = "azure-conv"
CLUSTER_WINDOW = {"duration_s": 180.0}
CLUSTER_POLICIES = ["fair", "sarathi-512"]


def capacity(trace, spec, cost, tpot_ms, replicas=1, router="fair", gpus=1, noise_cv=0.0, cost_headroom=True,
             iteration_time=None, online_fit=False, rel_tol=REL_TOL):
    engine = EngineConfig(ttft_slo_ms=TTFT_MS, tpot_slo_ms=tpot_ms, seed=0, noise_cv=noise_cv,
                          cost_headroom=cost_headroom, online_fit=online_fit)
    run = make_runner(trace, spec, cost, engine, replicas=replicas, router=router, iteration_time=iteration_time)
    t0 = time.perf_counter()
    res, search = find_capacity(run, trace, cost, TTFT_MS / 1000, tpot_ms / 1000, gpus=gpus, rel_tol=rel_tol)
    return res, search, time.perf_counter() - t0


def part_single(out: Path, shared) -> None:
    cost = load_preset(PRESET)
    rows = []
    for name, win in WINDOWS.items():
        trace = load_trace(name, shared=shared, **win)
        for tpot in (100.0, 200.0):
            results, searches = {}, {}
            for spec in tqdm(POLICIES, desc=f"{name} tpot={tpot:.0f}", file=sys.stderr):
                res, search, wall = capacity(trace, spec, cost, tpot)
                results[spec], searches[spec] = res, search
                rows.append({"trace": name, "window": win, "requests": len(trace), "trace_rate_rps": trace.rate_rps,
                             "tpot_slo_ms": tpot, "policy": spec, "wall_s": wall, **res.to_json()})
            write_plots(out / "img", results, searches, prefix=f"{name}_tpot{tpot:.0f}_")
    (out / "single.json").write_text(json.dumps(rows, indent=1))


def part_stock(out: Path, shared, policies: list[str], traces: list[str], preset: str = PRESET,
               noise_cv: float = 0.0, cost_headroom: bool = True, device: str | None = None,
               online_fit: bool = False, rel_tol: float = REL_TOL) -> None:
    """Like part_single, for STOCK_POLICIES; also records how many requests were demoted (and refused at arrival)
    at the tail capacity. `preset`, `noise_cv`, `cost_headroom`: the cost model, iteration-time noise and whether
    plans keep the live adapter's headroom (sim.engine.EngineConfig) in every run; `device`: the emulated device
    whose model is the true iteration time (`sglang-fair capacity --device`; the policies plan with `preset`,
    refined online from the true times with `online_fit`, as `serve` does); `rel_tol`: the bisection's tolerance.
    All recorded in each row; one out directory per setting.
    Rows are appended to stock.json as each cell finishes (a cut-short sweep keeps what it measured)."""
    cost = load_preset(preset)
    iteration_time = device_iteration_time(device) if device is not None else None
    path = out / "stock.json"
    rows = json.loads(path.read_text()) if path.exists() else []
    done = {(r["trace"], r["tpot_slo_ms"], r["policy"]) for r in rows}
    for name in traces:
        win = WINDOWS[name]
        trace = load_trace(name, shared=shared, **win)
        for tpot in (100.0, 200.0):
            for spec in tqdm(policies, desc=f"{name} tpot={tpot:.0f}", file=sys.stderr):
                if (name, tpot, spec) in done:
                    continue
                res, search, wall = capacity(trace, spec, cost, tpot, noise_cv=noise_cv, cost_headroom=cost_headroom,
                                             iteration_time=iteration_time, online_fit=online_fit, rel_tol=rel_tol)
                at = search.results.get(float(f"{res.capacity:.6g}")) if res.capacity > 0 else None
                rejected = sum(r.rejected for r in at.records) if at is not None else None
                rows.append({"trace": name, "window": win, "requests": len(trace), "trace_rate_rps": trace.rate_rps,
                             "tpot_slo_ms": tpot, "policy": spec, "wall_s": wall,
                             "rejected_at_capacity": rejected, "preset": preset, "device": device,
                             "online_fit": online_fit,
                             "noise_cv": noise_cv, "rel_tol": rel_tol,
                             "cost_headroom": cost_headroom, **res.to_json(),
                             # the capacity's own count (to_json gives the lowest scale's when the capacity is 0)
                             "demoted_at_capacity": res.demoted_at_capacity if res.capacity > 0 else None})
                path.write_text(json.dumps(rows, indent=1))


def part_throughput(out: Path, policies: list[str]) -> None:
    """No SLOs (1e9 ms): a seeded synthetic trace (3000 requests, prompts U[200, 1000), outputs U[20, 200), Poisson
    arrivals) at 0.95, 1.3 and 2x the stability bound for 100 ms iterations; throughput = requests / last token time."""
    import numpy as np

    from sglang_fair.policies import make_policy
    from sglang_fair.sim.capacity import stability_bound_rps
    from sglang_fair.sim.cli import parse_policy_spec
    from sglang_fair.sim.engine import simulate
    from sglang_fair.sim.traces import Trace
    cost = load_preset(PRESET)
    rng = np.random.default_rng(0)
    n = 3000
    prompts, outputs = rng.integers(200, 1000, n), rng.integers(20, 200, n)
    gaps = rng.exponential(1.0, n)
    unit = np.cumsum(gaps) - gaps[0]
    bound = stability_bound_rps(Trace("synthetic", unit, prompts, outputs), cost, 0.1)
    engine = EngineConfig(ttft_slo_ms=1e9, tpot_slo_ms=1e9)
    rows = []
    for load in (0.95, 1.3, 2.0):
        trace = Trace("synthetic", unit / (load * bound), prompts, outputs)
        for spec in tqdm(policies, desc=f"throughput x{load}", file=sys.stderr):
            name, params = parse_policy_spec(spec)
            try:
                res = simulate(trace, make_policy(name, **params), cost, engine)
                last = max(r.last_token_s for r in res.records)
                row = {"throughput_rps": n / last, "iterations": res.iterations, "error": None}
            except RuntimeError as exc:  # a policy that stopped planning (the simulator's livelock guard)
                row = {"throughput_rps": None, "iterations": None, "error": str(exc)}
            rows.append({"load": load, "policy": spec, "bound_rps": bound, **row})
    (out / "throughput.json").write_text(json.dumps(rows, indent=1))


def part_cluster(out: Path, shared, routers=ROUTERS, windserve: bool = True) -> None:
    cost = load_preset(PRESET)
    trace = load_trace(CLUSTER_TRACE, shared=shared, **CLUSTER_WINDOW)
    rows = []
    for n in (4, 8):
        for router in tqdm(routers, desc=f"cluster x{n}", file=sys.stderr):
            for spec in CLUSTER_POLICIES:
                res, _, wall = capacity(trace, spec, cost, 100.0, replicas=n, router=router, gpus=n)
                rows.append({"replicas": n, "router": router, "policy": spec, "wall_s": wall, **res.to_json()})
    for name in ("azure-code", "azure-conv") if windserve else ():
        t = load_trace(name, shared=shared, **WINDOWS[name])
        for spec, reps, router in (("windserve", 1, "fair"), ("fair", 2, "fair"), ("sarathi-512", 2, "least_outstanding")):
            res, _, wall = capacity(t, spec, cost, 100.0, replicas=reps, router=router, gpus=2)
            rows.append({"windserve_row": True, "trace": name, "policy": spec, "replicas": reps if reps > 1 else None,
                         "router": router if reps > 1 else None, "wall_s": wall, **res.to_json()})
    (out / "cluster.json").write_text(json.dumps(rows, indent=1))


def part_bounds(out: Path, shared, traces: list[str], preset: str = PRESET) -> None:
    """Per trace window: the stability bound at each TPOT SLO and the burst bound (sim/burst_bound.py) for the tail
    and the 90%-attainment criteria, as rate scales."""
    cost = load_preset(preset)
    rows = []
    for name in tqdm(traces, desc="bounds", file=sys.stderr):
        trace = load_trace(name, shared=shared, **WINDOWS[name])
        t0 = time.perf_counter()
        rows.append({"trace": name, "window": WINDOWS[name], "requests": len(trace), "preset": preset,
                     "stability_bound": {f"{t:.0f}": stability_bound_scale(trace, cost, t / 1000) for t in (100.0, 200.0)},
                     "burst_bound_tail": burst_bound_scale(trace, cost, TTFT_MS / 1000),
                     "burst_bound_attainment": burst_bound_scale(trace, cost, TTFT_MS / 1000,
                                                                 allowed_misses=len(trace) // 10),
                     "wall_s": time.perf_counter() - t0})
    (out / "bounds.json").write_text(json.dumps(rows, indent=1))


def _best_fixed(cells: list[dict]) -> dict | None:
    """The row with the highest tail capacity among FIXED_BUDGETS in `cells` (one trace and TPOT), if any."""
    return max((r for r in cells if r["policy"] in FIXED_BUDGETS), key=lambda r: r["capacity"], default=None)


def render_ceilings(bounds: list[dict], stock: list[dict]) -> list[str]:
    """One row per trace and TPOT SLO: the bounds, and how close the best fixed budget, fair and the best policy
    measured come to them. Tail: min(stability, burst bound). 90% attainment: the burst bound alone (a finite window
    may run above the stability bound and still have 90% of its requests on time)."""
    lines = ["| trace | TPOT SLO | stability bound | burst bound (tail / 90% att.) | best fixed (tail) | fair (tail) | "
             "best measured (tail) | best tail / min(stability, burst) | best 90% att. / burst bound |",
             "|---|---|---|---|---|---|---|---|---|"]
    for b in bounds:
        for tpot in (100.0, 200.0):
            cells = [r for r in stock if r["trace"] == b["trace"] and r["tpot_slo_ms"] == tpot]
            if not cells:
                continue
            stab = b["stability_bound"][f"{tpot:.0f}"]
            fx = _best_fixed(cells)
            fair = next((r for r in cells if r["policy"] == "fair"), None)
            best = max(cells, key=lambda r: r["capacity"])
            best_a = max(cells, key=lambda r: r["capacity_attainment"])
            lines.append(f"| {b['trace']} | {tpot:.0f} ms | {_f(stab)} | {_f(b['burst_bound_tail'])} / "
                         f"{_f(b['burst_bound_attainment'])} | "
                         f"{_f(fx and fx['capacity'])} ({fx and fx['policy']}) | {_f(fair and fair['capacity'])} | "
                         f"{_f(best['capacity'])} ({best['policy']}) | "
                         f"{_f(best['capacity'] / min(stab, b['burst_bound_tail']), 2)} | "
                         f"{_f(best_a['capacity_attainment'] / b['burst_bound_attainment'], 2)} "
                         f"({best_a['policy']}) |")
    return lines


def render_compare(dirs: list[Path]) -> str:
    """Tail and 90%-attainment capacity of each (trace, TPOT, policy) measured in every one of the result directories
    (e.g. presets or noise settings), side by side, with each cell's ratio to the best fixed budget there."""
    runs = [json.loads((d / "stock.json").read_text()) for d in dirs]
    cells, by_cell = {}, [{} for _ in runs]  # (trace, tpot, policy) -> {run: row}; per run (trace, tpot) -> rows
    for i, rows in enumerate(runs):
        for r in rows:
            cells.setdefault((r["trace"], r["tpot_slo_ms"], r["policy"]), {})[i] = r
            by_cell[i].setdefault((r["trace"], r["tpot_slo_ms"]), []).append(r)
    best_fixed = [{cell: (bf := _best_fixed(rows)) and bf["capacity"] for cell, rows in run.items()} for run in by_cell]
    head = " | ".join(f"{d.name}: tail (x best fixed) / 90% att." for d in dirs)
    lines = [f"| trace | TPOT SLO | policy | {head} |", "|---|---|---|" + "---|" * len(dirs)]
    for (trace, tpot, policy), by in cells.items():
        if len(by) < len(dirs):
            continue
        out = []
        for i in range(len(dirs)):
            r = by.get(i)
            bf = best_fixed[i].get((trace, tpot))
            out.append("-" if r is None else f"{_f(r['capacity'])} ({_f(r['capacity'] / bf, 2) if bf else '-'}) / "
                                             f"{_f(r['capacity_attainment'])}")
        lines.append(f"| {trace} | {tpot:.0f} ms | {policy} | " + " | ".join(out) + " |")
    return "\n".join(lines)


def _f(x, nd=3):
    return "-" if x is None else f"{x:.{nd}f}"


def render(out: Path) -> str:
    lines = []
    single = json.loads((out / "single.json").read_text()) if (out / "single.json").exists() else []
    if single:
        lines += ["| trace (window) | TPOT SLO | policy | capacity (tail) | this / fair | capacity (90% att.) | "
                  "P99 TTFT ms | P99 TPOT ms | bound | bound fraction |",
                  "|---|---|---|---|---|---|---|---|---|---|"]
        for r in single:
            fair = next(x for x in single if x["trace"] == r["trace"] and x["tpot_slo_ms"] == r["tpot_slo_ms"]
                        and x["policy"] == "fair")
            ratio = r["capacity"] / fair["capacity"] if fair["capacity"] > 0 else float("nan")
            win = ", ".join(f"{k}={v:g}" for k, v in r["window"].items())
            lines.append(f"| {r['trace']} ({win}; {r['requests']} req) | {r['tpot_slo_ms']:.0f} ms | {r['policy']} | "
                         f"{_f(r['capacity'])} | {_f(ratio, 2)} | {_f(r['capacity_attainment'])} | "
                         f"{_f(r['p99_ttft_ms'], 0)} | {_f(r['p99_tpot_ms'], 1)} | {_f(r['bound_scale'])} | "
                         f"{_f(r['bound_fraction'], 2)} |")
    stock = json.loads((out / "stock.json").read_text()) if (out / "stock.json").exists() else []
    if stock:
        traces = list(dict.fromkeys(r["trace"] for r in stock))
        rank = {p: i for i, p in enumerate(STOCK_POLICIES)}
        stock.sort(key=lambda r: (traces.index(r["trace"]), r["tpot_slo_ms"], rank.get(r["policy"], len(rank))))
        lines += ([""] if lines else []) + [
                  "| trace (window) | TPOT SLO | policy | capacity (tail) | this / fair | capacity (90% att.) | "
                  "P99 TTFT ms | P99 TPOT ms | demoted (+ refused) at cap. | bound fraction |",
                  "|---|---|---|---|---|---|---|---|---|---|"]
        for r in stock:
            fair = next((x for x in stock if x["trace"] == r["trace"] and x["tpot_slo_ms"] == r["tpot_slo_ms"]
                         and x["policy"] == "fair"), None)
            ratio = r["capacity"] / fair["capacity"] if fair and fair["capacity"] > 0 else float("nan")
            win = ", ".join(f"{k}={v:g}" for k, v in r["window"].items())
            dem = "-" if r["demoted_at_capacity"] is None else str(r["demoted_at_capacity"])
            if r.get("rejected_at_capacity"):
                dem += f" + {r['rejected_at_capacity']}"
            lines.append(f"| {r['trace']} ({win}; {r['requests']} req) | {r['tpot_slo_ms']:.0f} ms | {r['policy']} | "
                         f"{_f(r['capacity'])} | {_f(ratio, 2)} | {_f(r['capacity_attainment'])} | "
                         f"{_f(r['p99_ttft_ms'], 0)} | {_f(r['p99_tpot_ms'], 1)} | {dem} | "
                         f"{_f(r['bound_fraction'], 2)} |")
    bounds = json.loads((out / "bounds.json").read_text()) if (out / "bounds.json").exists() else []
    if bounds and stock:
        lines += [""] + render_ceilings(bounds, stock)
    thr = json.loads((out / "throughput.json").read_text()) if (out / "throughput.json").exists() else []
    if thr:
        lines += ([""] if lines else []) + ["| load (x bound) | policy | throughput / bound | iterations |", "|---|---|---|---|"]
        for r in thr:
            cell = (_f(r["throughput_rps"] / r["bound_rps"]) if r["throughput_rps"]
                    else f"stopped ({r['error'].split(' with ')[0]})")
            lines.append(f"| {r['load']:g} | {r['policy']} | {cell} | {r['iterations'] or '-'} |")
    cl = json.loads((out / "cluster.json").read_text()) if (out / "cluster.json").exists() else []
    if cl:
        lines += ["", "| replicas | router | policy | capacity (tail) | capacity (90% att.) | P99 TTFT ms | "
                  "P99 TPOT ms | bound fraction |", "|---|---|---|---|---|---|---|---|"]
        for r in cl:
            if r.get("windserve_row"):
                continue
            lines.append(f"| {r['replicas']} | {r['router']} | {r['policy']} | {_f(r['capacity'])} | "
                         f"{_f(r['capacity_attainment'])} | {_f(r['p99_ttft_ms'], 0)} | {_f(r['p99_tpot_ms'], 1)} | "
                         f"{_f(r['bound_fraction'], 2)} |")
        lines += ["", "| trace | system (2 GPUs) | capacity (tail) | capacity (90% att.) | P99 TTFT ms | P99 TPOT ms | "
                  "bound fraction |", "|---|---|---|---|---|---|---|"]
        for r in cl:
            if not r.get("windserve_row"):
                continue
            system = "WindServe 1P+1D" if r["policy"] == "windserve" else f"{r['policy']} x2, {r['router']} router"
            lines.append(f"| {r['trace']} | {system} | {_f(r['capacity'])} | {_f(r['capacity_attainment'])} | "
                         f"{_f(r['p99_ttft_ms'], 0)} | {_f(r['p99_tpot_ms'], 1)} | {_f(r['bound_fraction'], 2)} |")
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--part", choices=["single", "cluster", "stock", "throughput", "bounds", "all"], default="all",
                    help="all = single + cluster (stock and throughput only when asked for)")
    ap.add_argument("--policies", default=",".join(STOCK_POLICIES), help="part stock: comma-separated policy specs")
    ap.add_argument("--traces", default=",".join(WINDOWS), help="parts stock, bounds: comma-separated traces")
    ap.add_argument("--routers", default=",".join(ROUTERS),
                    help="part cluster: comma-separated routers (sim/routers.py); a subset skips the WindServe rows")
    ap.add_argument("--preset", default=PRESET, help="parts stock, bounds: cost-model preset")
    ap.add_argument("--noise-cv", type=float, default=0.0,
                    help="part stock: iteration-time noise (coefficient of variation) of every run")
    ap.add_argument("--no-cost-headroom", action="store_true",
                    help="part stock: plan with the bare cost model, without the live adapter's headroom factor")
    ap.add_argument("--device", default=None, metavar="PRESET",
                    help="part stock: the emulated device's model as the true iteration time (e.g. a100-llama3-8b); "
                         "the policies plan with --preset")
    ap.add_argument("--online-fit", action="store_true",
                    help="part stock: plan with an online fit of the true iteration times (prior: --preset)")
    ap.add_argument("--rel-tol", type=float, default=REL_TOL,
                    help=f"part stock: the bisection's relative tolerance (default {REL_TOL}; one out directory each)")
    ap.add_argument("--out", default="out/sim_capacity")
    ap.add_argument("--shared", default=None)
    ap.add_argument("--render", default=None, help="print the markdown tables from a results directory and exit")
    ap.add_argument("--compare", default=None, metavar="DIR,DIR,...",
                    help="print part stock's capacities side by side across results directories and exit")
    args = ap.parse_args()
    if args.render:
        print(render(Path(args.render)))
        return 0
    if args.compare:
        print(render_compare([Path(d) for d in args.compare.split(",") if d]))
        return 0
    if not 0 < args.rel_tol < 1:
        ap.error(f"--rel-tol must be in (0, 1), got {args.rel_tol}")
    if args.device is not None:
        try:
            device_iteration_time(args.device)
        except ValueError as exc:
            ap.error(f"--device: {exc}")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    if args.part in ("single", "all"):
        part_single(out, args.shared)
    if args.part in ("cluster", "all"):
        routers = [r for r in args.routers.split(",") if r]
        unknown = sorted(set(routers) - set(ROUTERS))
        if unknown:
            ap.error(f"--routers: unknown {', '.join(unknown)}; choose from {', '.join(ROUTERS)}")
        part_cluster(out, args.shared, routers, windserve=set(routers) >= set(ROUTERS))
    if args.part == "throughput":
        part_throughput(out, [p for p in args.policies.split(",") if p])
    if args.part == "bounds":
        part_bounds(out, args.shared, [t for t in args.traces.split(",") if t], args.preset)
    if args.part == "stock":
        part_stock(out, args.shared, [p for p in args.policies.split(",") if p],
                   [t for t in args.traces.split(",") if t], args.preset, args.noise_cv, not args.no_cost_headroom,
                   args.device, args.online_fit, args.rel_tol)
    print(f"done in {time.perf_counter() - t0:.0f} s", file=sys.stderr)
    print(render(out))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
