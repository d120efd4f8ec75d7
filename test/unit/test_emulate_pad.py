"""Padding the forward to the emulated device's time (emulate/pad.py), with fake SGLang batches and forwards."""

from __future__ import annotations

import os
import time
from types import SimpleNamespace

import numpy as np
import pytest

from sglang_fair.emulate.device import DeviceModel, DeviceSpec
from sglang_fair.emulate.pad import Padder, batch_shape


# ---- fake SGLang objects ------------------------------------------------------------------------------------------
def mode(kind: str):
    return SimpleNamespace(is_decode=lambda: kind == "decode", is_extend=lambda: kind in ("extend", "mixed"))


def req(seqlen: int = 0):
    return SimpleNamespace(seqlen=seqlen)


def extend_batch(prefills, decode_prefixes=(), kind=None):
    """A prefill batch [(extend, prefix)], with decode rows (prefix = context - 1) folded in as SGLang mixes them."""
    pre_reqs = [req() for _ in prefills]
    dec_reqs = [req() for _ in decode_prefixes]
    return SimpleNamespace(forward_mode=mode(kind or ("mixed" if dec_reqs else "extend")), reqs=pre_reqs + dec_reqs,
                           extend_lens=[e for e, _ in prefills] + [1] * len(dec_reqs),
                           prefix_lens=[p for _, p in prefills] + list(decode_prefixes),
                           decoding_reqs=dec_reqs or None)


def decode_batch(contexts, with_tensor=True):
    seq = np.array(contexts) if with_tensor else None
    return SimpleNamespace(forward_mode=mode("decode"), reqs=[req(c) for c in contexts], seq_lens_cpu=seq)


class FixedDevice:
    """A device model stub with one fixed emulated time."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.spec = DeviceSpec()

    def sample_s(self, prefills, decodes) -> float:
        return self.seconds


def sleeping_forward(seconds: float):
    calls = []

    def run_batch(sched, batch):
        calls.append(batch)
        time.sleep(seconds)
        return "result"
    run_batch.calls = calls
    return run_batch


# ---- batch -> (prefills, decode contexts) --------------------------------------------------------------------------
def test_shape_of_a_prefill_batch():
    assert batch_shape(extend_batch([(512, 0), (64, 4096)])) == ([(512, 0), (64, 4096)], [])


def test_shape_of_a_mixed_batch():
    b = extend_batch([(300, 1000)], decode_prefixes=[99, 2047])
    assert batch_shape(b) == ([(300, 1000)], [100, 2048])


def test_shape_of_a_decode_batch():
    assert batch_shape(decode_batch([10, 2000, 5])) == ([], [10, 2000, 5])
    assert batch_shape(decode_batch([7, 8], with_tensor=False)) == ([], [7, 8])


def test_shape_of_other_batches_is_empty():
    idle = SimpleNamespace(forward_mode=mode("idle"), reqs=[])
    assert batch_shape(idle) == ([], [])
    assert batch_shape(extend_batch([(0, 5)])) == ([], [])  # nothing new to compute


# ---- padding ------------------------------------------------------------------------------------------------------
def test_pads_to_the_emulated_time_within_a_millisecond():
    pad = Padder(FixedDevice(0.020), log_every_s=None)
    fwd = sleeping_forward(0.002)
    batch = decode_batch([100] * 4)
    errs = []
    for _ in range(20):
        t0 = time.perf_counter()
        assert pad.run(fwd, None, batch) == "result"
        errs.append(time.perf_counter() - t0 - 0.020)
    assert len(fwd.calls) == 20 and fwd.calls[0] is batch
    # never early; late by the wait's precision: measured 18-70 us median on this 2-core machine at load 5-6. A
    # saturated machine (load 10 on 2 cores: other test suites) preempts the spinning process for ms at a time
    # (median 2 ms measured), so there the bound is 10 ms.
    bound_s = 0.001 if os.getloadavg()[0] <= 1.5 * (os.cpu_count() or 1) else 0.010
    assert min(errs) >= 0 and float(np.median(errs)) < bound_s, errs
    c = pad.counters
    assert c.iterations == 20 and c.overruns <= 2  # a preempted 2 ms sleep can outlast 20 ms on a loaded machine
    assert c.emulated_s == pytest.approx(0.4) and 0.04 <= c.real_s
    if c.overruns == 0:  # each padded wait = the rest of its emulated time + its lateness
        assert c.emulated_s - c.real_s <= c.waited_s <= c.emulated_s - c.real_s + c.iterations * c.late_s_max


def test_pads_to_the_real_device_model():
    dev = DeviceModel(DeviceSpec("a100-llama3-8b", dilation=3.0))
    batch = extend_batch([(512, 0)], decode_prefixes=[1023] * 16)
    want = dev.iteration_s([(512, 0)], [1024] * 16)
    pad = Padder(dev, log_every_s=None)
    took = []
    for _ in range(5):
        t0 = time.perf_counter()
        pad.run(sleeping_forward(0.001), None, batch)
        took.append(time.perf_counter() - t0)
    assert want <= min(took) < want + 0.001
    assert pad.counters.emulated_s == pytest.approx(5 * want)


def test_a_slower_forward_is_an_overrun_and_is_not_padded():
    pad = Padder(FixedDevice(0.005), log_every_s=None)
    fwd = sleeping_forward(0.015)
    for _ in range(3):
        pad.run(fwd, None, decode_batch([10]))
    c = pad.counters
    assert (c.iterations, c.overruns) == (3, 3) and c.waited_s == 0  # nothing added to a slow forward
    assert c.overrun_s >= 3 * 0.0099 and c.max_overrun_s >= 0.0099
    assert c.overrun_s == pytest.approx(c.real_s - c.emulated_s)
    assert c.as_dict()["overrun_fraction"] == 1.0
    assert c.by_kind == {"decode": [3, 3], "prefill": [0, 0], "mixed": [0, 0]}  # which batches overran
    pad.run(lambda *a: None, None, decode_batch([10]))  # an instant forward: padded, counted, not an overrun
    assert c.by_kind["decode"] == [4, 3] and c.overruns == 3


def test_empty_batches_are_neither_padded_nor_counted():
    pad = Padder(FixedDevice(0.050), log_every_s=None)
    t0 = time.perf_counter()
    pad.run(sleeping_forward(0.0), None, SimpleNamespace(forward_mode=mode("idle"), reqs=[]))
    assert time.perf_counter() - t0 < 0.040 and pad.counters.iterations == 0


def test_waits_by_sleep_then_spin_on_an_injected_clock():
    now = [100.0]
    slept = []

    def clock():
        now[0] += 0.0001  # each reading advances the clock 0.1 ms
        return now[0]

    def sleep(s):
        slept.append(s)
        now[0] += s

    pad = Padder(FixedDevice(0.010), clock=clock, sleep=sleep, spin_s=0.0005, log_every_s=None)
    now[0] = 100.0
    end = pad.wait_until(100.0 + 0.010)
    assert slept == [pytest.approx(0.010 - 0.0001 - 0.0005)] and end >= 100.010
    assert pad.wait_until(50.0) > 50.0 and len(slept) == 1  # past deadline: no sleep


def test_padder_validates():
    with pytest.raises(ValueError):
        Padder(FixedDevice(0.01), spin_s=-1)


# ---- overlap: host time between forwards hidden behind the previous forward --------------------------------------
class ManualClock:
    """A clock that moves only when told: sleeps and fake forwards advance it exactly."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def sleep(self, s: float) -> None:
        self.now += s

    def forward(self, real_s: float):
        def run_batch(sched, batch):
            self.now += real_s
        return run_batch


def overlap_padder(emulated_s: float, *, overlap: bool = True):
    clock = ManualClock()
    pad = Padder(FixedDevice(emulated_s), clock=clock, sleep=clock.sleep, spin_s=0.0, log_every_s=None,
                 overlap=overlap)
    return pad, clock


BUSY, IDLE = SimpleNamespace(last_batch=object()), SimpleNamespace(last_batch=None)


def test_overlap_hides_the_host_gap_so_forwards_end_one_emulated_time_apart():
    pad, clock = overlap_padder(0.050)
    pad.run(clock.forward(0.010), IDLE, decode_batch([10]))
    first_end = clock.now
    assert pad.last_credit_s == 0.0  # nothing ran before it: no credit
    clock.now += 0.004  # the scheduler's host work: result processing, planning, batch building
    pad.run(clock.forward(0.010), BUSY, decode_batch([10]))
    assert clock.now == pytest.approx(first_end + 0.050)  # where the GPU's overlap loop would end it
    assert pad.last_credit_s == pytest.approx(0.004)
    assert pad.counters.overlap_credit_s == pytest.approx(0.004) and pad.counters.overruns == 0


def test_without_overlap_or_after_an_idle_pass_the_host_gap_adds_to_the_period():
    for overlap, sched in ((False, BUSY), (True, IDLE)):
        pad, clock = overlap_padder(0.050, overlap=overlap)
        pad.run(clock.forward(0.010), BUSY, decode_batch([10]))
        first_end = clock.now
        clock.now += 0.004
        pad.run(clock.forward(0.010), sched, decode_batch([10]))
        assert clock.now == pytest.approx(first_end + 0.054) and pad.last_credit_s == 0.0


def test_overlap_credit_is_at_most_the_previous_forwards_device_time():
    clock = ManualClock()
    times = iter([0.010, 0.050])

    class TwoTimes:
        spec = DeviceSpec()

        def sample_s(self, prefills, decodes):
            return next(times)

    pad = Padder(TwoTimes(), clock=clock, sleep=clock.sleep, spin_s=0.0, log_every_s=None, overlap=True)
    pad.run(clock.forward(0.001), IDLE, decode_batch([10]))
    clock.now += 0.030  # host-bound: more host work than the 10 ms forward it overlapped
    t0 = clock.now
    pad.run(clock.forward(0.001), BUSY, decode_batch([10]))
    assert pad.last_credit_s == pytest.approx(0.010) and clock.now == pytest.approx(t0 + 0.040)


def test_overlap_overrun_when_host_gap_plus_forward_exceed_the_emulated_time():
    pad, clock = overlap_padder(0.050)
    pad.run(clock.forward(0.010), IDLE, decode_batch([10]))
    clock.now += 0.005
    pad.run(clock.forward(0.048), BUSY, extend_batch([(100, 0)]))
    c = pad.counters
    assert (c.overruns, c.by_kind["prefill"]) == (1, [1, 1])
    assert c.overrun_s == pytest.approx(0.003) and c.waited_s == pytest.approx(0.040)  # only the first waited


def test_an_empty_batch_breaks_the_overlap_chain():
    pad, clock = overlap_padder(0.050)
    pad.run(clock.forward(0.0), IDLE, decode_batch([10]))
    pad.run(clock.forward(0.0), BUSY, SimpleNamespace(forward_mode=mode("idle"), reqs=[]))
    clock.now += 0.004
    pad.run(clock.forward(0.0), BUSY, decode_batch([10]))
    assert pad.last_credit_s == 0.0


def test_each_counted_forward_is_reported_to_the_trace_with_its_overrun():
    """`--fair-trace`'s device records: one per counted forward (empty batches none), with the overlap credit and
    whether it overran, as the counters book it."""
    pad, clock = overlap_padder(0.050)
    records = []
    pad.on_forward = records.append
    pad.run(clock.forward(0.010), IDLE, decode_batch([10, 20]))
    clock.now += 0.005
    pad.run(clock.forward(0.048), BUSY, extend_batch([(100, 0)], decode_prefixes=[30]))
    pad.run(clock.forward(0.0), BUSY, SimpleNamespace(forward_mode=mode("idle"), reqs=[]))
    assert [(r["batch"], r["prefill_tokens"], r["decode_rows"], r["overrun"]) for r in records] == \
        [("decode", 0, 2, False), ("mixed", 100, 1, True)]
    assert records[0]["emulated_ms"] == pytest.approx(50.0) and records[0]["real_ms"] == pytest.approx(10.0)
    assert records[1]["credit_ms"] == pytest.approx(5.0) and records[0]["credit_ms"] == 0.0
    assert sum(r["overrun"] for r in records) == pad.counters.overruns
