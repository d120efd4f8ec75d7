"""What `bench --emulate` reports: the summary JSON (keys the issue fixes), the simulator replay of every valid probe
with the device model as the true iteration time, and the docs/results.md section. Every figure is labelled
emulated: it is the CPU running SGLang on an emulated accelerator's clock, not a GPU measurement."""

from __future__ import annotations

import math

from .emulated import CLUSTER_SERVERS
from .report import _at_capacity, fidelity_table


def _gpu_ms(probe: dict, key: str):
    v = (probe.get("emulated_gpu") or {}).get(key)
    return None if v is None or not math.isfinite(v) else v


def _probes(results: dict) -> list[dict]:
    """Every probe of the run: the single servers' (per policy and workload) and the clusters'."""
    probes = [p for r in results["single"].values() for rr in r.values() if isinstance(rr, dict) and "probes" in rr
              for p in rr["probes"].values()]
    return probes + [p for r in (results.get("cluster") or {}).values() for p in r.get("probes", {}).values()]


def max_overrun(results: dict) -> float:
    """The largest overrun fraction of any probe, single servers and clusters."""
    return max((p.get("overrun_fraction") or 0.0 for p in _probes(results)), default=0.0)


def min_dilation(results: dict) -> int | None:
    """The smallest whole dilation at which every probe of the run would have been valid on this host, projected
    from the forwards in each probe's server trace (`--trace`; trace_report.min_dilation); None without traces."""
    traces = [t for p in _probes(results)
              for t in (p.get("trace") if isinstance(p.get("trace"), list) else [p.get("trace")])]
    ks = [((t or {}).get("device") or {}).get("min_dilation") for t in traces]
    return max((k for k in ks if k is not None), default=None)


def _latencies(res: dict) -> dict:
    at = _at_capacity(res)
    return {"capacity": res["capacity"], "capacity_rps": res["capacity_rps"],
            "p50_ttft_ms": _gpu_ms(at, "p50_ttft_ms"), "p99_ttft_ms": _gpu_ms(at, "p99_ttft_ms"),
            "p50_tpot_ms": _gpu_ms(at, "p50_tpot_ms"), "p99_tpot_ms": _gpu_ms(at, "p99_tpot_ms"),
            "attainment": at.get("attainment"),
            "invalid_probes": sorted((x for x, p in res["probes"].items() if p.get("invalid")), key=float)}


def cluster_summary(results: dict) -> dict:
    """The two-server runs: per `2xSERVER/ROUTER` label the single-server fields plus requests per worker, and
    `ratios`: each plugin configuration's capacity over each stock one's ("2xfair/power_of_two vs
    2xstock/cache_aware"), and `stability_bound_scale`: the two-GPU bound of the window they ran (prompts as sent
    where known)."""
    runs = results.get("cluster") or {}
    out = {label: {**_latencies(r), "requests_per_worker": r.get("requests_per_worker"),
                   "router_poll_s": r.get("router_poll_s")} for label, r in runs.items()}
    stock = [lb for lb, r in runs.items() if r.get("server_policy", "").startswith("stock")]
    ratios = {f"{lb} vs {st}": out[lb]["capacity"] / out[st]["capacity"] for lb in out if lb not in stock
              for st in stock if out[st]["capacity"] > 0}
    keys = {r.get("workload") for r in runs.values()}
    bound = (results.get("workloads", {}).get(keys.pop(), {}).get("stability_bound_scale") or {}) \
        if len(keys) == 1 else {}
    return {"runs": out, "ratios": ratios,
            "stability_bound_scale": bound.get("sent_lengths") or bound.get("trace_lengths")}


def emulated_summary(results: dict) -> dict:
    """`bench --emulate --json`: emulated_device, dilation, capacity_ratio_fair_vs_stock, overrun_fraction (the
    largest over probes), min_dilation (with `--trace`: the smallest dilation at which every probe would have been
    valid on this host) and per policy the CPU bench's fields, latencies in the emulated GPU's milliseconds."""
    cfg = results["config"]
    key = cfg["workloads"][0]["trace"]
    pol = {name: _latencies(r[key]) for name, r in results["single"].items()}
    stock = results["single"].get("stock", {}).get(key, {})
    s_cap = stock.get("capacity")
    ratio = None
    if s_cap and "fair" in pol:
        ratio = pol["fair"]["capacity"] / s_cap
        at_stock = results["single"]["fair"][key]["probes"].get(f"{s_cap:g}")
        pol["fair"]["at_stock_capacity"] = None if not at_stock else {
            "p99_ttft_ms": _gpu_ms(at_stock, "p99_ttft_ms"), "p99_tpot_ms": _gpu_ms(at_stock, "p99_tpot_ms")}
    mixed = [pol[n]["capacity"] for n in ("stock-mixed-2048", "stock-mixed-512") if n in pol]
    bound = (results["workloads"].get(key, {}).get("stability_bound_scale") or {}) if pol else {}  # single-server runs only
    bound = bound.get("sent_lengths") or bound.get("trace_lengths")
    return {"emulated_device": cfg["emulate"], "dilation": _dilation(cfg), "label": "emulated (not a GPU measurement)",
            "emulated_overlap": cfg.get("emulate_overlap", False),
            "mode": cfg["mode"], "trace": key, "ttft_slo_ms": cfg["ttft_slo_ms"], "tpot_slo_ms": cfg["tpot_slo_ms"],
            "policies": pol, "capacity_ratio_fair_vs_stock": ratio,
            "capacity_ratio_fair_vs_best_stock_mixed": (pol["fair"]["capacity"] / max(mixed)
                                                        if mixed and max(mixed) > 0 and "fair" in pol else None),
            "overrun_fraction": max_overrun(results), "min_dilation": min_dilation(results),
            "stability_bound_scale": bound,
            "fair_fraction_of_bound": pol["fair"]["capacity"] / bound if bound and "fair" in pol else None,
            **({"cluster": cluster_summary(results)} if results.get("cluster") else {}),
            "wall_s": results.get("wall_s")}


def _dilation(cfg: dict) -> float:
    from ..emulate.spec import parse_device_spec
    return parse_device_spec(cfg["emulate"]).dilation


def stability_bounds(bench, results: dict) -> None:
    """Per workload, `stability_bound_scale`: the rate scale past which one emulated GPU cannot serve the window's
    prompts and outputs at the TPOT SLO, whatever the policy (sim.capacity.stability_bound_scale, the device preset),
    on the trace's prompt lengths and on the lengths bench_serving actually sent (a probe's input_lens): what no
    capacity can pass by much, so what bounds any capacity ratio."""
    from ..core.presets import load_preset
    from ..emulate.spec import parse_device_spec
    from ..sim.capacity import stability_bound_scale
    from .fidelity import replay_trace

    c = bench.config
    cost = load_preset(parse_device_spec(c.emulate).preset)
    tpot_s = c.tpot_slo_ms / 1000.0
    for key, (_, trace, _) in bench.traces.items():
        gpus = CLUSTER_SERVERS if c.cluster_workload is not None and key == bench.cluster_key else 1
        sent = next((p.input_lens for (_, k), ps in bench.probes.items() if k == key for p in ps.values()
                     if len(p.input_lens) == len(trace)), None)
        results["workloads"][key]["stability_bound_scale"] = {
            "trace_lengths": stability_bound_scale(trace, cost, tpot_s, gpus),
            "sent_lengths": stability_bound_scale(replay_trace(trace, sent, 1.0), cost, tpot_s, gpus) if sent else None,
            "gpus": gpus}


def dilated_sim_spec(label: str, spec: str, k: float) -> str:
    """The simulator twin of live policy `label` on an emulated server's clock (dilation k): a plugin policy runs
    there with its `_ms` parameters x k (serve_args.dilated_policy_times), so its replay must too; stock SGLang's
    twins (EMULATED_STOCK) have nothing dilated."""
    from ..emulate.serve_args import dilated_policy_times
    from ..sim.cli import parse_policy_spec
    from .emulated import EMULATED_STOCK

    if label in EMULATED_STOCK:
        return spec
    name, params = parse_policy_spec(spec)
    return spec + "".join(f"@{n}={v!r}" for n, v in dilated_policy_times(name, k, given=params).items())


def emulated_fidelity(bench, results: dict) -> dict:
    """Each valid probe replayed in the simulator: same arrivals on the dilated clock, prompt lengths as sent,
    outputs, dilated SLOs, the same policy code planning with the device preset x k (the prior the live server
    starts from), and the emulated device's model as the true iteration time."""
    from ..emulate.device import DeviceModel
    from ..emulate.spec import kv_pool_tokens, parse_device_spec
    from ..emulate.serve_args import EmulatedServe
    from .emulated import EMULATED_SIM_SPECS
    from .fidelity import fidelity

    c = bench.config
    spec = parse_device_spec(c.emulate)
    prior = EmulatedServe(spec).with_planner_prior([], bench.out_dir)[-1]
    valid = {}
    for (label, key), by_scale in bench.probes.items():
        rows = results["single"].get(label, {}).get(key, {}).get("probes", {})
        valid[(label, key)] = {x: p for x, p in by_scale.items() if not rows.get(f"{x:g}", {}).get("invalid")}
    k = spec.dilation
    specs = {n: dilated_sim_spec(n, s, k) for n, s in EMULATED_SIM_SPECS.items() if n in c.policies}
    return fidelity(valid, bench.traces, specs, prior,
                    ttft_slo_ms=c.ttft_slo_ms * k, tpot_slo_ms=c.tpot_slo_ms * k, kv_tokens=kv_pool_tokens(),
                    iteration_time=DeviceModel(spec).iteration_s)


def valid_from(min_dilation: int) -> str:
    """The run summary's `min_dilation` in words."""
    return f"every probe valid on this host from dilation {min_dilation}, projected from the servers' traces"


def markdown(results: dict, command: str, img_prefix: str) -> str:
    cfg = results["config"]
    m = results["machine"]
    k = _dilation(cfg)
    s = emulated_summary(results)
    speed = "" if m.get("python_loop_1e7_s") is None else f"; 10^7 Python additions in {m['python_loop_1e7_s']:.2f} s"
    lines = [
        f"**Emulated** {cfg['emulate']} (dilation {k:g}): the real SGLang {results['versions']['sglang']} server on "
        f"{m['cores']} CPU cores ({m['cpu']}{speed}) with the micro model, every forward padded to the Vidur-profile "
        f"device model's time for the batch that ran, x {k:g}; KV pool of the emulated 80 GB GPU; GPU overlap loop "
        f"emulated: {'on' if cfg.get('emulate_overlap', False) else 'off'} (host time between forwards "
        f"{'hidden behind the previous forward' if cfg.get('emulate_overlap', False) else 'added to each'}). Not a GPU "
        f"measurement. Load: `bench_serving` replaying each window at its real lengths (clipped to 8192), arrival "
        f"gaps x {k:g}. SLOs TTFT {cfg['ttft_slo_ms']:g} ms, TPOT {cfg['tpot_slo_ms']:g} ms in the emulated GPU's "
        f"time (x {k:g} on the clock). A probe with more than 2% of its forwards overrun is invalid (never a pass). "
        f"Largest overrun fraction of a probe: {s['overrun_fraction']:.3f}"
        + ("" if s["min_dilation"] is None else f" ({valid_from(s['min_dilation'])})") + ". Whole run: "
        f"{results.get('wall_s', 0) / 60:.1f} min.", "", f"Command: `{command}`", ""]
    for w in cfg["workloads"]:
        key = w["trace"]
        info = results["workloads"][key]
        if not any(r.get(key) for r in results["single"].values()):  # --policies none: the cluster runs only
            continue
        lines += [f"### {key} (from {w['start_s']:g} s, {w['n_requests']} requests, {info['rate_rps']:.2f} req/s "
                  f"at scale 1, prompt {info['prompt_tokens_sent_mean']:.0f} tokens sent on average, output "
                  f"{info['output_tokens_mean']:.0f})", "",
                  "| policy | capacity (rate scale) | req/s | vs stock | P99 TTFT / TPOT at capacity, emulated ms | "
                  "attainment there | P99 TTFT / TPOT at stock's capacity | probes (overruns) |",
                  "|---|---|---|---|---|---|---|---|"]
        s_cap = results["single"].get("stock", {}).get(key, {}).get("capacity")
        for name, r in results["single"].items():
            rr = r.get(key)
            if not rr:
                continue
            at = _at_capacity(rr)
            at_s = rr["probes"].get(f"{s_cap:g}") if s_cap else None
            probes = ", ".join(f"{x} ({p.get('overrun_fraction', 0):.1%}{' invalid' if p.get('invalid') else ''})"
                               for x, p in sorted(rr["probes"].items(), key=lambda t: float(t[0])))
            ratio = f"{rr['capacity'] / s_cap:.2f}x" if s_cap else "-"
            there = f"{_fmt(_gpu_ms(at_s, 'p99_ttft_ms'))} / {_fmt(_gpu_ms(at_s, 'p99_tpot_ms'))}" if at_s else "-"
            lines.append(f"| {name} | {rr['capacity']:g} | {rr['capacity_rps']:.2f} | {ratio} | "
                         f"{_fmt(_gpu_ms(at, 'p99_ttft_ms'))} / {_fmt(_gpu_ms(at, 'p99_tpot_ms'))} | "
                         f"{at.get('attainment', 0):.2f} | {there} | {probes} |")
        b = info.get("stability_bound_scale") or {}
        if b.get("trace_lengths"):
            sent = f"{b['sent_lengths']:.3f} on the prompts as sent, " if b.get("sent_lengths") else ""
            lines += ["", f"Stability bound of the window (the rate scale past which one emulated GPU cannot keep up "
                          f"at the TPOT SLO, whatever the policy; device preset): {sent}{b['trace_lengths']:.3f} on "
                          f"the trace's lengths."]
        lines += ["", f"![emulated {key}]({img_prefix}/emulated-live-{key}.png)", ""]
        lines += trace_table(results, key, k)
    lines += cluster_markdown(results)
    if results.get("fidelity"):
        lines += ["### Simulator vs emulated live", "",
                  "Each valid probe replayed in the simulator with the device model as the true iteration time "
                  "(so the gap is what the simulator misses of the real scheduler). Median |sim - live| / live:", "",
                  *fidelity_table(results["fidelity"])]
    return "\n".join(lines)


def cluster_markdown(results: dict) -> list[str]:
    """Markdown lines of the two-server runs (none without them)."""
    runs = results.get("cluster") or {}
    if not runs:
        return []
    key = next(iter(runs.values()))["workload"]
    info = results["workloads"][key]
    b = info.get("stability_bound_scale") or {}
    cs = cluster_summary(results)
    lines = [f"### Two servers behind sglang-router ({key}: {info['rate_rps']:.2f} req/s at scale 1, prompt "
             f"{info['prompt_tokens_sent_mean'] or 0:.0f} tokens sent on average, output "
             f"{info['output_tokens_mean']:.0f})", "",
             "| servers / router | capacity (rate scale) | req/s | P50 / P99 TTFT at capacity, emulated ms | "
             "P50 / P99 TPOT there | attainment there | requests per server (whole run) | probes (overruns) |",
             "|---|---|---|---|---|---|---|---|"]
    for label, r in runs.items():
        x = cs["runs"][label]
        probes = ", ".join(f"{s} ({p.get('overrun_fraction') or 0:.1%}{' invalid' if p.get('invalid') else ''})"
                           for s, p in sorted(r["probes"].items(), key=lambda t: float(t[0])))
        per = " / ".join("-" if n is None else f"{n:.0f}" for n in (x["requests_per_worker"] or []))
        lines.append(f"| {label} | {x['capacity']:g} | {x['capacity_rps']:.2f} | {_fmt(x['p50_ttft_ms'])} / "
                     f"{_fmt(x['p99_ttft_ms'])} | {_fmt(x['p50_tpot_ms'])} / {_fmt(x['p99_tpot_ms'])} | "
                     f"{x['attainment'] or 0:.2f} | {per} | {probes} |")
    lines.append("")
    for name, ratio in cs["ratios"].items():
        lines.append(f"- capacity {name}: {ratio:.2f}x")
    if b.get("trace_lengths"):
        sent = f"{b['sent_lengths']:.3f} on the prompts as sent, " if b.get("sent_lengths") else ""
        lines.append(f"- stability bound of the window on {b.get('gpus', 1)} emulated GPUs: {sent}"
                     f"{b['trace_lengths']:.3f} on the trace's lengths")
    return [*lines, ""]


def trace_table(results: dict, key: str, dilation: float) -> list[str]:
    """Markdown lines: what each traced probe's plans and forwards were (`bench --trace`; none without traces).
    Times in emulated GPU ms (the server clock / `dilation`)."""
    rows = []
    for name, r in results["single"].items():
        for x, p in sorted(((r.get(key) or {}).get("probes") or {}).items(), key=lambda t: float(t[0])):
            t = p.get("trace") or {}
            if "forwards" not in t:
                if "device" in t:  # stock: only the emulated device's forwards
                    d = t["device"]
                    rows.append(f"| {name} | {x} | {d['n']} | - | - | {d['emulated_ms']['max'] / dilation:.0f} | - | "
                                f"- | - |")
                continue
            f, pl = t["forwards"], t.get("plans") or {}
            over = f.get("decode_forwards_over_tpot")
            slow = f.get("over_plan_prediction")
            rows.append(f"| {name} | {x} | {f['n']} | {'-' if over is None else f'{over:.1%}'} | "
                        f"{'-' if slow is None else f'{slow:.1%}'} | {f['measured_ms']['max'] / dilation:.0f} | "
                        f"{f['max_token_gap_ms']['max'] / dilation:.0f} | {pl.get('with_deferred_rows', '-')} | "
                        f"{pl.get('with_demoted', '-')} |")
    if not rows:
        return []
    return ["What each probe's server did, from its `--fair-trace` (`bench --trace`; the records within the probe's "
            "replay, `sglang-fair trace-report`), emulated ms:", "",
            "| policy | probe | forwards | with decode rows, longer than the TPOT SLO | past 1.1x their plan's "
            "prediction | longest forward | longest token gap | plans deferring rows | plans demoting |",
            "|---|---|---|---|---|---|---|---|---|", *rows, ""]


def _fmt(x) -> str:
    return "-" if x is None else f"{x:.0f}"
