"""The KV output reservation (one formula for the policies and the load estimate).

SGLang admits a request only if the KV pool can also hold `new_token_ratio` x the outputs the admitted requests
still owe; the policies and the router's load estimate hold back the same: ceil(ratio x outstanding outputs).
"""

from __future__ import annotations

import math

DEFAULT_OUTPUT_RESERVE_RATIO = 0.1
"""Fraction of the outstanding outputs whose KV is held back (every policy's `kv_reserve_output_ratio` default)."""


def output_reserve_tokens(outputs: int, ratio: float) -> int:
    """KV tokens held back for `outputs` future output tokens: ceil(ratio * outputs), 0 when either is <= 0."""
    if ratio <= 0.0 or outputs <= 0:
        return 0
    return math.ceil(ratio * outputs)
