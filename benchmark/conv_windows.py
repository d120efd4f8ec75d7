"""Why fair stops at 0.83-0.87 of the stability bound on Azure conv's first 300 s (docs/results.md, "Ceilings").

The stability bound is a mean: the window's whole work over its whole span. Azure conv's first 300 s start light
(the first minute carries a fraction of the load of the last three), so the mean understates the load that decides
the tail. This script measures it from the trace and the policies' own capacities:

1. the load per 30 s of the unscaled trace, as a fraction of what one device keeps up with at the TPOT SLO (the
   stability bound's own terms: a request's marginal work W over (1 - base / TPOT) device seconds per second);
2. tail capacity of fair and the fixed budgets on the first 300 s, on 60-300 s and on 120-300 s (the same
   arrivals, the light start cut), with each window's stability bound.

    python benchmark/conv_windows.py --out out/conv_windows    # about 5 minutes on one core

Prints a markdown table and writes conv_windows.json to --out.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from sglang_fair.core.presets import load_preset
from sglang_fair.sim.capacity import find_capacity, stability_bound_scale, work_s
from sglang_fair.sim.cli import make_runner
from sglang_fair.sim.engine import EngineConfig
from sglang_fair.sim.traces import load_trace

PRESET = "a100-llama3-8b"
TTFT_MS = 2000.0
END_S = 300.0
STARTS_S = (0.0, 60.0, 120.0)
POLICIES = ("fair", "sarathi-512", "sarathi-2048", "sglang-default")
BIN_S = 30.0
REL_TOL = 0.02


def load_profile(trace, cost, tpot_s: float) -> list[float]:
    """Offered load per BIN_S of arrivals at rate scale 1, as a fraction of the device's rate at the TPOT SLO (each
    request's marginal work, the stability bound's W, over 1 - base / TPOT device seconds per second)."""
    bins = ((trace.arrival_s - trace.arrival_s[0]) // BIN_S).astype(int)
    per_s = np.bincount(bins, weights=work_s(trace, cost)) / BIN_S
    return (per_s / (1.0 - cost.base_s / tpot_s)).tolist()


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--tpot-slo-ms", default="100,200", help="comma-separated TPOT SLOs (ms)")
    args = ap.parse_args(argv)
    cost = load_preset(PRESET)
    out: dict = {"preset": PRESET, "ttft_slo_ms": TTFT_MS, "bin_s": BIN_S, "rel_tol": REL_TOL, "rows": []}
    full = load_trace("azure-conv", duration_s=END_S)
    for tpot_ms in (float(x) for x in args.tpot_slo_ms.split(",")):
        out.setdefault("load_per_bin", {})[f"{tpot_ms:g}"] = load_profile(full, cost, tpot_ms / 1e3)
        for start in STARTS_S:
            trace = load_trace("azure-conv", start_s=start, duration_s=END_S - start)
            engine = EngineConfig(ttft_slo_ms=TTFT_MS, tpot_slo_ms=tpot_ms, seed=0)
            bound = stability_bound_scale(trace, cost, tpot_ms / 1e3)
            row = {"tpot_slo_ms": tpot_ms, "start_s": start, "requests": len(trace), "bound": bound, "capacity": {}}
            for spec in POLICIES:
                res, _ = find_capacity(make_runner(trace, spec, cost, engine), trace, cost, TTFT_MS / 1e3,
                                       tpot_ms / 1e3, rel_tol=REL_TOL)
                row["capacity"][spec] = res.capacity
            out["rows"].append(row)
            print(f"TPOT {tpot_ms:g} ms, {start:g}-{END_S:g} s: bound {bound:.3f}, "
                  + ", ".join(f"{k} {v:.3f}" for k, v in row["capacity"].items()), flush=True)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "conv_windows.json").write_text(json.dumps(out, indent=1))
    print()
    for tpot, loads in out["load_per_bin"].items():
        print(f"load per {BIN_S:g} s at scale 1, TPOT {tpot} ms: " + " ".join(f"{x:.2f}" for x in loads))
    print()
    print("| TPOT SLO | window (s) | requests | stability bound | " + " | ".join(POLICIES) + " | fair / bound |")
    print("|---|---|---|---|" + "---|" * len(POLICIES) + "---|")
    for r in out["rows"]:
        caps = r["capacity"]
        print(f"| {r['tpot_slo_ms']:g} ms | {r['start_s']:g}-{END_S:g} | {r['requests']} | {r['bound']:.3f} | "
              + " | ".join(f"{caps[p]:.3f}" for p in POLICIES) + f" | {caps['fair'] / r['bound']:.2f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
