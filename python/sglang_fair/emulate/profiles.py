"""Vidur's GPU operator profiles and the per-iteration time built from them (one copy, shared by
`benchmark/fit_profiles.py`, which fits the planner's presets, and `emulate/device.py`, the emulated accelerator).

Data: the package's copy of `profiles/vidur/` (microsoft/vidur, MIT; times are median ms PER LAYER), see
`sglang_fair.data.profiles_dir()`:
  - `a100_meta-llama_Meta-Llama-3-8B/mlp.csv`: every non-attention operator of one layer vs `num_tokens` (TP 1 rows;
    duplicate `num_tokens` rows merged by their median), grid 1, 2, 4, 8, 16, ... up to 32768 tokens;
  - `a100_meta-llama_Meta-Llama-3-8B/attention_sampled_tp1.csv`: a 118-row sample of Vidur's attention profile:
    attention (`attn_ms`) and KV write (`kv_cache_save_ms`) per layer for prefill (chunk, kv 0), chunked prefill
    (chunk 64, kv 512..4672) and decode (batch size, kv size) rows;
  - `{a100,h100}_meta-llama_Llama-2-7b-hf/mlp.csv`: the same operators of a similar model on both GPUs.

One iteration (Llama-3-8B: 32 layers, TP 1), following Vidur's per-block sum (`IterationBuilder.iteration_ms`):
  t = 32 * [ sum over layer ops(n) + attn_prefill + attn_decode + kv_save ] + emb(n) + overhead,  n = prefill tokens
  + decode rows
  - layer ops = input_layernorm, attn_pre_proj, attn_rope, attn_post_proj, post_attention_layernorm, mlp_up_proj,
    mlp_act, mlp_down_proj, add (each once, as Vidur sums them), linearly interpolated in n;
  - attn_prefill / attn_decode: given by the caller (the fit script passes measured rows; the device model
    interpolates); a mixed batch adds its prefill and its decode attention, as Vidur does;
  - kv_save: a decode-only batch uses the decode value; a batch with a prefill uses the prefill rows'
    kv_cache_save interpolated at n (proportional to n past the last row, 16384 tokens);
  - emb: the embedding op, once per iteration;
  - overhead: a constant (default 1.0 ms on the A100): the LM head for the last position of each sequence
    (128256 x 4096 bf16 weights = 1.05 GB read once, ~0.55 ms at 2 TB/s) plus logits processing and sampling
    (~0.45 ms). The profiles do not contain these operators.

H100 is derived, not measured for Llama-3-8B (`GpuRatio`): each A100 Llama-3-8B operator time at n tokens is
multiplied by that operator's H100/A100 ratio on Llama-2-7B at n tokens (n clamped to the Llama-2 grid, 1..4096);
prefill attention by the median GEMM ratio at n = chunk (compute-bound); decode attention, KV writes and the overhead
constant by the median GEMM ratio at n <= 32 (weight-streaming, memory-bound).
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from ..data import find_csv, open_text, profiles_dir
from .spec import DEFAULT_OVERHEAD_MS

LAYERS = 32
LAYER_OPS = ("input_layernorm", "attn_pre_proj", "attn_rope", "attn_post_proj", "post_attention_layernorm",
             "mlp_up_proj", "mlp_act", "mlp_down_proj", "add")
GEMM_OPS = ("attn_pre_proj", "attn_post_proj", "mlp_up_proj", "mlp_down_proj")
MIX_CHUNKS = (256, 512, 1024, 2048)
L3_A100 = "a100_meta-llama_Meta-Llama-3-8B"
L2_A100, L2_H100 = "a100_meta-llama_Llama-2-7b-hf", "h100_meta-llama_Llama-2-7b-hf"


def interp_proportional(n: float, xs: np.ndarray, ys: np.ndarray) -> float:
    """Linear interpolation of (xs, ys) at n; past the last point proportional to n (a token-linear operator: twice
    the tokens, twice the time), below the first point clamped."""
    if n > xs[-1]:
        return float(ys[-1] * n / xs[-1])
    return float(np.interp(n, xs, ys))


class OpTable:
    """Per-layer operator medians (ms) vs num_tokens for one TP degree, interpolated linearly; past the grid's last
    point (32768 tokens) proportional to num_tokens (no profile sample lies there)."""

    def __init__(self, path: Path, tp: int = 1) -> None:
        by_n: dict[int, list[dict]] = {}
        with open_text(path) as fh:
            for row in csv.DictReader(fh):
                if int(row["num_tensor_parallel_workers"]) == tp:
                    by_n.setdefault(int(row["num_tokens"]), []).append(row)
        if not by_n:
            raise ValueError(f"{path}: no rows with num_tensor_parallel_workers == {tp}")
        self.tokens = np.array(sorted(by_n), dtype=float)
        self.ms = {op: np.array([np.median([float(r[f"time_stats.{op}.median"]) for r in by_n[int(n)]])
                                 for n in self.tokens]) for op in LAYER_OPS + ("emb",)}

    def op(self, name: str, n: float) -> float:
        return interp_proportional(n, self.tokens, self.ms[name])

    def layer(self, n: float, scale: Callable[[str, float], float] | None = None) -> float:
        """Sum of the layer's non-attention ops at n tokens; `scale(op, n)` multiplies each op (H100 derivation)."""
        return sum(self.op(o, n) * (scale(o, n) if scale else 1.0) for o in LAYER_OPS)


def read_attention(path: Path) -> list[dict]:
    """The attention sample's rows: kind, batch_size, prefill_chunk_size, kv_cache_size, attn_ms, kv_cache_save_ms."""
    with open_text(path) as fh:
        lines = [ln for ln in fh if not ln.startswith("#")]
    rows = list(csv.DictReader(lines))
    for r in rows:
        for k in ("batch_size", "prefill_chunk_size", "kv_cache_size"):
            r[k] = int(r[k])
        for k in ("attn_ms", "kv_cache_save_ms"):
            r[k] = float(r[k])
    return rows


class GpuRatio:
    """H100/A100 time ratios per operator vs num_tokens, from the Llama-2-7B profiles on both GPUs."""

    def __init__(self, a100: OpTable, h100: OpTable) -> None:
        if not np.array_equal(a100.tokens, h100.tokens):
            raise ValueError("A100 and H100 Llama-2-7B profiles have different num_tokens grids")
        self.tokens = a100.tokens
        self.ratio = {o: h100.ms[o] / a100.ms[o] for o in LAYER_OPS + ("emb",)}
        gemm = np.vstack([self.ratio[o] for o in GEMM_OPS])
        self.gemm = np.median(gemm, axis=0)
        self.memory_bound = float(np.median(gemm[:, self.tokens <= 32]))

    def op(self, name: str, n: float) -> float:
        return float(np.interp(n, self.tokens, self.ratio[name]))

    def compute(self, n: float) -> float:
        return float(np.interp(n, self.tokens, self.gemm))


@dataclass(frozen=True)
class Profiles:
    """The three profile tables, read once."""

    ops: OpTable
    attn: list
    ratio: GpuRatio


def load_profiles(folder: Path | None = None) -> Profiles:
    """Read the profiles from `folder` (default: the package's copy, or $SGLANG_FAIR_SHARED's)."""
    pdir = Path(folder) if folder is not None else profiles_dir()
    return Profiles(ops=OpTable(find_csv(pdir / L3_A100, "mlp.csv")),
                    attn=read_attention(find_csv(pdir / L3_A100, "attention_sampled_tp1.csv")),
                    ratio=GpuRatio(OpTable(find_csv(pdir / L2_A100, "mlp.csv")),
                                   OpTable(find_csv(pdir / L2_H100, "mlp.csv"))))


class IterationBuilder:
    """The per-iteration construction of the module docstring, for one GPU (A100, or H100 with `ratio`)."""

    def __init__(self, ops: OpTable, attn: list, overhead_ms: float = DEFAULT_OVERHEAD_MS,
                 ratio: GpuRatio | None = None) -> None:
        prefill = [r for r in attn if r["kind"] == "prefill"]
        self.ops, self.ratio, self.overhead_ms = ops, ratio, overhead_ms
        self.pf_tokens = np.array([r["prefill_chunk_size"] for r in prefill], dtype=float)
        self.pf_save = np.array([r["kv_cache_save_ms"] for r in prefill])
        self.mem = ratio.memory_bound if ratio else 1.0
        self.scale = ratio.op if ratio else None

    def iteration_ms(self, n_decode: int, prefill_attn: Sequence[tuple[int, float]] = (),
                     decode_attn_ms: float | None = None, decode_kv_save_ms: float | None = None) -> float:
        """Milliseconds of one iteration with prefill chunks [(chunk tokens, A100 attention ms per layer)] and
        `n_decode` decode rows whose A100 attention (and KV write, decode-only batches) per layer are given."""
        n_pf = sum(c for c, _ in prefill_attn)
        n = n_pf + n_decode
        per_layer = self.ops.layer(n, self.scale)
        if prefill_attn:
            for chunk, attn_ms in prefill_attn:
                per_layer += attn_ms * (self.ratio.compute(chunk) if self.ratio else 1.0)
            per_layer += interp_proportional(n, self.pf_tokens, self.pf_save) * self.mem
        if n_decode:
            per_layer += decode_attn_ms * self.mem
            if not prefill_attn:
                per_layer += decode_kv_save_ms * self.mem
        emb = self.ops.op("emb", n) * (self.ratio.op("emb", n) if self.ratio else 1.0)
        return LAYERS * per_layer + emb + self.overhead_ms * self.mem


def build_samples(ops: OpTable, attn: list[dict], overhead_ms: float, ratio: GpuRatio | None = None) -> list:
    """[(prefills, decode_contexts, seconds, kind)], one per iteration, each on a measured attention row:
      - prefill only: every `prefill` row (chunk 32..16384, prefix 0) -> prefills [(chunk, 0)];
      - chunked prefill: every `chunked_prefill` row -> [(64, kv)];
      - decode only: every `decode` row (batch B, kv K) -> B decode rows of context K;
      - mixed: prefill chunks 256, 512, 1024, 2048 (prefix 0) x every 3rd decode row with B <= 256."""
    prefill = [r for r in attn if r["kind"] == "prefill"]
    chunked = [r for r in attn if r["kind"] == "chunked_prefill"]
    decode = [r for r in attn if r["kind"] == "decode"]
    builder = IterationBuilder(ops, attn, overhead_ms, ratio)

    def sample(pf_row, dec_row, kind):
        prefills = [(pf_row["prefill_chunk_size"], pf_row["kv_cache_size"])] if pf_row else []
        decodes = [dec_row["kv_cache_size"]] * dec_row["batch_size"] if dec_row else []
        ms = builder.iteration_ms(
            dec_row["batch_size"] if dec_row else 0,
            [(pf_row["prefill_chunk_size"], pf_row["attn_ms"])] if pf_row else (),
            dec_row["attn_ms"] if dec_row else None, dec_row["kv_cache_save_ms"] if dec_row else None)
        return prefills, decodes, ms / 1000.0, kind

    samples = [sample(r, None, "prefill") for r in prefill]
    samples += [sample(r, None, "chunked_prefill") for r in chunked]
    samples += [sample(None, d, "decode") for d in decode]
    mix_dec = [d for d in decode if d["batch_size"] <= 256][::3]
    samples += [sample(p, d, "mixed") for p in prefill if p["prefill_chunk_size"] in MIX_CHUNKS for d in mix_dec]
    return samples
