"""Fit the iteration cost model to real GPU operator profiles and (with --write) ship the result as presets.

Data: the package's copy of `profiles/vidur/` (microsoft/vidur's profiling data, MIT, gzip-compressed; with
$SGLANG_FAIR_SHARED or --profiles-dir a plain or gzip copy elsewhere; times are median ms PER LAYER):
  - `a100_meta-llama_Meta-Llama-3-8B/mlp.csv`: every non-attention operator of one layer vs `num_tokens` (TP 1 rows
    used; duplicate `num_tokens` rows are merged by their median);
  - `a100_meta-llama_Meta-Llama-3-8B/attention_sampled_tp1.csv`: attention (`attn_ms`) and KV write
    (`kv_cache_save_ms`) per layer for prefill (chunk, kv 0), chunked prefill (chunk 64, kv 512..4672) and decode
    (batch size, kv size) rows;
  - `{a100,h100}_meta-llama_Llama-2-7b-hf/mlp.csv`: the same operators of a similar model on both GPUs.

How one iteration's time is built (Llama-3-8B: 32 layers, TP 1), following Vidur's per-block sum (the reading of the
profiles and this construction live in `sglang_fair/emulate/profiles.py`, shared with the emulated device):
  t = 32 * [ sum over layer ops(num_tokens) + attn_prefill + attn_decode + kv_save ] + emb(num_tokens) + overhead
  - layer ops = input_layernorm, attn_pre_proj, attn_rope, attn_post_proj, post_attention_layernorm, mlp_up_proj,
    mlp_act, mlp_down_proj, add (each once, as Vidur sums them), linearly interpolated in num_tokens = prefill
    tokens + decode rows (a grid of 451 points from 1 to 32768 tokens);
  - attn_prefill / attn_decode: the measured attention row itself (no interpolation: every sample is built on a
    measured (chunk, kv) or (batch, kv) point); a mixed batch adds its prefill row and its decode row, as Vidur does;
  - kv_save: a decode-only batch uses its decode row's value; a batch with a prefill uses the prefill rows'
    kv_cache_save interpolated at the batch's total new tokens;
  - emb: the embedding op of mlp.csv, once per iteration;
  - overhead: a documented constant (--overhead-ms, default 1.0 ms on the A100): the LM head for the last position
    of each sequence (128256 x 4096 bf16 weights = 1.05 GB read once, ~0.55 ms at 2 TB/s) plus logits processing and
    sampling (~0.45 ms). The profiles do not contain these operators.
Samples (one per iteration):
  - prefill only: every `prefill` row (chunk 32..16384, prefix 0) -> prefills [(chunk, 0)];
  - chunked prefill: every `chunked_prefill` row -> [(64, kv)];
  - decode only: every `decode` row (batch B, kv K) -> B decode rows of context K;
  - mixed: prefill chunks 256, 512, 1024, 2048 (prefix 0) x every 3rd decode row with B <= 256.
The fit is `sglang_fair.core.fit.fit_cost_model` on relative residuals with BIC term dropping, WITHOUT robust
reweighting: the profile times are already medians of repeated runs, so the data hold no measurement outliers, and
a bisquare fit would only discard the samples the 5-term model fits worst (short prefills, where the GPU is not yet
compute-bound) instead of averaging over them.

H100 (`h100-llama3-8b`) is derived, not measured for Llama-3-8B: each A100 Llama-3-8B operator time at n tokens is
multiplied by that operator's H100/A100 ratio on Llama-2-7B at n tokens (n clamped to the Llama-2 grid, 1..4096);
prefill attention by the median GEMM ratio (pre/post proj, up/down proj) at n = chunk (compute-bound); decode
attention, KV writes and the overhead constant by the median GEMM ratio at n <= 32 (weight-streaming,
memory-bound). Then the same fit.

`cpu-tiny-llama` (the embedded CPU model's prior) is not made here: it is a live online fit saved by
`sglang-fair serve --fair-save-cost-model` on a CPU machine (its "source" field says how).

Usage: python benchmark/fit_profiles.py [--profiles-dir DIR] [--overhead-ms 1.0] [--json] [--write]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "python"))

from sglang_fair.core.cost_model import CostModel  # noqa: E402
from sglang_fair.core.fit import FitOptions, fit_cost_model, model_json  # noqa: E402
from sglang_fair.data import find_csv, profiles_dir  # noqa: E402
from sglang_fair.emulate.profiles import (L2_A100, L2_H100, L3_A100, GpuRatio, OpTable,  # noqa: E402
                                          build_samples, read_attention)

def default_profiles_dir() -> Path:
    return profiles_dir()


def per_kind_error(model: CostModel, samples) -> dict:
    out: dict[str, list[float]] = {}
    for pf, dec, t, kind in samples:
        out.setdefault(kind, []).append(abs(model.predict(pf, dec) - t) / t * 100.0)
    return {k: {"n": len(v), "mean_abs_pct_err": float(np.mean(v)), "max_abs_pct_err": float(np.max(v))}
            for k, v in out.items()}


def describe(name: str, model: CostModel, report, kinds: dict | None) -> str:
    c = model
    lines = [f"== {name}",
             f"  a (base)            {c.base_s * 1e3:9.4f} ms",
             f"  b (prefill token)   {c.per_prefill_token_s * 1e3:9.5f} ms/token",
             f"  p (chunk*(pre+chk)) {c.per_attn_token2_s * 1e3:9.3e} ms/token^2",
             f"  r (decode row)      {c.per_decode_req_s * 1e3:9.5f} ms/row",
             f"  d (context token)   {c.per_context_token_s * 1e3:9.3e} ms/token",
             f"  fit: n={report.n_samples} mean |err| {report.mean_abs_pct_err:.2f}% median "
             f"{report.median_abs_pct_err:.2f}% max {report.max_abs_pct_err:.1f}% "
             f"({report.max_abs_err_s * 1e3:.2f} ms), outliers {report.n_outliers}, fixed {list(report.fixed_terms)}"]
    for k, v in (kinds or {}).items():
        lines.append(f"    {k:16s} n={v['n']:3d} mean {v['mean_abs_pct_err']:.2f}% max {v['max_abs_pct_err']:.1f}%")
    lines.append(f"  check: 2048-token prefill {c.predict([(2048, 0)]) * 1e3:.1f} ms; 64 decodes at 1k context "
                 f"{c.predict((), [1024] * 64) * 1e3:.1f} ms; 256 at 2k {c.predict((), [2048] * 256) * 1e3:.1f} ms")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--profiles-dir", type=Path, default=None,
                    help="vidur profiles folder (default: the package's copy, or <shared>/profiles/vidur when "
                         "$SGLANG_FAIR_SHARED is set)")
    ap.add_argument("--overhead-ms", type=float, default=1.0, help="per-iteration LM head + sampling, A100 ms")
    ap.add_argument("--json", action="store_true", help="print the presets as JSON instead of a table")
    ap.add_argument("--write", action="store_true", help="write python/sglang_fair/presets/*.json")
    args = ap.parse_args(argv)
    pdir = args.profiles_dir or default_profiles_dir()
    if not pdir.is_dir():
        ap.error(f"--profiles-dir: folder not found: {pdir}")

    ops = OpTable(find_csv(pdir / L3_A100, "mlp.csv"))
    attn = read_attention(find_csv(pdir / L3_A100, "attention_sampled_tp1.csv"))
    ratio = GpuRatio(OpTable(find_csv(pdir / L2_A100, "mlp.csv")), OpTable(find_csv(pdir / L2_H100, "mlp.csv")))
    cmd = f"python benchmark/fit_profiles.py --overhead-ms {args.overhead_ms:g}"
    common = (f"Vidur operator profiles (microsoft/vidur, MIT), Llama-3-8B TP1: per-iteration samples = 32 x (layer "
              f"ops + attention + KV write) + embedding + {args.overhead_ms:g} ms LM head/sampling constant; see "
              f"benchmark/fit_profiles.py; relative NNLS fit ({cmd})")
    docs = {}
    for name, r, src in (
            ("a100-llama3-8b", None, "A100, " + common),
            ("h100-llama3-8b", ratio, "H100, DERIVED: the A100 Llama-3-8B samples with every operator scaled by the "
             "H100/A100 Llama-2-7B per-operator ratio at the same token count (attention: GEMM ratio; decode "
             f"attention, KV writes, overhead: memory-bound ratio {ratio.memory_bound:.3f}). " + common)):
        samples = build_samples(ops, attn, args.overhead_ms, r)
        model, report = fit_cost_model([s[:3] for s in samples], options=FitOptions(robust=False))
        kinds = per_kind_error(model, samples)
        doc = model_json(model, report, src)
        doc["fit"]["per_kind"] = kinds
        docs[name] = doc
        if not args.json:
            print(describe(name, model, report, kinds))
    if args.json:
        print(json.dumps(docs, indent=2))
    if args.write:
        out = REPO / "python" / "sglang_fair" / "presets"
        out.mkdir(exist_ok=True)
        for name, doc in docs.items():
            (out / f"{name}.json").write_text(json.dumps(doc, indent=2) + "\n")
            print(f"wrote {out.relative_to(REPO) / (name + '.json')}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
