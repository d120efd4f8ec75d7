"""The emulated accelerator: how long an A100 or H100 would take for ANY batch, from Vidur's operator profiles alone.

`DeviceModel.iteration_s(prefills, decode_contexts)` takes a batch as the rest of the package writes it (prefill
chunks [(chunk tokens, prefix tokens)] and one context length per decode row) and builds its time exactly as
`benchmark/fit_profiles.py` builds a profile sample (`profiles.IterationBuilder`: 32 layers x (layer ops at the
batch's token count + attention + KV write) + embedding + 1 ms LM head/sampling; H100 by the per-operator
H100/A100 ratio), with the attention of each chunk and of the decode rows interpolated from the attention sample
(`attention.py`). Several prefill chunks in one batch: their attention times add up, one kernel per request, as
Vidur predicts them; decode rows: one kernel for the batch at the rows' mean context, as Vidur does. The spec and
the emulated GPU's KV pool size live in `spec.py` (no numpy), re-exported here.

This is NOT the planner's fitted five-term CostModel (`core/cost_model.py`, presets fitted to the same samples):
it reproduces the samples themselves, not a least-squares summary of them, and it never reads the presets.

Every time is *emulated*: multiplied by the dilation `k` (an emulated GPU k times slower, so a small CPU model's
real forward fits inside it), optionally with seeded log-normal jitter of coefficient of variation `jitter_cv`
(mean 1, so the mean time is unchanged).
"""

from __future__ import annotations

import math
from functools import lru_cache
from typing import Sequence

import numpy as np

from .attention import DecodeAttention, PrefillAttention
from .profiles import IterationBuilder, Profiles, load_profiles
from .spec import DEVICE_PRESETS, DeviceSpec, kv_pool_tokens, parse_device_spec

__all__ = ["DEVICE_PRESETS", "DeviceModel", "DeviceSpec", "kv_pool_tokens", "parse_device_spec"]


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
