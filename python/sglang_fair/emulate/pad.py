"""Padding SGLang's forward to the emulated accelerator's time.

The seam is `Scheduler.run_batch(batch)`: with `--disable-overlap-schedule` (which `sglang-fair serve` sets on a
CPU) the whole forward, sampling included, runs inside it, and the scheduler processes the result right after it
returns. `Padder.run` wraps it: it reads the batch's shape (`batch_shape`), runs the real forward, then waits until
`start + emulated time` of exactly that batch, so the scheduler, the policies' cost fit and the clients see the
emulated GPU's iteration time. Scheduling work outside `run_batch` stays real (it is host work on a GPU server
too). When the real forward is longer than the emulated time there is nothing to wait for: that iteration is an
*overrun* (counted; raise the dilation until overruns are rare).

Overlap (`overlap=True`, the default: SGLang runs its overlap scheduler on a GPU). On a GPU the host work for batch
N+1 (receiving requests, processing N's result, forming N+1: the policy's planning included) runs while N is on the
device, so the device starts N+1 right after N: the iteration period is max(device time, host time), not their
sum. Here the loop is sequential (the padder needs the forward inside run_batch), so the host gap h between the end
of N's padded forward and N+1's start is credited: N+1 is padded to `emulated - credit` with credit = min(h, N's
emulated time), i.e. it ends where the GPU's would, N's end + its emulated time. No credit after an idle loop pass
(`sched.last_batch is None`: the scheduler had nothing to run, so the device was idle, not overlapped) or after a
forward of an empty batch. An overrun is then a forward whose host gap + real time exceeded its emulated time.
`last_credit_s` tells the policy's own timing (engine/scheduler_hooks.py) that the forward began on the emulated
device that much before run_batch was called, as the GPU's overlap loop measures it (launch .. result).
What this does not emulate: in the overlap loop the batch is formed before the previous result is processed, so
the policies see a state one result older than here.

Waiting: `sleep` to within `spin_s` (0.5 ms) of the deadline, then a busy-wait on the clock, because a plain
sleep on Linux overshoots by 50-100 us, more on a loaded machine. Measured on this 2-core machine (20 ms padded,
200 waits): load 5-6: median 18-30 us late, p90 44 us; load 7-10 (oversubscribed): median 18 us, p90 3.8 ms, max
8 ms (the wake-up waits for a core). A longer spin (tried: up to 5 ms, sized by the observed overshoot) was worse
under load (median 3.5 ms): a busy-waiting process is preempted in its spin instead.
"""

from __future__ import annotations

import collections
import logging
import time
from dataclasses import asdict, dataclass, field
from typing import Callable

from .device import DeviceModel

logger = logging.getLogger("sglang_fair")

SPIN_S = 0.0005
KINDS = ("decode", "prefill", "mixed")


def batch_kind(prefills: list, decodes: list) -> str:
    return "mixed" if prefills and decodes else ("prefill" if prefills else "decode")
RECENT = 64


def batch_shape(batch) -> tuple[list[tuple[int, int]], list[int]]:
    """(prefill chunks [(new tokens, prefix tokens)], decode contexts) of a SGLang ScheduleBatch about to run.

    - decode batch: one row per request, context = its sequence length with the token being decoded
      (`seq_lens_cpu`, else each request's `seqlen`);
    - extend batch (prefill, chunked prefill, or MIXED = a prefill with the running decodes folded in): per request
      `extend_lens[i]` new tokens after `prefix_lens[i]` cached ones; the rows of `decoding_reqs` (a mixed batch's
      decodes, extend length 1) are decode rows of context prefix + 1;
    - anything else (idle, prebuilt): empty."""
    mode = batch.forward_mode
    reqs = list(batch.reqs or ())
    if mode.is_decode():
        seq = getattr(batch, "seq_lens_cpu", None)
        lens = seq.tolist() if seq is not None and len(seq) == len(reqs) else [r.seqlen for r in reqs]
        return [], [int(x) for x in lens]
    if not mode.is_extend():
        return [], []
    decoding = {id(r) for r in (getattr(batch, "decoding_reqs", None) or ())}
    ext, pre = list(batch.extend_lens or ()), list(batch.prefix_lens or ())
    prefills, decodes = [], []
    for i, req in enumerate(reqs):
        e = int(ext[i]) if i < len(ext) else 0
        p = int(pre[i]) if i < len(pre) else 0
        if id(req) in decoding:
            decodes.append(p + 1)
        elif e > 0:
            prefills.append((e, p))
    return prefills, decodes


@dataclass
class PadCounters:
    """What the padder did, all times in seconds (emulated = the device model's; real = the CPU forward's)."""

    iterations: int = 0
    overruns: int = 0
    emulated_s: float = 0.0
    real_s: float = 0.0
    waited_s: float = 0.0
    overrun_s: float = 0.0
    max_overrun_s: float = 0.0
    late_s_max: float = 0.0
    """Largest lateness of a padded iteration's end past its deadline (the wait's own precision)."""
    overlap_credit_s: float = 0.0
    """Host time between forwards hidden behind the previous forward's emulated time (overlap; see the docstring)."""
    by_kind: dict = field(default_factory=lambda: {k: [0, 0] for k in KINDS})
    """kind -> [forwards, overruns]: which batches the CPU cannot finish in time (decode, prefill, mixed)."""

    def as_dict(self) -> dict:
        d = asdict(self)
        d["overrun_fraction"] = self.overruns / self.iterations if self.iterations else 0.0
        return d


class Padder:
    """Wraps one scheduler's `run_batch` (see the module docstring). `clock`/`sleep` are injectable for tests."""

    def __init__(self, device: DeviceModel, *, clock: Callable[[], float] = time.perf_counter,
                 sleep: Callable[[float], None] = time.sleep, spin_s: float = SPIN_S,
                 log_every_s: float | None = 30.0, overlap: bool = False) -> None:
        if spin_s < 0:
            raise ValueError("spin_s must be >= 0")
        self.device, self.clock, self.sleep, self.spin_s = device, clock, sleep, spin_s
        self.overlap = overlap
        self.last_credit_s = 0.0
        """The overlap credit of the latest forward (0 without overlap)."""
        self._prev_end: float | None = None
        self._prev_emulated_s = 0.0
        self.counters = PadCounters()
        self.recent: collections.deque = collections.deque(maxlen=RECENT)
        """The last RECENT forwards: prefill tokens, decode rows, emulated and real ms (what dilation would fit)."""
        self.log_every_s = log_every_s
        self._last_log = clock()
        self.on_forward: Callable[[dict], None] | None = None
        """Called with each counted forward's record (batch kind, prefill tokens, decode rows, emulated / real / credit
        ms, overrun), after its padding wait (`--fair-trace`'s `device` records)."""
        self.on_account: Callable[[PadCounters], None] | None = None
        """Called with the counters after each counted forward, before the padding wait (report.py publishes the
        Prometheus gauges from it); an exception from it is logged once and the callback dropped."""

    def wait_until(self, deadline: float) -> float:
        """Return when `clock()` >= deadline (sleep, then spin for the last `spin_s`); returns the clock then."""
        now = self.clock()
        remaining = deadline - now
        if remaining > self.spin_s:
            self.sleep(remaining - self.spin_s)
            now = self.clock()
        while now < deadline:
            now = self.clock()
        return now

    def run(self, original: Callable, sched, batch, *args, **kwargs):
        """`original(sched, batch, ...)`, returning no earlier than its start + the batch's emulated time."""
        t0 = self.clock()
        busy = getattr(sched, "last_batch", None) is not None  # the loop's previous pass ran a forward
        prefills, decodes = batch_shape(batch)
        emulated = self.device.sample_s(prefills, decodes) if (prefills or decodes) else 0.0
        result = original(sched, batch, *args, **kwargs)
        t1 = self.clock()
        kind = batch_kind(prefills, decodes)
        overruns = self.counters.overruns
        self.account(t0, t1, emulated, kind, busy=busy)
        if emulated > 0:
            tokens = sum(c for c, _ in prefills)
            self.recent.append((tokens, len(decodes), emulated * 1e3, (t1 - t0) * 1e3))
            if self.on_forward is not None:
                self.on_forward({"t_s": t0, "batch": kind, "prefill_tokens": tokens,
                                 "decode_rows": len(decodes), "emulated_ms": emulated * 1e3,
                                 "real_ms": (t1 - t0) * 1e3, "credit_ms": self.last_credit_s * 1e3,
                                 "overrun": self.counters.overruns > overruns})
        return result

    def overlap_credit(self, t0: float, busy: bool) -> float:
        """Host time before a forward starting at t0 that the overlap loop hides (module docstring)."""
        if not (self.overlap and busy) or self._prev_end is None:
            return 0.0
        return min(max(0.0, t0 - self._prev_end), self._prev_emulated_s)

    def account(self, t0: float, t1: float, emulated_s: float, kind: str = "decode", *, busy: bool = False) -> None:
        """Book one forward that ran from t0 to t1 and should take `emulated_s`: wait for the rest, or count an
        overrun. `busy`: the scheduler ran a forward in its previous loop pass (overlap credit applies). Forwards
        of empty batches (emulated 0) are not counted and break the overlap chain."""
        self.last_credit_s = 0.0
        if emulated_s <= 0:
            self._prev_end = None
            return
        c = self.counters
        credit = self.overlap_credit(t0, busy)
        self.last_credit_s = credit
        c.overlap_credit_s += credit
        real = t1 - t0
        target = emulated_s - credit  # what is left of the forward's device time after the overlapped host work
        c.iterations += 1
        c.emulated_s += emulated_s
        c.real_s += real
        c.by_kind[kind][0] += 1
        if real > target:
            c.overruns += 1
            c.by_kind[kind][1] += 1
            c.overrun_s += real - target
            c.max_overrun_s = max(c.max_overrun_s, real - target)
        if self.on_account is not None:
            try:
                self.on_account(c)
            except Exception:  # noqa: BLE001  (reporting must never stop serving)
                logger.exception("emulated device: reporting the counters failed; no more reports")
                self.on_account = None
        end = t1
        if real <= target:
            deadline = t0 + target
            end = self.wait_until(deadline)
            c.waited_s += end - t1
            c.late_s_max = max(c.late_s_max, end - deadline)
        self._prev_end, self._prev_emulated_s = end, emulated_s
        if self.log_every_s is not None and t1 - self._last_log >= self.log_every_s:
            self._last_log = t1
            logger.info("emulated device %s: %s", self.device.spec.text(), self.summary())

    def summary(self) -> str:
        c = self.counters
        return (f"{c.iterations} iterations, {c.overruns} overruns ({c.overrun_s * 1e3:.0f} ms, max "
                f"{c.max_overrun_s * 1e3:.1f} ms), emulated {c.emulated_s:.2f} s, real forward {c.real_s:.2f} s")
