"""What a live benchmark leaves behind: results JSON, PNG plots, the quick JSON summary and the docs/results.md
section (tables built only from the results dict, so the docs are regenerated from the JSON that holds the run)."""

from __future__ import annotations

import math
from pathlib import Path


def _at_capacity(res: dict) -> dict:
    """The probe at the capacity scale (or, when nothing passed, the lowest probe)."""
    probes = res.get("probes", {})
    if not probes:
        return {}
    if res.get("capacity", 0) > 0 and f"{res['capacity']:g}" in probes:
        return probes[f"{res['capacity']:g}"]
    return probes[min(probes, key=float)]


def _ms(x) -> str:
    return "-" if x is None or (isinstance(x, float) and not math.isfinite(x)) else f"{x * 1e3:.0f}"


def quick_summary(results: dict) -> dict:
    key = results["config"]["workloads"][0]["trace"]
    pol = {}
    for name, r in results["single"].items():
        at = _at_capacity(r[key])
        pol[name] = {"capacity": r[key]["capacity"], "capacity_rps": r[key]["capacity_rps"],
                     "p99_ttft_ms": None if at.get("p99_ttft_s") is None else at["p99_ttft_s"] * 1e3,
                     "p99_tpot_ms": None if at.get("p99_tpot_s") is None else at["p99_tpot_s"] * 1e3,
                     "attainment": at.get("attainment")}
    stock = pol.get("stock", {}).get("capacity")
    fair = pol.get("fair", {}).get("capacity")
    ratio = (fair / stock) if stock and fair is not None else None
    return {"mode": results["config"]["mode"], "trace": key, "ttft_slo_ms": results["config"]["ttft_slo_ms"],
            "tpot_slo_ms": results["config"]["tpot_slo_ms"], "policies": pol, "capacity_ratio_fair_vs_stock": ratio,
            "wall_s": results.get("wall_s")}


def _plot_ms(probe: dict, metric: str) -> float:
    """ms of `metric` (p99_ttft / p99_tpot): in the emulated GPU's time for an emulated probe."""
    if "emulated_gpu" in probe:
        v = probe["emulated_gpu"].get(metric + "_ms")
        return math.inf if v is None else v
    return (probe[metric + "_s"] or math.inf) * 1e3


def plots(results: dict, out_dir: Path) -> list[Path]:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    files = []
    cfg = results["config"]
    for w in cfg["workloads"]:
        key = w["trace"]
        fig, axes = plt.subplots(1, 3, figsize=(14, 4))
        for name, r in results["single"].items():
            pr = r.get(key, {}).get("probes", {})
            xs = sorted(pr, key=float)
            if not xs:
                continue
            sc = [float(x) for x in xs]
            axes[0].plot(sc, [_plot_ms(pr[x], "p99_ttft") for x in xs], "o-", label=name)
            axes[1].plot(sc, [_plot_ms(pr[x], "p99_tpot") for x in xs], "o-", label=name)
            axes[2].plot(sc, [pr[x]["attainment"] for x in xs], "o-", label=name)
        axes[0].axhline(cfg["ttft_slo_ms"], color="k", ls="--", lw=0.8)
        axes[1].axhline(cfg["tpot_slo_ms"], color="k", ls="--", lw=0.8)
        axes[2].axhline(0.9, color="k", ls="--", lw=0.8)
        for ax, t in zip(axes, ("P99 TTFT (ms)", "P99 TPOT (ms)", "SLO attainment")):
            ax.set_xlabel("rate scale")
            ax.set_title(t)
            ax.set_xscale("log")
        axes[0].set_yscale("log")
        axes[0].legend(fontsize=8)
        where = (f"EMULATED {cfg['emulate']} (times in the emulated GPU's ms)" if cfg.get("emulate")
                 else "one CPU server per policy")
        fig.suptitle(f"live, {key}: {where} (bench_serving probes)")
        fig.tight_layout()
        path = out_dir / f"{'emulated-' if cfg.get('emulate') else ''}live-{key}.png"  # never over the CPU plot
        fig.savefig(path, dpi=90)
        plt.close(fig)
        files.append(path)
    return files


def markdown(results: dict, command: str, img_prefix: str) -> str:
    cfg = results["config"]
    m = results["machine"]
    lines = [
        f"Measured {results['date']} on {m['cores']} cores ({m['cpu']}, {m['arch']}), no GPU; SGLang "
        f"{results['versions']['sglang']}, sglang-router {results['versions']['sglang_router']}, the embedded model "
        f"(random-weight Llama, hidden 512, 8 layers) in float32 with torch_native attention. Load: SGLang's own "
        f"`bench_serving` replaying each trace window with its timestamps (mooncake JSONL, `--use-trace-timestamps`). "
        f"SLOs: TTFT {cfg['ttft_slo_ms']:g} ms, TPOT {cfg['tpot_slo_ms']:g} ms. Capacity = largest rate scale with "
        f"P99 TTFT and P99 TPOT within the SLOs and every request finished (bisection, at most {cfg['max_probes']} "
        f"probes per policy and trace, stop at hi/lo <= {1 + cfg['rel_tol']:g}, a probe is cut {cfg['probe_drain_s']:g} s "
        f"after its last arrival); "
        f"attainment capacity = largest probed scale where >= 90% of requests met both SLOs (a lower bound). "
        f"Whole run: {results.get('wall_s', 0) / 60:.1f} min.",
        "",
        f"Command: `{command}` (results JSON and plots in the `--out` folder).",
        "",
        "Workloads (lengths scaled to what this CPU serves; rate scale 1 = the trace's own arrival times):",
        "",
        "| trace | window | requests | prompt x | output x | mean rate at scale 1 | prompt tokens sent (mean) | output tokens (mean) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for w in cfg["workloads"]:
        info = results["workloads"][w["trace"]]
        lines.append(f"| {w['trace']} | from {w['start_s']:g} s | {w['n_requests']} | {w['prompt_scale']:g} | "
                     f"{w['output_scale']:g} | {info['rate_rps']:.2f} req/s | {info['prompt_tokens_sent_mean']:.0f} | "
                     f"{info['output_tokens_mean']:.1f} |")
    for w in cfg["workloads"]:
        key = w["trace"]
        lines += ["", f"### {key}: one server", "",
                  "| policy | capacity (rate scale) | req/s | vs stock | P99 TTFT at capacity, ms | "
                  "P99 TPOT at capacity, ms | attainment at capacity | attainment capacity (>=) | P99 TTFT / TPOT at "
                  "stock's capacity, ms | probes |",
                  "|---|---|---|---|---|---|---|---|---|---|"]
        stock = results["single"].get("stock", {}).get(key, {})
        s_cap = stock.get("capacity")
        for name, r in results["single"].items():
            rr = r.get(key)
            if not rr:
                continue
            at = _at_capacity(rr)
            ratio = f"{rr['capacity'] / s_cap:.2f}x" if s_cap else "-"
            at_stock = rr["probes"].get(f"{s_cap:g}") if s_cap else None
            at_stock_txt = f"{_ms(at_stock['p99_ttft_s'])} / {_ms(at_stock['p99_tpot_s'])}" if at_stock else "-"
            probes = ", ".join(sorted(rr["probes"], key=float))
            lines.append(f"| {name} | {rr['capacity']:g} | {rr['capacity_rps']:.2f} | {ratio} | "
                         f"{_ms(at.get('p99_ttft_s'))} | {_ms(at.get('p99_tpot_s'))} | "
                         f"{at.get('attainment', 0):.2f} | {rr['capacity_attainment_lower_bound']:g} | "
                         f"{at_stock_txt} | {probes} |")
        lines += ["", f"![live {key}]({img_prefix}/live-{key}.png)"]
    if results.get("cluster"):
        key = cfg["workloads"][0]["trace"]
        lines += ["", f"### Two servers behind sglang-router ({key})", "",
                  "Each server pinned to one core (`taskset`, `OMP_NUM_THREADS=1`); router, tokenizers, detokenizers "
                  "and the client share both cores.", "",
                  "| servers / router policy | capacity (rate scale) | req/s | P99 TTFT at capacity, ms | "
                  "P99 TPOT at capacity, ms | requests per worker (last probes) |", "|---|---|---|---|---|---|"]
        for label, r in results["cluster"].items():
            at = _at_capacity(r)
            lines.append(f"| {label} | {r['capacity']:g} | {r['capacity_rps']:.2f} | {_ms(at.get('p99_ttft_s'))} | "
                         f"{_ms(at.get('p99_tpot_s'))} | {r.get('requests_per_worker')} |")
    if results.get("fidelity"):
        lines += ["", "### Simulator vs live", "",
                  "Each live probe replayed in the simulator (same arrivals, prompt lengths as sent, outputs, SLOs, "
                  "policy code), with the cost model the fair server fitted from its own iterations. Median |sim - "
                  "live| / live over the policy's probes:", "", *fidelity_table(results["fidelity"])]
    return "\n".join(lines)


def fidelity_table(fidelity: dict) -> list[str]:
    """Markdown rows: per policy and trace, the median |sim - live| / live of P50/P99 TTFT and TPOT."""
    lines = ["| policy | trace | probes | P50 TTFT | P99 TTFT | P50 TPOT | P99 TPOT |", "|---|---|---|---|---|---|---|"]
    for name, by in fidelity.items():
        for key, f in by.items():
            e = f["median_abs_rel_err"]
            cells = " | ".join("-" if e[k] is None else f"{e[k] * 100:.0f}%"
                               for k in ("p50_ttft_ms", "p99_ttft_ms", "p50_tpot_ms", "p99_tpot_ms"))
            lines.append(f"| {name} | {key} | {len(f['probes'])} | {cells} |")
    return lines
