"""Simulator speed: wall time to replay a whole trace through one replica, per policy (prints figures; no asserts).

    python benchmark/sim_speed.py --trace azure-conv --limit 20000 --rate-scale 1.0
"""

from __future__ import annotations

import argparse
import time

from sglang_fair.core.presets import load_preset
from sglang_fair.sim.cli import make_runner
from sglang_fair.sim.engine import EngineConfig
from sglang_fair.sim.traces import load_trace


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--trace", default="azure-conv")
    ap.add_argument("--limit", type=int, default=20000)
    ap.add_argument("--rate-scale", type=float, default=1.0)
    ap.add_argument("--tpot-slo-ms", type=float, default=100.0)
    ap.add_argument("--policies", default="fair,sarathi-512,sarathi-2048,slai")
    ap.add_argument("--shared", default=None)
    args = ap.parse_args()
    trace = load_trace(args.trace, shared=args.shared, limit=args.limit)
    cost = load_preset("a100-llama3-8b")
    engine = EngineConfig(tpot_slo_ms=args.tpot_slo_ms)
    print(f"{args.trace}: {len(trace)} requests, {int(trace.output_tokens.sum())} output tokens, "
          f"rate scale {args.rate_scale}")
    for spec in args.policies.split(","):
        run = make_runner(trace, spec, cost, engine, stop_late=False)
        t0 = time.perf_counter()
        res = run(args.rate_scale)
        wall = time.perf_counter() - t0
        print(f"{spec:>14}: {wall:6.1f} s wall, {res.iterations} iterations, "
              f"{1e6 * wall / max(1, res.iterations):.0f} us/iteration, {res.sim_s:.0f} s simulated")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
