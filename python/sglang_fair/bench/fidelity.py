"""Simulator fidelity: replay what a live probe sent (same arrivals at the same rate scale, the prompt lengths
bench_serving really sent, the same output lengths and SLOs) through the simulator with the same policy code and the
cost model the live server fitted from its own iterations; compare P50/P99 TTFT and TPOT.

Error = (sim - live) / live, per metric, per probe; the summary is the median absolute error over a policy's probes.
Both sides are measured alike: a request demoted (live, by the servers; in the replay, by the simulator) counts at
the TTFT it got (the capacity criterion's floor for it, just over its SLO, is a rule, not a measurement).
"""

from __future__ import annotations

import dataclasses

import numpy as np

from ..core.presets import load_preset
from ..policies import make_policy
from ..core.metrics import summarize
from ..sim.cli import parse_policy_spec
from ..sim.engine import EngineConfig, simulate
from ..sim.traces import Trace

METRICS = ("p50_ttft_s", "p99_ttft_s", "p50_tpot_s", "p99_tpot_s")


def replay_trace(trace: Trace, input_lens: list[int], scale: float) -> Trace:
    p = np.asarray(input_lens, dtype=np.int64) if len(input_lens) == len(trace) else trace.prompt_tokens
    return Trace(trace.name, trace.arrival_s / scale, np.maximum(p, 1), trace.output_tokens)


def compare_probe(spec: str, trace: Trace, probe, cost_model_path: str, *, ttft_slo_ms: float, tpot_slo_ms: float,
                  kv_tokens: int, iteration_time=None) -> dict:
    """`iteration_time`: the batch's true time (the emulated device's model); the policy then plans with the
    cost model at `cost_model_path`, as the live server starts."""
    name, params = parse_policy_spec(spec)
    cost = load_preset(cost_model_path)
    engine = EngineConfig(kv_capacity_tokens=kv_tokens, ttft_slo_ms=ttft_slo_ms, tpot_slo_ms=tpot_slo_ms)
    sim = simulate(replay_trace(trace, probe.input_lens, probe.scale), make_policy(name, **params), cost, engine,
                   iteration_time=iteration_time)
    live_s, sim_s = summarize(_as_served(probe.records)), summarize(_as_served(sim.records))
    out = {"scale": probe.scale}
    for m in METRICS:
        lv, sv = getattr(live_s, m), getattr(sim_s, m)
        out[m.replace("_s", "_ms")] = {"live": lv * 1e3, "sim": sv * 1e3,
                                       "rel_err": (sv - lv) / lv if lv > 0 and np.isfinite(lv) else None}
    return out


def _as_served(records) -> list:
    return [dataclasses.replace(r, demoted=False) if r.demoted else r for r in records]


def fidelity(probes: dict, traces: dict, specs: dict, cost_model_path: str, **kw) -> dict:
    """{policy: {workload: {"probes": [...], "median_abs_rel_err": {metric: x}}}} for every live policy that has a
    simulator twin in `specs`; `probes` is Bench.probes ((label, key) -> {scale: Probe})."""
    out: dict = {}
    for (label, key), by_scale in probes.items():
        if label not in specs:
            continue
        trace = traces[key][1]
        rows = [compare_probe(specs[label], trace, p, cost_model_path, **kw)
                for p in by_scale.values() if not p.aborted]
        med = {}
        for m in METRICS:
            errs = [abs(r[m.replace("_s", "_ms")]["rel_err"]) for r in rows
                    if r[m.replace("_s", "_ms")]["rel_err"] is not None]
            med[m.replace("_s", "_ms")] = float(np.median(errs)) if errs else None
        out.setdefault(label, {})[key] = {"probes": rows, "median_abs_rel_err": med}
    return out
