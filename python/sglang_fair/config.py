"""Typed configuration shared by the CLI, the live adapter and the simulator. Units are in the field names."""

from __future__ import annotations

from dataclasses import dataclass

from .core.checks import check_positive


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
