"""Where the emulated device's per-token cost is lowest, and which batch sizes the policies run there
(docs/results.md, "Batch sizes on the device model").

The emulated device (emulate/device.py: Vidur's operator profiles, interpolated per operator) is not linear in a
batch's tokens, while every planner's cost model is (core/cost_model.py). This script measures what that means:

1. the device model's time per prompt token of a prefill-only batch, by size, against the planner's preset;
2. at one rate scale per window (TPOT 100 ms, the device model as the true iteration time, the policies planning
   with the online fit as `serve` does), each policy's batches: prompt tokens per batch that has prefill (P50 /
   P90), device ms per prompt token in those batches (their whole time over their prompt tokens), device-busy
   seconds, attainment and demoted requests;
3. with `--caps`: tail and 90%-attainment capacity of `fair` whose plans are cut to at most N prompt tokens per
   batch (a wrapper here, not a policy parameter: an experiment on the planner's linearity, not a product setting).

    python benchmark/device_shapes.py --out out/device_shapes                    # parts 1-2, about 4 minutes
    python benchmark/device_shapes.py --out out/device_shapes --caps 512,1024   # + part 3, about 40 minutes
    python benchmark/device_shapes.py --out out/device_shapes_1024 --caps 1024 --no-shapes   # part 3 alone
    python benchmark/device_shapes.py --out out/device_curve --no-shapes --sizes 256,320,384,448,480,512,544,576
                                                                                 # part 1 alone, at other sizes

Prints markdown tables and writes device_shapes.json to --out.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path

import numpy as np

from sglang_fair.core.presets import load_preset
from sglang_fair.policies import make_policy
from sglang_fair.sim.capacity import find_capacity, late_limit
from sglang_fair.sim.cli import device_iteration_time, make_runner
from sglang_fair.sim.engine import EngineConfig, simulate
from sglang_fair.sim.traces import load_trace

PRESET = "a100-llama3-8b"
WINDOWS = {"azure-code": {"duration_s": 600.0}, "azure-conv": {"duration_s": 300.0}, "sharegpt": {"limit": 1000}}
SHAPE_SCALES = {"azure-code": 0.25, "azure-conv": 1.118, "sharegpt": 1.268}
"""Part 2's rate scales: fair's tail capacity on the device model with the online fit (docs/results.md, "The
simulator's sweep on the emulated device's model") on conv and ShareGPT; on Azure code, where bursts decide, a
load where the 90%-attainment capacities differ (fair 0.202, slai 0.325 there)."""
POLICIES = ("fair", "fair@demote_max_wait_ttft=inf", "slai", "sarathi-512", "sarathi-2048")
SIZES = (64, 128, 256, 384, 512, 768, 1024, 1536, 2048, 4096, 8192)
REL_TOL = 0.06


class CappedPolicy:
    """`policy` with each plan's prefill cut to at most `cap` prompt tokens (chunks in plan order, the last one
    shortened)."""

    def __init__(self, policy, cap: int) -> None:
        if cap < 1:
            raise ValueError(f"cap must be >= 1, got {cap}")
        self.policy, self.cap = policy, cap

    @property
    def name(self) -> str:
        return f"{self.policy.name}[cap {self.cap}]"

    def plan(self, snap):
        plan = self.policy.plan(snap)
        if plan.prefill_tokens <= self.cap:
            return plan
        left, kept = self.cap, []
        for rid, n in plan.prefill:
            if left <= 0:
                break
            kept.append((rid, min(n, left)))
            left -= n
        return dataclasses.replace(plan, prefill=tuple(kept))


class Recorder:
    """The device's iteration time, recording (prompt tokens, decode rows, seconds) of every batch."""

    def __init__(self, iteration_time) -> None:
        self.iteration_time, self.rows = iteration_time, []

    def __call__(self, prefills, decode_contexts) -> float:
        s = self.iteration_time(prefills, decode_contexts)
        self.rows.append((sum(c for c, _ in prefills), len(decode_contexts), s))
        return s


def device_curve(dev, cost, sizes=SIZES) -> list[dict]:
    return [{"tokens": n, "device_ms": dev([(n, 0)]) * 1e3, "preset_ms": cost.predict([(n, 0)]) * 1e3}
            for n in sizes]


def shapes(trace, policy: str, scale: float, dev, cost, engine: EngineConfig) -> dict:
    rec = Recorder(dev)
    res = make_runner(trace, policy, cost, engine, stop_late=False, iteration_time=rec)(scale)
    a = np.array(rec.rows)
    pf = a[a[:, 0] > 0]
    summary = res.summary()
    return {"policy": policy, "scale": scale, "batches": len(a), "prefill_batches": len(pf),
            "prefill_tokens_p50": float(np.percentile(pf[:, 0], 50)),
            "prefill_tokens_p90": float(np.percentile(pf[:, 0], 90)),
            "ms_per_prompt_token": float(1e3 * pf[:, 2].sum() / pf[:, 0].sum()),
            "busy_s": float(a[:, 2].sum()), "attainment": summary.attainment, "demoted": summary.demoted}


def capped_capacity(trace, cap: int, tpot_ms: float, dev, cost, engine: EngineConfig) -> dict:
    eng = dataclasses.replace(engine, tpot_slo_ms=tpot_ms)
    limit = late_limit(len(trace))

    def run(scale):
        return simulate(trace.scaled(scale), CappedPolicy(make_policy("fair"), cap), cost, eng,
                        stop_after_late=limit, iteration_time=dev)
    res, _ = find_capacity(run, trace, cost, eng.ttft_slo_ms / 1e3, tpot_ms / 1e3, rel_tol=REL_TOL)
    return {"cap": cap, "tpot_slo_ms": tpot_ms, "capacity": res.capacity,
            "capacity_attainment": res.capacity_attainment}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default="out/device_shapes")
    ap.add_argument("--device", default=PRESET)
    ap.add_argument("--caps", default="", help="comma-separated prompt-token caps for part 3 (empty: skip it)")
    ap.add_argument("--no-shapes", action="store_true", help="skip part 2")
    ap.add_argument("--sizes", default="", help="comma-separated batch sizes for part 1 (default: %s)"
                    % ",".join(map(str, SIZES)))
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    cost = load_preset(PRESET)
    dev = device_iteration_time(args.device)
    engine = EngineConfig(online_fit=True)
    try:
        sizes = tuple(int(x) for x in args.sizes.split(",")) if args.sizes else SIZES
    except ValueError:
        raise SystemExit(f"device_shapes.py: --sizes takes comma-separated token counts, got {args.sizes!r}")
    if any(n < 1 for n in sizes):
        raise SystemExit(f"device_shapes.py: --sizes must be >= 1, got {args.sizes!r}")
    result = {"device": args.device, "preset": PRESET, "online_fit": True,
              "curve": device_curve(dev, cost, sizes)}

    print(f"Prefill-only batch of N prompt tokens (no prefix): device {args.device} vs planner preset {PRESET}\n")
    print("| tokens | device ms | preset ms | device / preset | device ms per token |")
    print("|---|---|---|---|---|")
    for c in result["curve"]:
        print(f"| {c['tokens']} | {c['device_ms']:.1f} | {c['preset_ms']:.1f} | {c['device_ms'] / c['preset_ms']:.3f} "
              f"| {c['device_ms'] / c['tokens']:.4f} |")

    traces = {name: load_trace(name, **kw) for name, kw in WINDOWS.items()}
    result["shapes"] = []
    if not args.no_shapes:
        print("\n| trace | scale | policy | prompt tokens per prefill batch P50 / P90 | device ms per prompt token "
              "| device busy s | attainment | demoted |")
        print("|---|---|---|---|---|---|---|---|")
        for name, trace in traces.items():
            for policy in POLICIES:
                s = shapes(trace, policy, SHAPE_SCALES[name], dev, cost, engine)
                result["shapes"].append({"trace": name, **s})
                print(f"| {name} | {s['scale']} | {policy} | {s['prefill_tokens_p50']:.0f} / "
                      f"{s['prefill_tokens_p90']:.0f} | {s['ms_per_prompt_token']:.4f} | {s['busy_s']:.1f} "
                      f"| {s['attainment']:.3f} | {s['demoted']} |", flush=True)

    caps = [int(x) for x in args.caps.split(",") if x]
    result["caps"] = []
    if caps:
        print("\n| trace | TPOT SLO | fair, prompt tokens per batch capped at | tail capacity | 90% att. capacity |")
        print("|---|---|---|---|---|")
    for cap in caps:
        for name, trace in traces.items():
            for tpot_ms in (100.0, 200.0):
                c = capped_capacity(trace, cap, tpot_ms, dev, cost, engine)
                result["caps"].append({"trace": name, **c})
                print(f"| {name} | {tpot_ms:.0f} ms | {cap} | {c['capacity']:.3f} | {c['capacity_attainment']:.3f} |",
                      flush=True)
    (out / "device_shapes.json").write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
