"""Iteration cost model.

    t_iter = base + per_prefill_token * sum(chunk)
                  + per_attn_token2 * sum(chunk * (prefix + chunk))
                  + per_decode_req * n_decodes
                  + per_context_token * sum(decode context)
                  + per_mixed_decode_req * n_decodes   [only when the batch also has prefill]

Linear in its coefficients, so it is fitted by least squares (see fit.py); prefill attention work grows with
chunk x (prefix + chunk), which is the quadratic term the CPU and GPU profiles both show for long chunks.
The last term is what a decode row costs beyond a pure decode step when it rides in a prefill forward (SGLang runs
a mixed batch through its extend path; with the CPU's torch_native attention a decode row there costs ~15-35 ms
instead of ~4 ms in a decode step; on GPUs the term fits to ~0). Policies that mix prefill with decodes see it, so a mixed step is
planned at its real cost and decodes with slack are better deferred.
All coefficients are seconds (per unit).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields

import numpy as np

FEATURES = ("base", "prefill_tokens", "attn_tokens2", "decode_reqs", "context_tokens", "mixed_decode_reqs")
MAX_CHUNK_TOKENS = 2**31 - 1
"""What max_chunk returns when prefill costs nothing (or the budget is unbounded)."""


@dataclass(frozen=True, slots=True)
class CostModel:
    base_s: float
    per_prefill_token_s: float
    per_attn_token2_s: float = 0.0
    per_decode_req_s: float = 0.0
    per_context_token_s: float = 0.0
    per_mixed_decode_req_s: float = 0.0

    def __post_init__(self) -> None:
        for name in _TERMS:
            value = getattr(self, name)
            if not (math.isfinite(value) and value >= 0.0):
                raise ValueError(f"CostModel.{name} must be finite and >= 0, got {value!r}")

    # ---- pieces, so policies can add up a batch incrementally -------------------------------------------------
    def prefill_s(self, chunk_tokens: int, prefix_tokens: int = 0) -> float:
        """Marginal time of one prefill chunk of `chunk_tokens` after `prefix_tokens` already in KV."""
        if chunk_tokens <= 0:
            return 0.0
        return chunk_tokens * (self.per_prefill_token_s + self.per_attn_token2_s * (prefix_tokens + chunk_tokens))

    def fine_prefill_s(self, remaining_tokens, prefix_tokens=0):
        """Marginal time of `remaining_tokens` prompt tokens after `prefix_tokens` in infinitely small chunks, the
        cheapest split under this model: R (b + a (x + R / 2)). Numbers or numpy arrays (no check that R > 0)."""
        return remaining_tokens * (self.per_prefill_token_s
                                   + self.per_attn_token2_s * (prefix_tokens + 0.5 * remaining_tokens))

    def decode_s(self, context_tokens: int) -> float:
        """Marginal time of one decode row reading `context_tokens` of KV."""
        return self.per_decode_req_s + self.per_context_token_s * context_tokens

    def mixed_s(self, n_decodes: int) -> float:
        """Extra time of `n_decodes` decode rows when they share a forward with prefill."""
        return self.per_mixed_decode_req_s * n_decodes

    def predict(self, prefills: list[tuple[int, int]] | tuple = (), decode_contexts: list[int] | tuple = ()) -> float:
        """Predicted time of an iteration with prefill chunks [(chunk, prefix), ...] and decode rows' contexts."""
        if not prefills and not decode_contexts:
            return 0.0
        t = self.base_s + sum(self.prefill_s(c, p) for c, p in prefills) + sum(self.decode_s(x) for x in decode_contexts)
        if prefills and decode_contexts:
            t += self.mixed_s(len(decode_contexts))
        return t

    def max_chunk(self, remaining_s: float, prefix_tokens: int = 0) -> int:
        """Largest chunk whose marginal prefill time fits in `remaining_s` (0 if none, MAX_CHUNK_TOKENS if unbounded)."""
        if not remaining_s > 0:  # also rejects NaN
            return 0
        a = self.per_attn_token2_s
        b = self.per_prefill_token_s + a * prefix_tokens
        if b <= 0 and a <= 0:
            return MAX_CHUNK_TOKENS
        # root of a x^2 + b x = remaining_s in the cancellation-free form (exact also when a << b^2 / remaining_s)
        x = 2.0 * remaining_s / (b + math.sqrt(b * b + 4.0 * a * remaining_s))
        if not x < MAX_CHUNK_TOKENS:
            return MAX_CHUNK_TOKENS
        n = int(x)
        while n > 0 and self.prefill_s(n, prefix_tokens) > remaining_s:  # guard float rounding
            n -= 1
        while n < MAX_CHUNK_TOKENS and self.prefill_s(n + 1, prefix_tokens) <= remaining_s:
            n += 1
        return n

    # ---- features / serialisation -----------------------------------------------------------------------------
    @staticmethod
    def features(prefills, decode_contexts) -> np.ndarray:
        """The regression row for one iteration, in FEATURES order."""
        return np.array([
            1.0,
            float(sum(c for c, _ in prefills)),
            float(sum(c * (p + c) for c, p in prefills)),
            float(len(decode_contexts)),
            float(sum(decode_contexts)),
            float(len(decode_contexts)) if prefills else 0.0,
        ])

    def coefficients(self) -> np.ndarray:
        return np.array([self.base_s, self.per_prefill_token_s, self.per_attn_token2_s,
                         self.per_decode_req_s, self.per_context_token_s, self.per_mixed_decode_req_s])

    @classmethod
    def from_coefficients(cls, coef) -> "CostModel":
        return cls(*(max(0.0, float(x)) for x in coef))

    def scaled(self, factor: float) -> "CostModel":
        """Every term multiplied by `factor` (the headroom a planner keeps for iterations slower than predicted)."""
        if not (math.isfinite(factor) and factor > 0):
            raise ValueError(f"scale factor must be finite and > 0, got {factor!r}")
        if factor == 1.0:
            return self
        return CostModel(*(getattr(self, name) * factor for name in _TERMS))

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "CostModel":
        return cls(**{k: float(d[k]) for k in cls.__dataclass_fields__ if k in d})


_TERMS = tuple(f.name for f in fields(CostModel))
"""The six terms in constructor order (validated and scaled without building a dict)."""
