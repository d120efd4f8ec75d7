"""SLOs: the server-wide defaults (`SloConfig`) and the per-request overrides a request carries in
`sampling_params.custom_params`: {"ttft_slo_ms": float, "tpot_slo_ms": float, "strict": bool}; missing keys take the
defaults. Values must be finite numbers in [1 microsecond, 1 hour]; any other key starting with "ttft" or "tpot" is
rejected as a likely typo. `parse_request_slos` is the one parser: the HTTP layer (400 before a request reaches the scheduler),
the scheduler's intake (every entry point) and the snapshot all call it."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Mapping

from ..core.checks import check_positive


@dataclass(frozen=True, slots=True)
class SloConfig:
    """Default per-request SLOs; a request may carry its own."""

    ttft_slo_ms: float = 1000.0
    """Time to first token target, milliseconds."""
    tpot_slo_ms: float = 150.0
    """Time per output token target (after the first), milliseconds."""

    def __post_init__(self) -> None:
        check_positive("ttft_slo_ms", self.ttft_slo_ms)
        check_positive("tpot_slo_ms", self.tpot_slo_ms)

    @property
    def ttft_slo_s(self) -> float:
        return self.ttft_slo_ms / 1000.0

    @property
    def tpot_slo_s(self) -> float:
        return self.tpot_slo_ms / 1000.0


TTFT_KEY = "ttft_slo_ms"
TPOT_KEY = "tpot_slo_ms"
STRICT_KEY = "strict"
SLO_KEYS = (TTFT_KEY, TPOT_KEY, STRICT_KEY)
MAX_SLO_MS = 3_600_000.0
"""Largest per-request SLO accepted (one hour): anything longer is a unit mistake, not an SLO."""
MIN_SLO_MS = 0.001
"""Smallest per-request SLO accepted (one microsecond): anything shorter is a unit mistake too, and a subnormal
float such as 5e-324 ms would become an SLO of 0 seconds."""


def parse_request_slos(custom_params: Mapping[str, Any] | None, default: SloConfig) -> tuple[float, float, bool]:
    """(ttft_slo_s, tpot_slo_s, strict) for one request; raises ValueError naming the bad key."""
    if not custom_params:
        return default.ttft_slo_s, default.tpot_slo_s, False
    if not isinstance(custom_params, Mapping):
        raise ValueError(f"custom_params must be an object, got {type(custom_params).__name__}")
    for key in custom_params:
        if isinstance(key, str) and key.startswith(("ttft", "tpot")) and key not in SLO_KEYS:
            raise ValueError(f"unknown SLO key {key!r} in custom_params (known: {', '.join(SLO_KEYS)})")
    out = []
    for key, dflt in ((TTFT_KEY, default.ttft_slo_ms), (TPOT_KEY, default.tpot_slo_ms)):
        v = custom_params.get(key, dflt)
        if (isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v < MIN_SLO_MS
                or v > MAX_SLO_MS):
            raise ValueError(f"{key} must be a finite number in [{MIN_SLO_MS:g}, {MAX_SLO_MS:.0f}] (milliseconds), "
                             f"got {v!r}")
        out.append(float(v) / 1000.0)
    strict = custom_params.get(STRICT_KEY, False)
    if not isinstance(strict, bool):
        raise ValueError(f"{STRICT_KEY} must be true or false, got {strict!r}")
    return out[0], out[1], strict
