"""What bounds an emulated quick run (`sglang-fair bench --emulate PRESET:K --quick --out DIR`), from its DIR:

1. the stability bound of the window (sim.capacity.stability_bound_scale: the rate scale past which one device cannot
   keep up with the prompts and outputs at the TPOT SLO, whatever the policy) for the device preset, on the trace's
   own prompt lengths and on the lengths bench_serving sent (results.json's `stability_bound_scale`; for an older
   run without it, recomputed with the sent mean);
2. fair replayed in the simulator on the device model (emulate/device.py) as the true iteration time, planning with
   the preset x K (the prior the live server starts from, as the bench's fidelity replay does) and with the cost
   model the live fair server fitted online (DIR/live-cost-model.json): what the simulator's fixed planning model
   leaves out.

    .venv/bin/python benchmark/emulated_why.py DIR

Figures are emulated GPU milliseconds (dilated / K), on the trace's prompt lengths.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

from sglang_fair.bench.runner import emulated_config
from sglang_fair.core.presets import load_preset
from sglang_fair.emulate.device import DeviceModel
from sglang_fair.emulate.spec import kv_pool_tokens, parse_device_spec
from sglang_fair.policies import make_policy
from sglang_fair.sim.capacity import stability_bound_scale
from sglang_fair.sim.engine import EngineConfig, simulate
from sglang_fair.sim.traces import Trace


def main(out: Path) -> int:
    results = json.loads((out / "results.json").read_text())
    cfg = results["config"]
    spec = parse_device_spec(cfg["emulate"])
    k = spec.dilation
    w = emulated_config(cfg["emulate"]).workloads[0]
    trace = w.build()
    preset = load_preset(spec.preset)
    tpot_s, ttft_s = cfg["tpot_slo_ms"] / 1e3, cfg["ttft_slo_ms"] / 1e3
    sent = results["workloads"][w.trace].get("prompt_tokens_sent_mean")
    print(f"{w.trace}: {len(trace)} requests, prompt mean {trace.prompt_tokens.mean():.0f} (trace), "
          f"{sent:.0f} (sent); output mean {trace.output_tokens.mean():.0f}")
    bound = results["workloads"][w.trace].get("stability_bound_scale")
    if not bound:  # a run from before the bench recorded it: the trace's lengths, and the sent mean's approximately
        bound = {"trace_lengths": stability_bound_scale(trace, preset, tpot_s), "sent_lengths": None}
        if sent:
            scaled = Trace("sent", trace.arrival_s, np.round(trace.prompt_tokens * sent / trace.prompt_tokens.mean())
                           .astype(np.int64), trace.output_tokens)
            bound["sent_lengths"] = stability_bound_scale(scaled, preset, tpot_s)
    print(f"stability bound (rate scale), {spec.preset}, TPOT {tpot_s * 1e3:g} ms: trace lengths "
          f"{bound['trace_lengths']:.3f}" + (f", sent lengths {bound['sent_lengths']:.3f}" if bound["sent_lengths"] else ""))
    dev = DeviceModel(spec)
    eng = EngineConfig(ttft_slo_ms=ttft_s * 1e3 * k, tpot_slo_ms=tpot_s * 1e3 * k, kv_capacity_tokens=kv_pool_tokens())
    planners = {"prior (preset x k)": preset.scaled(k)}
    fit = out / "live-cost-model.json"
    if fit.exists():
        planners["live fit"] = load_preset(str(fit))
    probes = sorted(float(x) for x in results["single"]["fair"][w.trace]["probes"])
    for scale in probes:
        cells = []
        for name, cost in planners.items():
            s = simulate(trace.scaled(scale / k), make_policy("fair"), cost, eng, planning_cost=cost,
                         iteration_time=dev.iteration_s).summary()
            cells.append(f"{name}: P99 TTFT {s.p99_ttft_s / k * 1e3:.0f} ms, P99 TPOT {s.p99_tpot_s / k * 1e3:.1f} ms, "
                         f"attainment {s.attainment:.3f}")
        print(f"fair x{scale:g} in the simulator | " + " | ".join(cells))
    return 0


if __name__ == "__main__":
    if len(sys.argv) != 2:
        raise SystemExit("usage: benchmark/emulated_why.py BENCH_OUT_DIR")
    raise SystemExit(main(Path(sys.argv[1])))
