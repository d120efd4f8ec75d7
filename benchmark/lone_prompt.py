"""A short prompt alone behind a long decode, live on this machine (docs/results.md, "A prompt alone behind decodes").

Starts `sglang-fair serve --fair-policy POLICY` on the embedded model (CPU defaults, loopback, its own process group),
sends one 100-token request for 300 tokens, and 2 s later an 8-token prompt for 2; prints both latencies. Before the
sixteenth session fair held the short prompt until the long decode finished.

    python benchmark/lone_prompt.py             # fair, about a minute
    python benchmark/lone_prompt.py --policy off
    python benchmark/lone_prompt.py --long-tpot-slo-ms 30   # a TPOT SLO no CPU decode step holds (the long request
    python benchmark/lone_prompt.py --long-tpot-slo-ms 30 --fair-param lost_decode=envelope   # is past saving)
    python benchmark/lone_prompt.py --sim      # the simulator's version: a decode whose TPOT SLO is below its step
    python benchmark/lone_prompt.py --sim --sim-tpot-slo-ms 2   # ... and whose gap bound is below it too
"""

from __future__ import annotations

import argparse
import json
import threading
import time

import numpy as np

from sglang_fair.core.cost_model import CostModel
from sglang_fair.live.compare import generate, prompt_ids
from sglang_fair.live.server import SERVE_COMMAND, cpu_server_args, embedded_model_path, exit_on_sigterm, sglang_server


SIM_COST = CostModel(base_s=0.010, per_prefill_token_s=7.7e-5, per_decode_req_s=5e-5, per_mixed_decode_req_s=0.004)
"""`--sim`'s device: a decode step costs 10.05 ms, a decode row 4 ms more in a prefill forward (test/factories.py's
MIXED_COST; test_policy_fair_lost_decode.py checks they agree)."""
SIM_TPOT_SLO_MS = 8.0
"""`--sim`'s TPOT SLO, below that decode step."""


def simulated(tpot_slo_ms: float = SIM_TPOT_SLO_MS) -> list[dict]:
    """The closed loop of test/unit/test_policy_fair_lost_decode.py: one request decoding 2000 tokens with an 8 ms
    TPOT SLO (`tpot_slo_ms`) on a device whose decode step costs 10.05 ms (and a decode row 4 ms more in a prefill
    forward), a prompt arriving 5 s in; its TTFT under each `lost_decode`."""
    from sglang_fair.core.metrics import tbt_s, ttft_s
    from sglang_fair.policies import make_policy
    from sglang_fair.sim.engine import EngineConfig, simulate
    from sglang_fair.sim.traces import Trace

    rows = []
    for prompt in (38, 2000):
        trace = Trace("lone", np.array([0.0, 5.0]), np.array([100, prompt]), np.array([2000, 4]))
        for lost in ("envelope", "gap"):
            res = simulate(trace, make_policy("fair", lost_decode=lost), SIM_COST,
                           EngineConfig(tpot_slo_ms=tpot_slo_ms, record_token_times=True))
            long, late = res.records
            rows.append({"tpot_slo_ms": tpot_slo_ms, "prompt_tokens": prompt, "lost_decode": lost,
                         "prompt_ttft_s": round(ttft_s(late), 3),
                         "long_max_token_gap_ms": round(float(tbt_s(long).max()) * 1e3, 1),
                         "long_last_token_s": round(long.last_token_s, 3)})
    return rows


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--policy", default="fair")
    ap.add_argument("--long-tokens", type=int, default=300)
    ap.add_argument("--short-prompt", type=int, default=8)
    ap.add_argument("--long-tpot-slo-ms", type=float, default=None,
                    help="the long request's TPOT SLO (default: the server's)")
    ap.add_argument("--fair-param", action="append", default=[], metavar="KEY=VALUE", help="passed to serve")
    ap.add_argument("--sim", action="store_true", help="run the simulator's scenario instead (no server)")
    ap.add_argument("--sim-tpot-slo-ms", type=float, default=SIM_TPOT_SLO_MS,
                    help=f"--sim: the requests' TPOT SLO (default {SIM_TPOT_SLO_MS:g}, below the decode step)")
    args = ap.parse_args()
    if args.sim:
        if not args.sim_tpot_slo_ms > 0:
            ap.error(f"--sim-tpot-slo-ms must be > 0, got {args.sim_tpot_slo_ms}")
        for row in simulated(args.sim_tpot_slo_ms):
            print(json.dumps(row))
        return 0
    exit_on_sigterm()
    extra = [a for kv in args.fair_param for a in ("--fair-param", kv)]
    long_params = None if args.long_tpot_slo_ms is None else {"tpot_slo_ms": args.long_tpot_slo_ms}
    with sglang_server(embedded_model_path(), ["--fair-policy", args.policy, *extra, *cpu_server_args(8192)],
                       command=list(SERVE_COMMAND), startup_timeout_s=600) as srv:
        generate(srv.url, prompt_ids(50, 9), 4)  # warm-up
        out: dict[str, float] = {}

        def long() -> None:
            t = time.monotonic()
            generate(srv.url, prompt_ids(100, 1), args.long_tokens, custom_params=long_params)
            out["long_s"] = time.monotonic() - t

        th = threading.Thread(target=long)
        th.start()
        time.sleep(2.0)
        t = time.monotonic()
        generate(srv.url, prompt_ids(args.short_prompt, 2), 2)
        out["short_s"] = time.monotonic() - t
        th.join()
    print(json.dumps({"policy": args.policy, "fair_params": args.fair_param,
                      "long_tpot_slo_ms": args.long_tpot_slo_ms, "long_request_s": round(out["long_s"], 3),
                      "short_request_s (sent 2 s after the long one)": round(out["short_s"], 3)}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
