"""Cost-model headroom: how much slower the iterations really run than the cost model predicts, as a high quantile
of measured/predicted over the recent iterations.

A least-squares fit predicts the typical iteration; a deadline scheduler needs the iteration it must not overrun.
Live (SGLang's CPU backend, online fit) the median measured/predicted ratio was 1.14 for decode steps and 1.16-1.19
for forwards with a prefix, p90 1.4: every plan sized to the budget overran it, and decodes planned at exactly one
TPOT per token fell behind for good. The adapter plans with the cost model scaled by this factor (`CostModel.scaled`);
the fitter and everything it saves keep the unscaled model. With an exact model (the simulator) the factor stays 1.
"""

from __future__ import annotations

import collections
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class HeadroomParams:
    window: int = 64
    """Recent iterations the quantile is taken over."""
    quantile: float = 0.8
    min_samples: int = 16
    """Below this many observations the factor is 1."""
    max_factor: float = 1.5
    """Cap: a burst of outliers (a page fault, a neighbour process) must not halve every plan."""

    def __post_init__(self) -> None:
        if self.window < 1 or not 1 <= self.min_samples <= self.window:
            raise ValueError("need window >= 1 and 1 <= min_samples <= window")
        if not 0.0 < self.quantile < 1.0:
            raise ValueError(f"quantile must be in (0, 1), got {self.quantile!r}")
        if not self.max_factor >= 1.0:
            raise ValueError(f"max_factor must be >= 1, got {self.max_factor!r}")


class Headroom:
    def __init__(self, params: HeadroomParams | None = None) -> None:
        self.params = params or HeadroomParams()
        self._ratios: collections.deque = collections.deque(maxlen=self.params.window)
        self.factor = 1.0

    def observe(self, predicted_s: float, measured_s: float) -> float:
        """Record one iteration; return the updated factor (>= 1, <= max_factor)."""
        if predicted_s > 0 and measured_s > 0:
            self._ratios.append(measured_s / predicted_s)
        p = self.params
        if len(self._ratios) >= p.min_samples:
            self.factor = min(max(quantile(self._ratios, p.quantile), 1.0), p.max_factor)
        return self.factor


def quantile(values, q: float) -> float:
    """numpy's default (linear) quantile of a few values, without numpy's per-call cost (the adapter and the simulator
    take one per iteration)."""
    s = sorted(values)
    pos = q * (len(s) - 1)
    i = int(pos)
    return s[i] + (s[i + 1] - s[i]) * (pos - i) if i + 1 < len(s) else s[i]
