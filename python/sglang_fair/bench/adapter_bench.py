"""`sglang-fair plan-bench --adapter`: the adapter's whole per-step cost inside SGLang's scheduler, by part.

Each step runs what the scheduler hooks run, on stand-in SGLang objects (bench/fake_sched.py) holding a loaded
instance (default 256 running, 1000 waiting):
- `rejoin` (start of get_next_batch_to_run: parked rows merge back),
- `PolicyAdapter.form_prefill` (grammar poll, prefix matching, snapshot, plan, plan check, parking, prefill knobs,
  SGLang's own get_new_batch_prefill - a stand-in that admits the narrowed queue, its time excluded as the adapter
  excludes it from its own overhead - and restoring the waiting queue),
- `on_run_batch` / `on_result` around the forward (cost features, token times, online cost fit).
Parts: snapshot = `PolicyAdapter.snapshot` (of which running_views / waiting_views: the snapshot builder's two view
passes), plan = `policy.plan`, apply = the rest of rejoin + form_prefill,
measure = on_run_batch + on_result; cpu = this thread's CPU time over snapshot + plan + apply (leaves out the time
the thread was descheduled on a busy machine). Between steps (not timed) the decoded rows get a token and admitted
requests are replaced by new arrivals, so the sizes stay put. Each seed is a fresh scheduler and adapter run for
`steps` steps (the first `WARMUP_STEPS` not counted); GC is paused while a step is timed, as in plan-bench.
"""

from __future__ import annotations

import gc
import statistics
import time
from types import SimpleNamespace

import numpy as np

from ..config import RuntimeConfig, SloConfig
from ..engine.adapter import PolicyAdapter
from ..policies import make_policy
from .fake_sched import EXTEND, MIXED, FakeBatch, LoadShape, loaded_scheduler, waiting_req

PARTS = ("snapshot", "plan", "apply", "measure")
SNAPSHOT_PARTS = ("running_views", "waiting_views")
"""Parts of the snapshot reported besides the four: the builder's running views and the waiting mirror's update."""
WARMUP_STEPS = 2
DEFAULT_POLICIES = ("fair", "sarathi", "slai")


class _Timed:
    """Wraps the adapter's snapshot and its policy's plan, summing their wall time per step (ns)."""

    def __init__(self, adapter: PolicyAdapter) -> None:
        self.snapshot_ns = self.plan_ns = self.original_ns = 0
        self.sub_ns = dict.fromkeys(SNAPSHOT_PARTS, 0)
        self.predicted_s = 0.0
        inner_snapshot, inner_plan = adapter.snapshot, adapter.policy.plan
        builder = adapter.builder
        for part, (obj, method) in zip(SNAPSHOT_PARTS, ((builder, "_running_views"), (builder.waiting, "update"))):
            setattr(obj, method, self._timed_part(part, getattr(obj, method)))

        def snapshot(*args, **kwargs):
            t0 = time.perf_counter_ns()
            snap = inner_snapshot(*args, **kwargs)
            self.snapshot_ns += time.perf_counter_ns() - t0
            return snap

        def plan(snap):
            t0 = time.perf_counter_ns()
            p = inner_plan(snap)
            self.plan_ns += time.perf_counter_ns() - t0
            self.predicted_s = p.predicted_s
            self.counts["decode_rows_planned"] += len(p.decode)
            return p

        adapter.snapshot = snapshot
        adapter.policy = SimpleNamespace(plan=plan)
        self.counts = {"prefill_calls": 0, "admitted_reqs": 0, "decode_rows_planned": 0}

    def _timed_part(self, part: str, inner):
        def timed(*args, **kwargs):
            t0 = time.perf_counter_ns()
            out = inner(*args, **kwargs)
            self.sub_ns[part] += time.perf_counter_ns() - t0
            return out
        return timed

    def original(self, sched, running_batch):
        """SGLang's get_new_batch_prefill as the stand-in: admits the whole (narrowed) waiting queue."""
        t0 = time.perf_counter_ns()
        admitted, sched.waiting_queue = sched.waiting_queue, []
        self.counts["prefill_calls"] += 1
        self.counts["admitted_reqs"] += len(admitted)
        mode = MIXED if sched.is_mixed_chunk and running_batch.reqs else EXTEND
        batch = FakeBatch(admitted, mode) if admitted else None
        out = SimpleNamespace(batch_to_run=batch, running_batch=running_batch)
        self.original_ns += time.perf_counter_ns() - t0
        return out

    def reset(self) -> None:
        self.snapshot_ns = self.plan_ns = self.original_ns = 0
        self.sub_ns = dict.fromkeys(SNAPSHOT_PARTS, 0)


def _step(ad: PolicyAdapter, timed: _Timed, sched, rng: np.random.Generator, shape: LoadShape,
          seq: list[int]) -> dict[str, float]:
    """One scheduler iteration; returns its parts in microseconds and the plan's predicted iteration (ms)."""
    timed.reset()
    c0 = time.thread_time_ns()
    t0 = time.perf_counter_ns()
    sched.running_batch = ad.rejoin(sched.running_batch)
    result = ad.form_prefill(timed.original, sched, sched.running_batch)
    t1 = time.perf_counter_ns()
    c1 = time.thread_time_ns()
    batch = result.batch_to_run if result.batch_to_run is not None else result.running_batch
    tf = time.perf_counter()
    decoded = result.running_batch.reqs
    t2 = time.perf_counter_ns()
    ad.on_run_batch(batch, tf, tf + timed.predicted_s)
    t3 = time.perf_counter_ns()
    for r in decoded:  # the result of the forward (not timed)
        r.output_ids.append(7)
        r.time_stats.last_decode_finish_time = tf + timed.predicted_s
    t4 = time.perf_counter_ns()
    ad.on_result(tf + timed.predicted_s)
    t5 = time.perf_counter_ns()
    missing = shape.waiting - len(sched.waiting_queue)
    for _ in range(missing):  # admitted requests are replaced by new arrivals (not timed)
        seq[0] += 1
        sched.waiting_queue.append(waiting_req(f"n{seq[0]}", rng, time.perf_counter(), shape))
    sched.running_batch = result.running_batch
    apply_ns = (t1 - t0) - timed.snapshot_ns - timed.plan_ns - timed.original_ns
    return {"snapshot": timed.snapshot_ns / 1e3, "plan": timed.plan_ns / 1e3, "apply": apply_ns / 1e3,
            "measure": ((t3 - t2) + (t5 - t4)) / 1e3, "predicted_ms": timed.predicted_s * 1e3,
            **{part: ns / 1e3 for part, ns in timed.sub_ns.items()},
            "cpu": (c1 - c0 - timed.original_ns) / 1e3}


def bench_policy(policy: str, shape: LoadShape, *, seeds: int, steps: int, cost_model: str) -> dict:
    """Per-step parts of `policy` over `seeds` fresh schedulers x `steps` steps, and what the adapter applied."""
    samples: list[dict[str, float]] = []
    applied = {"planned_steps": 0, "stock_steps": 0, "prefill_calls": 0, "admitted_reqs": 0, "parked_rows": 0,
               "decode_rows_planned": 0, "faults": {}}
    cfg = RuntimeConfig(policy=policy, slo=SloConfig(ttft_slo_ms=shape.ttft_slo_s * 1e3,
                                                     tpot_slo_ms=shape.tpot_slo_s * 1e3), cost_model=cost_model)
    for seed in range(seeds):
        sched = loaded_scheduler(shape, seed, time.perf_counter())
        ad = PolicyAdapter(sched, cfg, make_policy(policy))
        timed = _Timed(ad)
        rng = np.random.default_rng(10_000 + seed)
        seq = [0]
        gc.collect()
        gc_was = gc.isenabled()
        gc.disable()
        try:
            for i in range(WARMUP_STEPS + steps):
                s = _step(ad, timed, sched, rng, shape, seq)
                if i >= WARMUP_STEPS:
                    samples.append(s)
        finally:
            if gc_was:
                gc.enable()
        applied["planned_steps"] += ad.planned_iterations
        applied["stock_steps"] += ad.stock_iterations
        for k in ("prefill_calls", "admitted_reqs", "decode_rows_planned"):
            applied[k] += timed.counts[k]
        applied["parked_rows"] += ad.parking.total_parked
        for k, v in ad.faults.items():
            applied["faults"][k] = applied["faults"].get(k, 0) + v
    return _summary(policy, shape, samples, applied)


def _pct(xs: list[float], q: float) -> float:
    return round(float(np.percentile(xs, q)), 1)


def _summary(policy: str, shape: LoadShape, samples: list[dict[str, float]], applied: dict) -> dict:
    row: dict = {"policy": policy, "running": shape.running, "waiting": shape.waiting, "steps": len(samples)}
    totals = [sum(s[p] for p in PARTS) for s in samples]
    core = [s["snapshot"] + s["plan"] + s["apply"] for s in samples]
    for name in (*PARTS, *SNAPSHOT_PARTS):
        xs = [s[name] for s in samples]
        row[f"{name}_median_us"] = round(statistics.median(xs), 1)
        row[f"{name}_p90_us"] = _pct(xs, 90)
    row["snapshot_plan_apply_median_us"] = round(statistics.median(core), 1)
    row["snapshot_plan_apply_p90_us"] = _pct(core, 90)
    row["snapshot_plan_apply_median_cpu_us"] = round(statistics.median(s["cpu"] for s in samples), 1)
    row["total_median_us"] = round(statistics.median(totals), 1)
    row["total_p90_us"] = _pct(totals, 90)
    predicted = statistics.median(s["predicted_ms"] for s in samples)
    row["predicted_iteration_median_ms"] = round(predicted, 2)
    row["overhead_share_pct"] = round(100.0 * row["total_median_us"] / 1e3 / predicted, 3) if predicted > 0 else None
    row["applied"] = applied
    return row


def run_adapter_bench(policies: list[str], running: list[int], waiting: int, steps: int, seeds: int,
                      cost_model: str) -> list[dict]:
    return [bench_policy(p, LoadShape(running=n, waiting=waiting), seeds=seeds, steps=steps, cost_model=cost_model)
            for n in running for p in policies]


def format_table(rows: list[dict]) -> str:
    head = f"{'policy':<10}{'running':>8}{'waiting':>8}" + "".join(f"{p + ' med/p90 us':>24}" for p in PARTS)
    head += f"{'s+p+a med/p90 us':>20}{'cpu us':>9}{'total med us':>14}{'iter ms':>9}{'share %':>9}"
    head += f"{'views run/wait med us':>23}"
    lines = [head]
    for r in rows:
        line = f"{r['policy']:<10}{r['running']:>8}{r['waiting']:>8}"
        line += "".join(f"{r[p + '_median_us']:>15.1f}/{r[p + '_p90_us']:<8.1f}" for p in PARTS)
        line += f"{r['snapshot_plan_apply_median_us']:>11.1f}/{r['snapshot_plan_apply_p90_us']:<8.1f}"
        line += f"{r['snapshot_plan_apply_median_cpu_us']:>9.1f}{r['total_median_us']:>14.1f}"
        line += f"{r['predicted_iteration_median_ms']:>9.2f}"
        line += f"{r['overhead_share_pct'] if r['overhead_share_pct'] is not None else float('nan'):>9.3f}"
        line += f"{r['running_views_median_us']:>15.1f}/{r['waiting_views_median_us']:<7.1f}"
        lines.append(line)
    return "\n".join(lines)
