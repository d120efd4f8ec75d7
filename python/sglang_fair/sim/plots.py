"""PNG plots of a capacity run: goodput vs rate scale per policy, and TTFT / TPOT CDFs at each policy's capacity."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from ..core.metrics import tpot_s, ttft_s  # noqa: E402


def write_plots(out_dir: Path, results: dict, searches: dict, prefix: str = "") -> list[str]:
    """Write goodput.png, ttft_cdf.png, tpot_cdf.png (with `prefix`) under out_dir; returns the paths."""
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    fig, ax = plt.subplots(figsize=(6, 4))
    for spec, search in searches.items():
        xs = sorted(search.summaries)
        ax.plot(xs, [search.summaries[x].goodput_rps for x in xs], marker="o", ms=3, label=spec)
    ax.set_xlabel("rate scale")
    ax.set_ylabel("goodput (requests meeting SLO / s)")
    ax.grid(alpha=0.3)
    ax.legend()
    paths.append(_save(fig, out_dir / f"{prefix}goodput.png"))
    for metric, fn, label in (("ttft", ttft_s, "TTFT (s)"), ("tpot", tpot_s, "TPOT (ms)")):
        fig, ax = plt.subplots(figsize=(6, 4))
        for spec, search in searches.items():
            cap = results[spec].capacity
            res = search.results.get(float(f"{cap:.6g}"))
            if res is None:
                continue
            vals = np.sort([fn(r) for r in res.records if r.first_token_s is not None])
            if metric == "tpot":
                vals = vals * 1e3
            ax.plot(vals, np.arange(1, len(vals) + 1) / len(vals), label=f"{spec} @ {cap:.3g}")
        ax.set_xlabel(label)
        ax.set_ylabel("CDF")
        ax.grid(alpha=0.3)
        ax.legend()
        paths.append(_save(fig, out_dir / f"{prefix}{metric}_cdf.png"))
    return paths


def _save(fig, path: Path) -> str:
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return str(path)
