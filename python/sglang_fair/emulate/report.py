"""What the emulated device reports outside `/server_info`: our `/sglang_fair/status` and Prometheus `/metrics`.

Everything shown is labelled *emulated*: the times are the device model's (Vidur's operator profiles x dilation,
emulate/device.py) that the padder waited the real CPU forward up to, never a GPU measurement.

- `status_object(state)`: the per-rank `emulated_device` object of `/sglang_fair/status`, from the scheduler's
  internal-state entry `emulated_device` (hook.py) - spec, dilation, iterations, overruns (iterations whose real
  forward took longer than the emulated time), overrun fraction, emulated and real seconds.
- `device_label(spec)`: the status's top-level `emulated_device` (None without an emulated device).
- `samples(counters)` and `EmulatedGauges`: the `sglang_fair:emulated_*` Prometheus gauges. Made in the scheduler
  child the way engine/gauges.py makes the policy's (prometheus_client multiprocess mode, `multiprocess_mode=
  "mostrecent"`, SGLang's own labels), plus the labels `emulated_device` (the spec, e.g. `a100-llama3-8b:5`) and
  `dilation`. They belong to the padder, not to a policy, so they are there with `--fair-policy off` too (only with
  `--enable-metrics`). Published at most every `PERIOD_S` from the forwards (before the padding wait, so it costs
  no emulated time) and whenever the scheduler's internal state is read (`/sglang_fair/status`, `/server_info`).
"""

from __future__ import annotations

import time

from .spec import DeviceSpec

LABEL = "emulated"
NOTE = ("emulated device: iteration times come from the device model (Vidur operator profiles x dilation) that each "
        "real CPU forward is padded to; not a GPU measurement")
PERIOD_S = 0.5

STATUS_FIELDS = ("iterations", "overruns", "overrun_fraction", "emulated_s", "real_s", "waited_s", "overrun_s",
                 "max_overrun_s", "late_s_max", "overlap_credit_s")
"""Padder counters (pad.PadCounters.as_dict) copied into the status object."""

_HELP = "Emulated device (device-model time, not a GPU measurement): "
METRICS = {
    "emulated_iterations_total": ("iterations", "forwards padded to the emulated device's iteration time."),
    "emulated_overruns_total": ("overruns", "forwards whose real CPU work exceeded the emulated time (overruns)."),
    "emulated_overrun_fraction": ("overrun_fraction", "fraction of forwards that overran the emulated time."),
    "emulated_seconds_total": ("emulated_s", "emulated device seconds of all forwards (s)."),
    "emulated_real_forward_seconds_total": ("real_s", "real CPU forward seconds of all forwards (s)."),
    "emulated_overrun_seconds_total": ("overrun_s", "seconds by which overrunning forwards exceeded the emulated "
                                                    "time (s)."),
    "emulated_max_overrun_seconds": ("max_overrun_s", "largest single overrun (s)."),
    "emulated_overlap_credit_seconds_total": ("overlap_credit_s", "host seconds between forwards hidden behind the "
                                                                  "previous forward (emulated overlap loop) (s)."),
}
"""Gauge name (after `sglang_fair:`) -> (counter key, HELP text after `_HELP`)."""
SPEC_LABELS = ("emulated_device", "dilation")


def device_label(spec: DeviceSpec | None) -> dict | None:
    """The status's top-level `emulated_device`: which device is emulated, and that it is emulated."""
    if spec is None:
        return None
    return {"label": LABEL, "spec": spec.text(), "preset": spec.preset, "dilation": spec.dilation,
            "jitter_cv": spec.jitter_cv, "overlap": spec.overlap, "note": NOTE}


def status_object(state: dict | None) -> dict | None:
    """The per-rank `emulated_device` of `/sglang_fair/status` from the internal-state entry hook.py writes (None
    when the rank has none). Counters read 0 before the padder's first forward (`active` false)."""
    if not isinstance(state, dict):
        return None
    out = {"label": LABEL, "spec": state.get("spec"), "dilation": state.get("dilation"),
           "overlap": state.get("overlap"), "active": bool(state.get("active"))}
    for k in STATUS_FIELDS:
        v = state.get(k, 0)
        out[k] = int(v) if k in ("iterations", "overruns") else float(v)
    out["by_kind"] = {k: [int(n), int(o)] for k, (n, o) in (state.get("by_kind") or {}).items()}
    return out


def spec_labels(spec: DeviceSpec) -> dict[str, str]:
    return {"emulated_device": spec.text(), "dilation": f"{spec.dilation:g}"}


def samples(counters: dict) -> dict[str, float]:
    """Gauge name (without the `sglang_fair:` prefix) -> value, from PadCounters.as_dict()."""
    return {name: float(counters.get(key, 0.0)) for name, (key, _) in METRICS.items()}


class EmulatedGauges:
    """The `sglang_fair:emulated_*` gauges of one scheduler. `registry`: prometheus_client's default unless given
    (tests pass their own)."""

    def __init__(self, labels: dict[str, str], spec: DeviceSpec, registry=None, *, share: "EmulatedGauges | None" = None
                 ) -> None:
        self.labels = {**labels, **spec_labels(spec)}
        if share is not None and list(share.labels) == list(self.labels):
            self.gauges = share.gauges  # the same metrics, another label set (prometheus_client refuses a name twice)
        else:
            from prometheus_client import REGISTRY, Gauge
            reg = REGISTRY if registry is None else registry
            self.gauges = {name: Gauge(f"sglang_fair:{name}", _HELP + doc, labelnames=list(self.labels),
                                       multiprocess_mode="mostrecent", registry=reg)
                           for name, (_, doc) in METRICS.items()}
        self._last = float("-inf")

    def maybe_update(self, counters) -> None:
        """`update` if the last one is at least PERIOD_S old; `counters`: a PadCounters."""
        now = time.monotonic()
        if now - self._last < PERIOD_S:
            return
        self._last = now
        self.update(counters.as_dict())

    def update(self, counters: dict) -> None:
        for name, value in samples(counters).items():
            self.gauges[name].labels(**self.labels).set(value)


_made: dict[tuple, EmulatedGauges] = {}


def gauges_for(sched, spec: DeviceSpec) -> EmulatedGauges | None:
    """The scheduler's EmulatedGauges when SGLang runs with `--enable-metrics` (None otherwise), with SGLang's
    scheduler metric labels; one per label set in a process, all on the same gauges."""
    reporter = getattr(sched, "metrics_reporter", None)
    if reporter is None or not getattr(reporter, "enable_metrics", False):
        return None
    collector = getattr(reporter, "metrics_collector", None)
    labels = {str(k): str(v) for k, v in (getattr(collector, "labels", {}) or {}).items()}
    key = (tuple(sorted(labels.items())), spec.text())
    if key not in _made:
        _made[key] = EmulatedGauges(labels, spec, share=next(iter(_made.values()), None))
    return _made[key]
