"""The emulated device in /sglang_fair/status and Prometheus (emulate/report.py, the hook's internal state, the
status route's builders), with fake schedulers and a private Prometheus registry."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from sglang_fair.config import RuntimeConfig
from sglang_fair.emulate import report
from sglang_fair.emulate.hook import PADDER_ATTR, STATE_KEY, _make_hooks
from sglang_fair.emulate.pad import PadCounters, Padder
from sglang_fair.emulate.spec import DeviceSpec, parse_device_spec
from sglang_fair.engine.http import build_status, rank_state

from test_emulate_pad import ManualClock

SPEC = parse_device_spec("a100-llama3-8b:5")


def counters(**kw) -> PadCounters:
    base = dict(iterations=10, overruns=3, emulated_s=1.5, real_s=1.2, waited_s=0.4, overrun_s=0.1,
                max_overrun_s=0.05, late_s_max=0.001, overlap_credit_s=0.02)
    return PadCounters(**{**base, **kw})


def fake_padder(c: PadCounters):
    return SimpleNamespace(counters=c, recent=[(100, 2, 12.5, 10.0)])


def internal_state(padder=None, sched_extra=None):
    """What hook.py's AFTER hook on get_internal_state writes, for a scheduler holding `padder`."""
    _, after = _make_hooks(SPEC)
    sched = SimpleNamespace(**(sched_extra or {}))
    if padder is not None:
        setattr(sched, PADDER_ATTR, padder)
    result = SimpleNamespace(internal_state={})
    after(result, SimpleNamespace(scheduler=sched))
    return result.internal_state[STATE_KEY]


def test_internal_state_is_labelled_emulated_with_spec_and_dilation():
    state = internal_state(fake_padder(counters()))
    assert state["label"] == "emulated" and state["spec"] == "a100-llama3-8b:5"
    assert state["preset"] == "a100-llama3-8b" and state["dilation"] == 5.0 and state["active"]
    assert state["iterations"] == 10 and state["overruns"] == 3 and state["overrun_fraction"] == pytest.approx(0.3)
    assert state["recent"] == [{"prefill_tokens": 100, "decode_rows": 2, "emulated_ms": 12.5, "real_ms": 10.0}]
    idle = internal_state(None)  # before the first forward: no padder yet
    assert idle["label"] == "emulated" and not idle["active"] and "iterations" not in idle


def test_status_object_carries_the_counters_and_the_label():
    obj = report.status_object(internal_state(fake_padder(counters())))
    assert obj == {"label": "emulated", "spec": "a100-llama3-8b:5", "dilation": 5.0, "active": True, "overlap": True,
                   "iterations": 10, "overruns": 3, "overrun_fraction": pytest.approx(0.3), "emulated_s": 1.5,
                   "real_s": 1.2, "waited_s": 0.4, "overrun_s": 0.1, "max_overrun_s": 0.05, "late_s_max": 0.001,
                   "overlap_credit_s": 0.02,
                   "by_kind": {"decode": [0, 0], "mixed": [0, 0], "prefill": [0, 0]}}
    idle = report.status_object(internal_state(None))
    assert not idle["active"] and idle["iterations"] == 0 and idle["overrun_fraction"] == 0.0
    assert report.status_object(None) is None


def test_rank_state_adds_the_emulated_device_only_when_there_is_one():
    fair = {"active": False, "policy": "off", "token_load": 0}
    with_dev = rank_state({"sglang_fair": fair, STATE_KEY: internal_state(fake_padder(counters()))})
    assert with_dev["policy"] == "off" and with_dev["emulated_device"]["overruns"] == 3
    assert "emulated_device" not in fair  # the scheduler's dict is not modified
    assert rank_state({"sglang_fair": fair}) == fair
    assert rank_state({}) == {}


@pytest.mark.parametrize("policy", ["off", "fair"])
def test_status_top_level_says_emulated(policy):
    cfg = RuntimeConfig(policy=policy)
    ranks = [rank_state({"sglang_fair": {"hooks_verified": True},
                         STATE_KEY: internal_state(fake_padder(counters()))})]
    status = build_status(cfg, ranks, SPEC)
    top = status["emulated_device"]
    assert top["label"] == "emulated" and top["spec"] == "a100-llama3-8b:5" and top["dilation"] == 5.0
    assert "not a GPU measurement" in top["note"]
    assert status["ranks"][0]["emulated_device"]["iterations"] == 10
    assert build_status(cfg, [{}])["emulated_device"] is None  # real hardware: nothing labelled emulated


def test_samples_name_every_gauge():
    s = report.samples(counters().as_dict())
    assert s == {"emulated_iterations_total": 10.0, "emulated_overruns_total": 3.0,
                 "emulated_overrun_fraction": pytest.approx(0.3), "emulated_seconds_total": 1.5,
                 "emulated_real_forward_seconds_total": 1.2, "emulated_overrun_seconds_total": 0.1,
                 "emulated_max_overrun_seconds": 0.05, "emulated_overlap_credit_seconds_total": 0.02}


def test_gauges_render_with_spec_and_dilation_labels():
    from prometheus_client import CollectorRegistry, generate_latest

    reg = CollectorRegistry()
    g = report.EmulatedGauges({"model_name": "micro"}, SPEC, registry=reg)
    g.update(counters().as_dict())
    other = report.EmulatedGauges({"model_name": "other"}, DeviceSpec("h100-llama3-8b"), share=g)
    other.update(counters(iterations=4).as_dict())
    text = generate_latest(reg).decode()
    labels = 'dilation="5",emulated_device="a100-llama3-8b:5",model_name="micro"'
    assert f"sglang_fair:emulated_iterations_total{{{labels}}} 10.0" in text
    assert f"sglang_fair:emulated_overruns_total{{{labels}}} 3.0" in text
    assert f"sglang_fair:emulated_overrun_fraction{{{labels}}} 0.3" in text
    assert f"sglang_fair:emulated_seconds_total{{{labels}}} 1.5" in text
    assert ('sglang_fair:emulated_iterations_total{dilation="1",emulated_device="h100-llama3-8b",'
            'model_name="other"} 4.0') in text
    helps = [line for line in text.splitlines() if line.startswith("# HELP sglang_fair:emulated_")]
    assert len(helps) == len(report.METRICS) and all("Emulated device" in h and "not a GPU" in h for h in helps)


def test_gauges_publish_at_most_once_per_period(monkeypatch):
    g = report.EmulatedGauges.__new__(report.EmulatedGauges)  # only the period logic is under test
    g._last = float("-inf")
    seen = []
    g.update = seen.append
    clock = iter([100.0, 100.1, 100.0 + report.PERIOD_S + 0.01])
    monkeypatch.setattr(report.time, "monotonic", lambda: next(clock))
    for i in range(3):
        g.maybe_update(counters(iterations=i))
    assert [d["iterations"] for d in seen] == [0, 2]


def test_gauges_only_with_enable_metrics():
    assert report.gauges_for(SimpleNamespace(), SPEC) is None
    off = SimpleNamespace(metrics_reporter=SimpleNamespace(enable_metrics=False))
    assert report.gauges_for(off, SPEC) is None


def test_padder_reports_before_its_wait_and_drops_a_failing_reporter():
    clock = ManualClock()
    clock.now = 0.0
    p = Padder(SimpleNamespace(spec=DeviceSpec()), clock=clock, sleep=clock.sleep, spin_s=0.0, log_every_s=None)
    seen = []
    p.on_account = lambda c: seen.append((c.iterations, c.overruns, clock.now))
    p.account(0.0, 0.01, 0.05)  # padded: reported at t = 0 (before the wait), then waited to 0.05
    p.account(0.05, 0.2, 0.05)  # overrun
    assert seen == [(1, 0, 0.0), (2, 1, 0.05)] and clock.now == pytest.approx(0.05)

    def boom(c):
        raise RuntimeError("disk full")
    p.on_account = boom
    p.account(0.2, 0.21, 0.05)
    assert p.on_account is None and p.counters.iterations == 3
