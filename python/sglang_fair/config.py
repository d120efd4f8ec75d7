"""Typed configuration shared by the CLI, the live adapter and the simulator. Units are in the field names."""

from __future__ import annotations

import math
from dataclasses import dataclass


def check_positive(name: str, value: float) -> float:
    """Raise ValueError naming `name` unless value is a finite number > 0."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
        raise ValueError(f"{name} must be a finite number > 0, got {value!r}")
    return float(value)


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
