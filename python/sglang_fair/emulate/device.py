"""The emulated accelerator: how long an A100 or H100 would take for ANY batch, from Vidur's operator profiles alone.

`DeviceModel.iteration_s(prefills, decode_contexts)` takes a batch as the rest of the package writes it (prefill
chunks [(chunk tokens, prefix tokens)] and one context length per decode row) and builds its time exactly as
`benchmark/fit_profiles.py` builds a profile sample (`profiles.IterationBuilder`: 32 layers x (layer ops at the
batch's token count + attention + KV write) + embedding + 1 ms LM head/sampling; H100 by the per-operator
H100/A100 ratio), with the attention of each chunk and of the decode rows interpolated from the attention sample
(`attention.py`). Several prefill chunks in one batch: their attention times add up, one kernel per request, as
Vidur predicts them; decode rows: one kernel for the batch at the rows' mean context, as Vidur does.

This is NOT the planner's fitted five-term CostModel (`core/cost_model.py`, presets fitted to the same samples):
it reproduces the samples themselves, not a least-squares summary of them, and it never reads the presets.

Every time is *emulated*: multiplied by the dilation `k` (an emulated GPU k times slower, so a small CPU model's
real forward fits inside it), optionally with seeded log-normal jitter of coefficient of variation `jitter_cv`
(mean 1, so the mean time is unchanged).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache
from typing import Sequence

import numpy as np

from .attention import DecodeAttention, PrefillAttention
from .profiles import DEFAULT_OVERHEAD_MS, IterationBuilder, Profiles, load_profiles

DEVICE_PRESETS = {"a100-llama3-8b": False, "h100-llama3-8b": True}
"""Emulated device name -> whether it is derived by the H100/A100 ratio (see profiles.py)."""

GPU_MEMORY_BYTES = 80 * 1024**3
"""A100-80GB and H100-80GB (SXM) memory."""
SGLANG_MEM_FRACTION_STATIC = 0.836
"""SGLang 0.5.23's default `--mem-fraction-static` on an 80 GiB GPU at TP 1 (arg_groups/memory_hook.py:
(81920 - reserved) / 81920 MiB with reserved = 512 + 1.5 x chunked_prefill_size 8192 + 128 (TP) + 2 x decode CUDA
graph max_bs 256 = 13440 MiB, rounded to 3 digits)."""
LLAMA3_8B_PARAMETERS = 8_030_261_248
LLAMA3_8B_WEIGHT_BYTES = LLAMA3_8B_PARAMETERS * 2  # bf16
LLAMA3_8B_KV_BYTES_PER_TOKEN = 2 * 32 * 8 * 128 * 2
"""K and V x 32 layers x 8 KV heads x head dim 128 x 2 bytes (bf16) = 128 KiB per token."""


def kv_pool_tokens(gpu_memory_bytes: int = GPU_MEMORY_BYTES, mem_fraction: float = SGLANG_MEM_FRACTION_STATIC,
                   weight_bytes: int = LLAMA3_8B_WEIGHT_BYTES,
                   kv_bytes_per_token: int = LLAMA3_8B_KV_BYTES_PER_TOKEN) -> int:
    """Tokens of KV cache SGLang would allocate for Llama-3-8B on the emulated GPU: (memory x SGLang's default static
    fraction - the bf16 weights) / KV bytes per token. For 80 GB (A100 and H100 alike): (68.5 GiB - 15.0 GiB) /
    128 KiB = 425,356 tokens (SGLang also keeps a few small pools in the static share; this ignores them)."""
    free = gpu_memory_bytes * mem_fraction - weight_bytes
    if free <= 0:
        raise ValueError("the weights do not fit in the static memory share")
    return int(free // kv_bytes_per_token)


@dataclass(frozen=True)
class DeviceSpec:
    """Which emulated GPU, how much slower than it (`dilation`), and its timing noise."""

    preset: str = "a100-llama3-8b"
    dilation: float = 1.0
    """Every emulated time is multiplied by this (>= 1 on a CPU whose real forward is slower than the GPU's)."""
    jitter_cv: float = 0.0
    """Coefficient of variation of the log-normal per-iteration noise (0 = deterministic)."""
    seed: int = 0
    overhead_ms: float = DEFAULT_OVERHEAD_MS
    """A100 per-iteration LM head + sampling constant (the profiles lack those operators), as fit_profiles.py."""

    def __post_init__(self) -> None:
        if self.preset not in DEVICE_PRESETS:
            raise ValueError(f"unknown emulated device {self.preset!r}; choose one of {', '.join(DEVICE_PRESETS)}")
        if not (math.isfinite(self.dilation) and self.dilation > 0):
            raise ValueError(f"dilation must be a positive number, got {self.dilation!r}")
        if not (math.isfinite(self.jitter_cv) and 0 <= self.jitter_cv <= 2):
            raise ValueError(f"jitter_cv must be in [0, 2], got {self.jitter_cv!r}")
        if not (math.isfinite(self.overhead_ms) and self.overhead_ms >= 0):
            raise ValueError(f"overhead_ms must be >= 0, got {self.overhead_ms!r}")

    def text(self) -> str:
        return self.preset if self.dilation == 1 else f"{self.preset}:{self.dilation:g}"


def parse_device_spec(text: str, *, jitter_cv: float = 0.0, seed: int = 0) -> DeviceSpec:
    """`PRESET[:DILATION]`, e.g. `a100-llama3-8b` or `h100-llama3-8b:20`; ValueError says what is wrong."""
    if not isinstance(text, str) or not text.strip():
        raise ValueError(f"expected PRESET[:DILATION] with PRESET one of {', '.join(DEVICE_PRESETS)}, got {text!r}")
    name, sep, raw = text.strip().partition(":")
    if name not in DEVICE_PRESETS:
        raise ValueError(f"unknown emulated device {name!r} in {text!r}; choose one of {', '.join(DEVICE_PRESETS)}")
    dilation = 1.0
    if sep:
        try:
            dilation = float(raw)
        except ValueError:
            raise ValueError(f"dilation in {text!r} must be a number (PRESET:DILATION, e.g. {name}:10)") from None
        if not (math.isfinite(dilation) and dilation > 0):
            raise ValueError(f"dilation in {text!r} must be a positive finite number")
    return DeviceSpec(preset=name, dilation=dilation, jitter_cv=jitter_cv, seed=seed)


@lru_cache(maxsize=1)
def _shared_parts() -> tuple[Profiles, PrefillAttention, DecodeAttention]:
    """The shipped profiles and their attention surfaces, built once per process (about 1.5 s)."""
    p = load_profiles()
    return p, PrefillAttention(p.attn), DecodeAttention(p.attn)


class DeviceModel:
    """Emulated iteration times of one GPU preset (see the module docstring)."""

    def __init__(self, spec: DeviceSpec, profiles: Profiles | None = None) -> None:
        self.spec = spec
        if profiles is None:
            profiles, self.prefill_attn, self.decode_attn = _shared_parts()
        else:
            self.prefill_attn, self.decode_attn = PrefillAttention(profiles.attn), DecodeAttention(profiles.attn)
        ratio = profiles.ratio if DEVICE_PRESETS[spec.preset] else None
        self.builder = IterationBuilder(profiles.ops, profiles.attn, spec.overhead_ms, ratio)
        dec = [r["kv_cache_save_ms"] for r in profiles.attn if r["kind"] == "decode"]
        self.decode_kv_save_ms = float(np.median(dec))
        self._rng = np.random.default_rng(spec.seed)
        cv = spec.jitter_cv
        self._sigma = math.sqrt(math.log1p(cv * cv)) if cv > 0 else 0.0
        self.kv_pool_tokens = kv_pool_tokens()

    def undilated_ms(self, prefills: Sequence[tuple[int, int]] = (), decode_contexts: Sequence[int] = ()) -> float:
        """The emulated GPU's own time (ms) for one batch, before dilation and jitter; 0 for an empty batch."""
        chunks = [(int(c), int(p)) for c, p in prefills if c > 0]
        rows = len(decode_contexts)
        if not chunks and not rows:
            return 0.0
        pf = [(c, self.prefill_attn(c, p)) for c, p in chunks]
        dec_ms = self.decode_attn(rows, float(sum(decode_contexts)) / rows) if rows else None
        return self.builder.iteration_ms(rows, pf, dec_ms, self.decode_kv_save_ms if rows else None)

    def iteration_s(self, prefills: Sequence[tuple[int, int]] = (), decode_contexts: Sequence[int] = ()) -> float:
        """Emulated seconds for one batch: the GPU's time x dilation (deterministic, no jitter)."""
        return self.undilated_ms(prefills, decode_contexts) * self.spec.dilation / 1000.0

    def sample_s(self, prefills: Sequence[tuple[int, int]] = (), decode_contexts: Sequence[int] = ()) -> float:
        """`iteration_s` with the spec's log-normal jitter (mean 1; the draws follow `seed`)."""
        t = self.iteration_s(prefills, decode_contexts)
        if self._sigma and t > 0:
            t *= math.exp(self._sigma * float(self._rng.standard_normal()) - self._sigma ** 2 / 2)
        return t
