"""Where the TTFT of a two-server emulated run goes, and which part the simulator misses.

Input: the OUT folder of a traced two-server run on the emulated device (EMULATED figures), e.g.

    sglang-fair bench --emulate a100-llama3-8b:6 --quick --policies none --cluster fair/cache_aware --trace \\
        --json --out out/emu15t
    python benchmark/cluster_fidelity.py out/emu15t

It needs, per probe, the client's per-request record (`requests` in results.json: prompt sent, when it was due, the
TTFT bench_serving measured) and both servers' `--fair-trace` files with their `first_token` records (rid, when the
scheduler received the request, its prompt and max_new_tokens, when its first token was processed). Each server
record is matched to the client's request with the same prompt length (up to a constant tokenizer offset) due
nearest before it was received, which places every request: its server, due (client), received (scheduler), first
token (scheduler), first text (client).

Then, per probe, the simulator (the same policy code, planning with the preset x k as the live server starts, the
emulated device's model as the true iteration time, SLOs x k) replays:
- A: the whole probe through the simulator's own router (what `sglang-fair capacity --replicas 2` models);
- B: each server's share as the live router split it, each request arriving when it was due;
- C: each server's share arriving when its scheduler received it.
So A vs B is the routing, B vs C what happens between the client's send and the scheduler's receipt (router,
HTTP, tokenizer), C vs the scheduler's own TTFT the scheduler, and client vs scheduler TTFT the way back
(detokenizer, HTTP, router). Every time printed is emulated GPU milliseconds (server clock / k).

The clock zero of bench_serving's replay is not recorded (it starts after the probe's wall-clock start, once its
prompts are built), so delivery delays are given relative to the fastest request of the probe: "delivery" = (received
- due) - min over the probe's requests. The replays B and C use the same zero.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np

from sglang_fair.bench.emulated import EMULATED_SIM_SPECS
from sglang_fair.bench.emulated_report import dilated_sim_spec
from sglang_fair.bench.trace_report import read_trace, wall_offset_s
from sglang_fair.emulate.device import DeviceModel
from sglang_fair.emulate.serve_args import EmulatedServe
from sglang_fair.emulate.spec import kv_pool_tokens, parse_device_spec
from sglang_fair.core.metrics import summarize
from sglang_fair.core.presets import load_preset
from sglang_fair.policies import make_policy
from sglang_fair.sim.cli import parse_policy_spec
from sglang_fair.sim.cluster import ClusterConfig, simulate_cluster
from sglang_fair.sim.engine import EngineConfig, simulate
from sglang_fair.sim.traces import Trace, load_mooncake, write_mooncake

def server_records(recs: dict) -> tuple[list[dict], float]:
    """A server trace's (`read_trace`) first_token records and its clock offset (wall = t + offset)."""
    return recs.get("first_token", []), wall_offset_s(recs)


def match(client: dict, servers: list[list[dict]]) -> list[dict]:
    """One row per matched request: server, due_s, recv_s (both relative to the probe's wall-clock start),
    client_ttft_s, server_ttft_s, prompt, outputs. Prompt lengths may differ by a constant (the server counts the
    tokens it received, bench_serving the ones it generated)."""
    lens, due, ttft = client["input_lens"], client["due_s"], client["ttft_ms"]
    diffs = Counter(r["prompt_tokens"] - n for recs in servers for r in recs[:50] for n in lens)
    offset = diffs.most_common(1)[0][0]
    free: dict[int, list[int]] = defaultdict(list)
    for i in np.argsort(due, kind="stable"):
        free[lens[i] + offset].append(int(i))
    rows = []
    received = sorted(((r["recv_rel_s"], k, r) for k, recs in enumerate(servers) for r in recs), key=lambda x: x[:2])
    for _, k, r in received:  # both servers in the order their schedulers received the requests
        cands = free.get(r["prompt_tokens"])
        if cands:
            i = cands.pop(0)  # equal prompts: the one due first was received first (FIFO per length)
            rows.append({"server": k, "i": i, "due_s": due[i], "recv_s": r["recv_rel_s"],
                         "client_ttft_s": None if ttft[i] is None else ttft[i] / 1e3,
                         "server_ttft_s": r["t_s"] - r["recv_s"], "prompt": r["prompt_tokens"],
                         "outputs": r["max_new_tokens"]})
    return rows


def pct(a, q) -> float:
    a = np.asarray([x for x in a if x is not None], dtype=float)
    return float(np.percentile(a, q)) if a.size else float("nan")


def replay(rows: list[dict], when: str, spec: str, cost, engine, device, k: float, router: str | None,
           poll_s: float = 0.0) -> dict:
    """P50/P99 TTFT per server and P50/P99 TTFT and TPOT over both (emulated ms) of the requests in `rows` replayed
    with arrivals at `when` ("due" or "recv"): through the simulator's `router` (polling every `poll_s`, server
    clock), or with `router` None each server's share on its own replica."""
    name, params = parse_policy_spec(spec)
    out = {}
    groups = {"all": rows} if router else {s: [r for r in rows if r["server"] == s] for s in (0, 1)}
    records = []
    for key, rs in groups.items():
        rs = sorted(rs, key=lambda r: r[f"{when}_s"])
        t = Trace("replay", np.array([r[f"{when}_s"] for r in rs]), np.array([r["prompt"] for r in rs]),
                  np.array([max(r["outputs"], 1) for r in rs]))
        if router:
            res = simulate_cluster(t, lambda: make_policy(name, **params), cost, engine,
                                   ClusterConfig(replicas=2, router=router, load_poll_interval_s=poll_s),
                                   iteration_time=device)
        else:
            res = simulate(t, make_policy(name, **params), cost, engine, iteration_time=device)
        got = [(r.first_token_s - r.arrival_s) for r in res.records if r.first_token_s is not None]
        out[f"server {key}"] = (pct(got, 50) * 1e3 / k, pct(got, 99) * 1e3 / k)
        records += res.records
    s = summarize([dataclasses.replace(r, demoted=False) for r in records])  # demoted: at the TTFT they got
    out["both"] = (s.p50_ttft_s * 1e3 / k, s.p99_ttft_s * 1e3 / k)
    out["both_tpot"] = (s.p50_tpot_s * 1e3 / k, s.p99_tpot_s * 1e3 / k)
    return out


def device_over_preset(traces: list[dict], preset: str) -> dict:
    """The emulated device's model against the planner preset on the batches the servers ran (the `forward` records
    of their traces, as `read_trace` gives them; forwards with more than 16 prefill chunks, whose chunk list the trace cuts, left out): the sum of
    device times over the sum of preset times, per batch shape. Decode rows at their mean context, as the device
    model prices them."""
    model, cost = DeviceModel(parse_device_spec(preset)), load_preset(preset)
    dev, pre = Counter(), Counter()
    for recs in traces:
        for f in recs.get("forward", []):
            if f["n_prefill"] > len(f["prefills"]):
                continue
            n, pf = f["n_decode"], [tuple(p) for p in f["prefills"]]
            rows = [f["decode_ctx"] / n] * n if n else []
            shape = "decode-only" if not pf else "mixed" if n else "prefill-only"
            dev[shape] += model.undilated_ms(pf, [int(round(x)) for x in rows])
            pre[shape] += cost.predict(pf, rows) * 1e3
    return {shape: dev[shape] / pre[shape] for shape in dev if pre[shape] > 0}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("out", help="OUT folder of a traced two-server emulated bench run")
    ap.add_argument("--spec", default=None, metavar="POLICY_SPEC",
                    help="the simulator twin of the servers' policy (default: today's, e.g. `fair`); a run made "
                         "before a default changed needs that version's spec, e.g. fair@tpot_margin=0 for runs "
                         "before the fifteenth session. Its time parameters are dilated as the server's were")
    args = ap.parse_args(argv)
    out = Path(args.out)
    results = json.loads((out / "results.json").read_text())
    cfg = results["config"]
    dev = parse_device_spec(cfg["emulate"])
    k = dev.dilation
    device = DeviceModel(dev).iteration_s
    prior = load_preset(EmulatedServe(dev).with_planner_prior([], out)[-1])
    engine = EngineConfig(kv_capacity_tokens=kv_pool_tokens(), ttft_slo_ms=cfg["ttft_slo_ms"] * k,
                          tpot_slo_ms=cfg["tpot_slo_ms"] * k)
    report = {}
    for label, run in results["cluster"].items():
        server, router = run["server_policy"], run["router_policy"]
        paths = [out / f"trace-2x{server}-{router}-{i}.jsonl" for i in (0, 1)]
        if not all(p.exists() for p in paths):
            print(f"{label}: no server traces (run bench with --trace)", file=sys.stderr)
            continue
        traces = [read_trace(p) for p in paths]
        traced = [server_records(t) for t in traces]
        ratio = device_over_preset(traces, dev.preset)
        report[f"{label} device_over_preset"] = ratio
        print(f"{label}: emulated device model / {dev.preset} preset on the batches the servers ran: "
              + ", ".join(f"{shape} {x:.3f}" for shape, x in sorted(ratio.items())))
        window = load_mooncake(out / "traces" / f"{run['workload']}.jsonl")  # the window bench_serving replayed
        for scale, probe in sorted(run["probes"].items(), key=lambda x: float(x[0])):
            client = probe.get("requests")
            if not client:
                print(f"{label} x{scale}: no per-request record (bench --trace of this version)", file=sys.stderr)
                continue
            t0, wall = probe["started_wall_s"], probe["wall_s"]
            servers = []
            for recs, off in traced:
                inside = [dict(r, recv_rel_s=r["recv_s"] + off - t0) for r in recs if t0 <= r["t_s"] + off <= t0 + wall]
                servers.append(inside)
            rows = match(client, servers)
            agree = sum(1 for r in rows if r["outputs"] == window.output_tokens[r["i"]])  # the match, checked
            base = min(r["recv_s"] - r["due_s"] for r in rows)
            for r in rows:
                r["recv_s"] -= base
                r["delivery_s"] = r["recv_s"] - r["due_s"]
                r["back_s"] = (r["client_ttft_s"] - r["delivery_s"] - r["server_ttft_s"]
                               if r["client_ttft_s"] is not None else None)
            ms = lambda key, q, rs=rows: pct([r[key] for r in rs], q) * 1e3 / k  # noqa: E731
            sim_spec = dilated_sim_spec(server, args.spec or EMULATED_SIM_SPECS.get(server, server), k)
            entry = {
                "matched": len(rows), "requests": len(client["input_lens"]), "outputs_agree": agree,
                "per_server": [sum(1 for r in rows if r["server"] == s) for s in (0, 1)],
                "live_client_ttft_ms": (ms("client_ttft_s", 50), ms("client_ttft_s", 99)),
                "live_scheduler_ttft_ms": (ms("server_ttft_s", 50), ms("server_ttft_s", 99)),
                "delivery_ms": (ms("delivery_s", 50), ms("delivery_s", 99)),
                "way_back_ms": (ms("back_s", 50), ms("back_s", 99)),
                "live_scheduler_by_server": {s: (ms("server_ttft_s", 50, [r for r in rows if r["server"] == s]),
                                                 ms("server_ttft_s", 99, [r for r in rows if r["server"] == s]))
                                             for s in (0, 1)},
                "live_client_tpot_ms": (probe["emulated_gpu"]["p50_tpot_ms"], probe["emulated_gpu"]["p99_tpot_ms"]),
                "sim_A_router": replay(rows, "due", sim_spec, prior, engine, device, k, router,
                                       float(run.get("router_poll_s", k))),
                "sim_B_live_split_due": replay(rows, "due", sim_spec, prior, engine, device, k, None),
                "sim_C_live_split_received": replay(rows, "recv", sim_spec, prior, engine, device, k, None),
            }
            report[f"{label} x{scale}"] = entry
            f = lambda p: f"{p[0]:.0f} / {p[1]:.0f}"  # noqa: E731
            print(f"{label} x{scale}: matched {entry['matched']} of {entry['requests']} ({agree} with the output "
                  f"length the trace asked for) "
                  f"(server 0 / 1: {entry['per_server'][0]} / {entry['per_server'][1]}); P50 / P99 emulated ms")
            print(f"  live: client TTFT {f(entry['live_client_ttft_ms'])}; scheduler TTFT "
                  f"{f(entry['live_scheduler_ttft_ms'])} (server 0 {f(entry['live_scheduler_by_server'][0])}, "
                  f"server 1 {f(entry['live_scheduler_by_server'][1])}); delivery {f(entry['delivery_ms'])}; "
                  f"way back {f(entry['way_back_ms'])}; client TPOT {f(entry['live_client_tpot_ms'])}")
            for key, name in (("sim_A_router", "A sim router, due"), ("sim_B_live_split_due", "B live split, due"),
                              ("sim_C_live_split_received", "C live split, received")):
                print(f"  sim {name}: " + "; ".join(f"{s} {f(v)}" for s, v in entry[key].items()))
            sent = out / "traces" / f"{run['workload']}-sent.jsonl"
            if not sent.exists() and len({r["i"] for r in rows}) == len(window):
                by_i = {r["i"]: r["prompt"] for r in rows}
                write_mooncake(sent, dataclasses.replace(window, prompt_tokens=np.array([by_i[i] for i in
                                                                                          range(len(window))])),
                               hash_block_tokens=None)
                print(f"{sent}: the window with the prompts as the servers received them, e.g.\n"
                      f"  sglang-fair capacity --trace {sent} --replicas 2 --router {router} --load-poll-interval-s "
                      f"{float(run.get('router_poll_s', k)) / k:g} --device {dev.preset} --kv-capacity-tokens "
                      f"{kv_pool_tokens()} --policies {EMULATED_SIM_SPECS.get(server, server)}")
    (out / "cluster_fidelity.json").write_text(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
