"""Two fair servers behind sglang-router (the bench's cluster setup, `Bench.cluster`: one core and one torch thread
each, power_of_two on /get_load): replay the bench's Azure code window at the given rate scales, one after the other,
and print after the warm-up and after each probe what each server's cost model has learned (status `cost_model`,
`cost_headroom`). It shows how far a cost model fitted on a two-thread server is from a one-thread server's.

    .venv/bin/python benchmark/cluster_fit.py --scales 0.25,0.25,0.5 [--cost-model live-cost-model.json]
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from sglang_fair.bench.runner import Bench, full_config
from sglang_fair.live.server import exit_on_sigterm, requests_served
from sglang_fair.core.metrics import summarize
from sglang_fair.data.model import make_model


def learned(srv) -> str:
    r = srv.get("/sglang_fair/status", timeout=10).json()["ranks"][0]
    cm = r["cost_model"]
    return (f"prefill {cm['per_prefill_token_s'] * 1e3:.2f} ms/token, "
            f"decode row {cm['per_decode_req_s'] * 1e3:.1f} ms, mixed row {cm['per_mixed_decode_req_s'] * 1e3:.1f} ms, "
            f"base {cm['base_s'] * 1e3:.1f} ms, headroom {r['cost_headroom']:.2f}, "
            f"{r['measured_iterations']} iterations")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--scales", default="0.25,0.25,0.5", help="rate scales, probed in this order")
    ap.add_argument("--cost-model", default="cpu-tiny-llama", help="starting cost model: preset name or JSON path")
    args = ap.parse_args()
    scales = [float(x) for x in args.scales.split(",")]
    exit_on_sigterm()
    bench = Bench(full_config(), Path(tempfile.mkdtemp(prefix="sglang-fair-cluster-")), str(make_model()))
    bench.prepare()
    key = bench.config.workloads[0].trace
    with bench.cluster(bench.cluster_args("fair", cost_model=args.cost_model), "power_of_two") as (router, servers):
        a, b = servers
        urls = [a.url, b.url]
        print(f"after warm-up\n  A: {learned(a)}\n  B: {learned(b)}", flush=True)
        for x in scales:
            s = summarize(bench._probe(router.url, key, x, abort_urls=urls).records)
            print(f"x{x:g}: P99 TTFT {s.p99_ttft_s * 1e3:.0f} ms, P99 TPOT {s.p99_tpot_s * 1e3:.0f} ms, attainment "
                  f"{s.attainment:.2f}, served {requests_served(a.url):.0f} / {requests_served(b.url):.0f}\n"
                  f"  A: {learned(a)}\n  B: {learned(b)}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
