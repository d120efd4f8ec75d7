"""What a live run's iterations did, per bucket of time, beside its simulated twin's
(`benchmark/overload_recovery.py --compare-live`).

The live side comes from the server's `--fair-trace` (core/trace.py): its `device` records (the emulated device's
forwards) and `plan` records, placed on the schedule's clock by the trace's `start` record and divided by the
dilation, so both sides are on the emulated device's clock. The twin's side is the same rows taken from the simulator
(`TwinRecorder`). Per bucket:
- `busy`: the fraction of the bucket the device spent on forwards. Live, a forward occupies the device from its
  emulated start (its host gap's overlap credit before `run_batch`) for its emulated time, or to its real end when it
  overran; what is left is the device idle (no work, or host work the overlap could not hide). The simulator has no
  host time: its device is busy whenever there is work.
- `prefill_tokens_per_s`, `decode_rows_per_s`: what the forwards served, per second of the bucket;
- `tokens_per_busy_s`: prompt tokens per second of device time (how the device's time was spent);
- `predicted_over_device`: the plans' predicted iteration times over the device times of the forwards that ran them
  (sum over the bucket: how the planner's cost model, fit and headroom compare with the device);
- `running`, `waiting` (median over the bucket's plans), `demoted_max`, `aged_max` (the largest lists a plan held).
Pure: no SGLang, no I/O.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

from .trace_report import wall_offset_s


@dataclass(frozen=True, slots=True)
class Forward:
    start_s: float
    """On the device's clock, from the schedule's start."""
    device_s: float
    """Device time the forward occupied (emulated, or its real time past an overrun)."""
    prefill_tokens: int
    decode_rows: int


@dataclass(frozen=True, slots=True)
class PlanRow:
    t_s: float
    running: int
    waiting: int
    demoted: int
    aged: int
    predicted_s: float
    """The plan's predicted iteration (0 for a plan that runs nothing)."""


def live_rows(records: dict[str, list[dict]], schedule_wall_s: float,
              dilation: float) -> tuple[list[Forward], list[PlanRow]]:
    """(forwards, plans) of a trace (`bench.trace_report.read_trace`'s records) on the device's clock, from the
    schedule's start at wall time `schedule_wall_s`."""
    if not dilation > 0:
        raise ValueError(f"dilation must be > 0, got {dilation!r}")
    zero = schedule_wall_s - wall_offset_s(records)  # the schedule's start on the scheduler's clock

    def t(x: float) -> float:
        return (x - zero) / dilation

    fwd = [Forward(t(d["t_s"] - d.get("credit_ms", 0.0) / 1e3),
                   max(d["emulated_ms"], d["real_ms"] + d.get("credit_ms", 0.0)) / 1e3 / dilation,
                   int(d.get("prefill_tokens", 0)), int(d.get("decode_rows", 0)))
           for d in records.get("device", [])]
    plans = [PlanRow(t(p["t_s"]), int(p.get("running", 0)), int(p.get("waiting", 0)), int(p.get("demoted", 0)),
                     int(p.get("aged", 0)),
                     (p.get("predicted_ms", 0.0) / 1e3 / dilation) if p.get("decode", 0) or p.get("prefill_tokens", 0)
                     else 0.0)
             for p in records.get("plan", []) if not p.get("stock")]
    return fwd, plans


class TwinRecorder:
    """The simulator's side: wrap the policy (`policy(p)`) and the true iteration time (`iteration_time(f)`) of one
    `sim.engine.simulate` run; every plan becomes a `PlanRow` and every iteration a `Forward` starting at the plan's
    `now` (the simulator runs an iteration right after planning it)."""

    def __init__(self) -> None:
        self.forwards: list[Forward] = []
        self.plans: list[PlanRow] = []
        self._now = 0.0

    def policy(self, policy):
        rec = self

        class Recorded:
            def __getattr__(self, name):
                return getattr(policy, name)

            def plan(self, snap):
                plan = policy.plan(snap)
                rec._now = snap.now
                rec.plans.append(PlanRow(snap.now, len(snap.running), len(snap.waiting), len(plan.demoted),
                                         len(plan.aged), plan.predicted_s if plan.prefill or plan.decode else 0.0))
                return plan

        return Recorded()

    def iteration_time(self, fn):
        def timed(prefills, decodes):
            t = fn(prefills, decodes)
            self.forwards.append(Forward(self._now, t, int(sum(c for c, _ in prefills)), len(decodes)))
            return t
        return timed


def _median(xs: list[float]) -> float | None:
    return float(np.median(xs)) if xs else None


def bucket_rows(forwards: Sequence[Forward], plans: Sequence[PlanRow], bucket_s: float, end_s: float) -> list[dict]:
    """The figures of the module docstring per bucket [i * bucket_s, (i + 1) * bucket_s) up to `end_s`; a forward
    counts in the bucket it started in, its device time clipped to that bucket for `busy`."""
    if not (bucket_s > 0 and end_s > 0):
        raise ValueError(f"bucket_s and end_s must be > 0, got {bucket_s!r}, {end_s!r}")
    n = int(np.ceil(end_s / bucket_s))
    rows = []
    for i in range(n):
        lo, hi = i * bucket_s, min((i + 1) * bucket_s, end_s)
        fw = [f for f in forwards if lo <= f.start_s < hi]
        pl = [p for p in plans if lo <= p.t_s < hi]
        span = hi - lo
        busy = sum(min(f.start_s + f.device_s, hi) - max(f.start_s, lo) for f in forwards
                   if f.start_s < hi and f.start_s + f.device_s > lo)
        dev = sum(f.device_s for f in fw)
        tokens = sum(f.prefill_tokens for f in fw)
        predicted = sum(p.predicted_s for p in pl)
        rows.append({"start_s": round(lo, 3), "forwards": len(fw), "busy": round(busy / span, 4),
                     "prefill_tokens_per_s": round(tokens / span, 1),
                     "decode_rows_per_s": round(sum(f.decode_rows for f in fw) / span, 1),
                     "tokens_per_busy_s": round(tokens / dev, 1) if dev > 0 else None,
                     "predicted_over_device": round(predicted / dev, 4) if dev > 0 and predicted > 0 else None,
                     "running": _median([p.running for p in pl]), "waiting": _median([p.waiting for p in pl]),
                     "demoted_max": max((p.demoted for p in pl), default=0),
                     "aged_max": max((p.aged for p in pl), default=0)})
    return rows
