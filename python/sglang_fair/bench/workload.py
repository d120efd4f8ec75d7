"""The trace a live benchmark replays: a window of a real trace, its lengths scaled to what the machine serves, written
as bench_serving's mooncake JSONL (replayed with its own timestamps, `--use-trace-timestamps`).

Scaling is explicit and recorded with every result:
- lengths: prompt and output tokens multiplied by `prompt_scale` / `output_scale`, rounded, clipped to
  [1, max_*_tokens];
- rate: arrival gaps divided by the rate scale (bench_serving's `--mooncake-slowdown-factor` is its inverse).
bench_serving builds each mooncake prompt from the record's `hash_ids` (about 129 tokens per id with this project's
tokenizer, plus a chat template), so live prompt lengths are quantized to blocks; the lengths a run really sent are
read back from bench_serving's per-request output and used wherever lengths matter (the simulator replay included).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from ..core.checks import check_positive
from ..sim.traces import Trace, load_trace, write_mooncake

MOONCAKE_BLOCK_TOKENS = 128
"""Tokens per hash id we ask bench_serving for (it writes 128 "hi" words plus the id per hash id)."""


@dataclass(frozen=True, slots=True)
class Workload:
    trace: str
    """Trace name (azure-code, azure-conv, sharegpt) or a path the simulator reads."""
    n_requests: int
    start_s: float = 0.0
    """Window start in the unscaled trace, seconds."""
    prompt_scale: float = 0.1
    output_scale: float = 1.0
    max_prompt_tokens: int = 1024
    max_output_tokens: int = 128
    seed: int = 0
    spread_arrivals: bool = False
    """Spread requests that share a timestamp up to the next distinct one (traces logged on a coarse clock)."""
    max_context_tokens: int | None = None
    """Clip each scaled request so prompt + output <= this (the served model's context)."""

    def __post_init__(self) -> None:
        if self.n_requests < 1:
            raise ValueError(f"n_requests must be >= 1, got {self.n_requests}")
        for name in ("prompt_scale", "output_scale"):
            check_positive(name, getattr(self, name))
        if self.max_prompt_tokens < 1 or self.max_output_tokens < 2:
            raise ValueError("max_prompt_tokens must be >= 1 and max_output_tokens >= 2")
        if self.max_context_tokens is not None and self.max_context_tokens < 3:
            raise ValueError(f"max_context_tokens must be >= 3, got {self.max_context_tokens}")

    def to_json(self) -> dict:
        return asdict(self)

    def build(self, shared=None) -> Trace:
        """The scaled window at rate scale 1, arrivals starting at 0."""
        full = load_trace(self.trace, shared=shared, seed=self.seed, spread_arrivals=self.spread_arrivals)
        win = full.window(self.start_s).head(self.n_requests)
        if len(win) < self.n_requests:
            raise ValueError(f"trace {self.trace} has only {len(win)} requests after {self.start_s} s "
                             f"(asked for {self.n_requests})")
        p = np.clip(np.rint(win.prompt_tokens * self.prompt_scale), 1, self.max_prompt_tokens).astype(np.int64)
        o = np.clip(np.rint(win.output_tokens * self.output_scale), 2, self.max_output_tokens).astype(np.int64)
        trace = Trace(f"{self.trace}[{self.start_s:g}s+{self.n_requests}]", win.arrival_s - win.arrival_s[0], p, o)
        if self.max_context_tokens is not None:
            trace = trace.clip_context(self.max_context_tokens)
        return trace

    def write(self, path: str | Path, shared=None) -> Trace:
        """Write the scaled window as mooncake JSONL; return it."""
        trace = self.build(shared)
        write_mooncake(path, trace, hash_block_tokens=MOONCAKE_BLOCK_TOKENS)
        return trace
