"""`sglang-fair plan-bench`: median planning time per step of each policy on large synthetic snapshots.

With `--adapter`, the adapter's whole per-step path instead (snapshot + plan + apply + measure, on stand-in SGLang
scheduler objects): bench/adapter_bench.py.

For each running-set size (default 64, 256, 1024) plus a waiting queue (default 1000), it builds a set of seeded
snapshots of a loaded instance (spread slacks, contexts and prompts, one partial prefill, 5 % strict users, a
Llama-3-8B/A100 cost model), calls `policy.plan(snap)` on each in turn and reports the median over all calls.
"""

from __future__ import annotations

import argparse
import gc
import statistics
import sys
import time

import numpy as np
import orjson

from ..core.cost_model import CostModel
from ..core.presets import load_preset
from ..policies import make_policy, policy_names
from ..core.types import ReqView, Snapshot

DEFAULT_COST_PRESET = "a100-llama3-8b"


def bench_snapshot(running: int, waiting: int, seed: int, cost: CostModel, *, now: float = 100.0,
                   ttft_slo_s: float = 2.0, tpot_slo_s: float = 0.1) -> Snapshot:
    """A seeded snapshot of a busy instance: `running` decodes with slacks in [-50 ms, 1 s], one partial prefill and
    `waiting` requests that arrived over the last 1.5 s (arrival order), prompts 32..4096 tokens."""
    rng = np.random.default_rng(seed)
    run = []
    for i in range(running):
        out = int(rng.integers(1, 400))
        slack = float(rng.uniform(-0.05, 1.0))
        arrival = now + slack - ttft_slo_s - out * tpot_slo_s
        prompt = int(rng.integers(32, 4096))
        run.append(ReqView(f"d{i}", arrival, prompt, ttft_slo_s, tpot_slo_s, prefilled_tokens=prompt,
                           output_tokens=out, max_new_tokens=out + int(rng.integers(1, 400)),
                           last_token_s=now - float(rng.uniform(0.0, 0.2)), strict=bool(rng.random() < 0.05),
                           first_token_s=arrival + ttft_slo_s - float(rng.uniform(0.0, 1.0))))
    part = int(rng.integers(1000, 8000))
    prefilling = (ReqView("p0", now - 0.5, part, ttft_slo_s, tpot_slo_s, prefilled_tokens=part // 3,
                          max_new_tokens=256),)
    arrivals = np.sort(now - rng.uniform(0.0, 1.5, size=waiting))
    wait = tuple(ReqView(f"w{i}", float(a), int(rng.integers(32, 4096)), ttft_slo_s * (0.5 if s else 1.0),
                         tpot_slo_s, max_new_tokens=int(rng.integers(16, 512)), strict=bool(s))
                 for i, (a, s) in enumerate(zip(arrivals, rng.random(waiting) < 0.05)))
    used = sum(r.context_tokens for r in run) + prefilling[0].context_tokens
    return Snapshot(now=now, running=tuple(run), prefilling=prefilling, waiting=wait,
                    kv_capacity_tokens=used + 200_000, kv_used_tokens=used, cost=cost, recent_iter_s=0.03)


def time_policy(policy, snaps: list[Snapshot], repeat: int) -> tuple[list[float], list[float]]:
    """Per-call planning times in microseconds, wall clock and this thread's CPU time (GC paused while timing).
    On a busy machine the CPU time shows what the call itself costs; the wall time is what the scheduler waits."""
    wall, cpu = [], []
    gc_was = gc.isenabled()
    gc.disable()
    try:
        for _ in range(repeat):
            for s in snaps:
                c0 = time.thread_time_ns()
                t0 = time.perf_counter_ns()
                policy.plan(s)
                t1 = time.perf_counter_ns()
                c1 = time.thread_time_ns()
                wall.append((t1 - t0) / 1000.0)
                cpu.append((c1 - c0) / 1000.0)
    finally:
        if gc_was:
            gc.enable()
    return wall, cpu


def policy_from_spec(spec: str, adapter: bool = False):
    """A policy from a spec as `sim --policy` takes them (`fair@admission=demote-longest`); the adapter bench takes
    registered names only."""
    from ..sim.cli import parse_policy_spec
    name, params = parse_policy_spec(spec)
    if adapter and params:
        raise ValueError("--adapter times registered policies by name, without parameters")
    return make_policy(name, **params)


def run_bench(policies: list[str], running: list[int], waiting: int, repeat: int, snapshots: int,
              cost: CostModel) -> list[dict]:
    rows = []
    for n in running:
        snaps = [bench_snapshot(n, waiting, seed, cost) for seed in range(snapshots)]
        for name in policies:
            pol = policy_from_spec(name)
            time_policy(pol, snaps[:2], 1)  # warm-up
            t, c = time_policy(pol, snaps, repeat)
            rows.append({"policy": name, "running": n, "waiting": waiting,
                         "median_us": round(statistics.median(t), 1),
                         "p90_us": round(float(np.percentile(t, 90)), 1),
                         "median_cpu_us": round(statistics.median(c), 1)})
    return rows


def add_parser(subparsers) -> None:
    p = subparsers.add_parser("plan-bench", help="median planning time per step of each policy (microseconds)")
    p.add_argument("--json", action="store_true",
                   help="print a JSON list of {policy, running, waiting, median_us, p90_us, median_cpu_us}")
    p.add_argument("--policies", nargs="+", default=None,
                   help="policies to time, as specs like fair@admission=demote-longest (default: all registered)")
    p.add_argument("--running", nargs="+", type=int, default=None,
                   help="running-set sizes (default 64 256 1024; with --adapter 256)")
    p.add_argument("--waiting", type=int, default=1000, help="waiting-queue length")
    p.add_argument("--repeat", type=int, default=20,
                   help="passes over the snapshots (with --adapter: timed steps per seeded scheduler)")
    p.add_argument("--snapshots", type=int, default=10,
                   help="distinct seeded snapshots per size (with --adapter: seeded schedulers)")
    p.add_argument("--adapter", action="store_true",
                   help="time the adapter's whole step (snapshot / plan / apply / measure, median and p90 us) on "
                        "stand-in SGLang objects; policies default to fair sarathi slai")
    p.add_argument("--cost-model", default=DEFAULT_COST_PRESET, help="cost-model preset name or JSON path")
    p.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    if args.running is None:
        args.running = [256] if args.adapter else [64, 256, 1024]
    if min(args.running) < 0 or args.waiting < 0 or args.repeat < 1 or args.snapshots < 1:
        raise SystemExit("sglang-fair plan-bench: --running and --waiting must be >= 0, --repeat and --snapshots >= 1")
    for spec in args.policies or ():
        try:
            policy_from_spec(spec, adapter=args.adapter)
        except ValueError as exc:
            raise SystemExit(f"sglang-fair plan-bench: --policies: {spec}: {exc}") from None
    try:
        cost = load_preset(args.cost_model)
    except (OSError, ValueError, KeyError) as exc:
        raise SystemExit(f"sglang-fair plan-bench: --cost-model: {exc}") from None
    if args.adapter:
        from .adapter_bench import DEFAULT_POLICIES, format_table, run_adapter_bench
        rows = run_adapter_bench(args.policies or list(DEFAULT_POLICIES), args.running, args.waiting, args.repeat,
                                 args.snapshots, args.cost_model)
        sys.stdout.write(orjson.dumps(rows).decode() + "\n" if args.json else format_table(rows) + "\n")
        return 0
    policies = args.policies or policy_names()
    rows = run_bench(policies, args.running, args.waiting, args.repeat, args.snapshots, cost)
    if args.json:
        sys.stdout.write(orjson.dumps(rows).decode() + "\n")
    else:
        print(f"{'policy':<10}{'running':>9}{'waiting':>9}{'median_us':>11}{'p90_us':>10}{'median_cpu_us':>15}")
        for r in rows:
            print(f"{r['policy']:<10}{r['running']:>9}{r['waiting']:>9}{r['median_us']:>11.1f}{r['p90_us']:>10.1f}"
                  f"{r['median_cpu_us']:>15.1f}")
    return 0
