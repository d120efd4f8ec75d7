"""Two fair servers behind sglang-router (the bench's cluster setup: one core and one torch thread each,
power_of_two on /get_load): replay the bench's Azure code window at the given rate scales, one after the other, and
print after the warm-up and after each probe what each server's cost model has learned (status `cost_model`,
`cost_headroom`). It shows how far a cost model fitted on a two-thread server is from a one-thread server's.

    .venv/bin/python benchmark/cluster_fit.py --scales 0.25,0.25,0.5 [--cost-model live-cost-model.json]
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from sglang_fair.bench.policies import policy_args
from sglang_fair.bench.runner import NO_CACHE, SERVE, Bench, full_config
from sglang_fair.live.server import (cpu_server_args, exit_on_sigterm, requests_served, server_slots, sglang_router,
                                     sglang_server)
from sglang_fair.metrics import summarize
from sglang_fair.model import make_model

def learned(srv) -> str:
    r = srv.get("/sglang_fair/status", timeout=10).json()["ranks"][0]
    cm = r["cost_model"]
    return (f"prefill {cm['per_prefill_token_s'] * 1e3:.2f} ms/token, "
            f"decode row {cm['per_decode_req_s'] * 1e3:.1f} ms, mixed row {cm['per_mixed_decode_req_s'] * 1e3:.1f} ms, base {cm['base_s'] * 1e3:.1f} ms, "
            f"headroom {r['cost_headroom']:.2f}, {r['measured_iterations']} iterations")

def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--scales", default="0.25,0.25,0.5", help="rate scales, probed in this order")
    ap.add_argument("--cost-model", default=None, help="starting cost model (default: the CPU preset)")
    args = ap.parse_args()
    scales = [float(x) for x in args.scales.split(",")]
    exit_on_sigterm()
    cfg, model = full_config(), str(make_model())
    bench = Bench(cfg, Path(tempfile.mkdtemp(prefix="sglang-fair-cluster-")), model)
    bench.prepare()
    key = cfg.workloads[0].trace
    server = policy_args("fair", ttft_slo_ms=cfg.ttft_slo_ms, tpot_slo_ms=cfg.tpot_slo_ms, cost_model=args.cost_model)
    server += ["--enable-metrics", *NO_CACHE, *cpu_server_args(cfg.kv_tokens, float32=True)]
    env = {"OMP_NUM_THREADS": "1"}
    with server_slots(2), \
            sglang_server(model, server, command=["taskset", "-c", "0", *SERVE], env=env, startup_timeout_s=600) as a, \
            sglang_server(model, server, command=["taskset", "-c", "1", *SERVE], env=env, startup_timeout_s=600) as b, \
            sglang_router([a.url, b.url], "power_of_two", load_poll_s=1) as router:
        urls = [a.url, b.url]
        bench._warm_up(router.url, abort_urls=urls)
        print(f"after warm-up\n  A: {learned(a)}\n  B: {learned(b)}", flush=True)
        for x in scales:
            s = summarize(bench._probe(router.url, key, x, abort_urls=urls).records)
            print(f"x{x:g}: P99 TTFT {s.p99_ttft_s * 1e3:.0f} ms, P99 TPOT {s.p99_tpot_s * 1e3:.0f} ms, attainment "
                  f"{s.attainment:.2f}, served {requests_served(a.url):.0f} / {requests_served(b.url):.0f}\n"
                  f"  A: {learned(a)}\n  B: {learned(b)}", flush=True)
    return 0

if __name__ == "__main__":
    raise SystemExit(main())
