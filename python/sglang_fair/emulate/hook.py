"""Installing the emulated device in SGLang's scheduler: an AROUND hook on `Scheduler.run_batch`.

`sglang-fair serve --emulate-device PRESET[:DILATION]` puts the device spec in the server's environment
(`ENV_VAR`, JSON); the plugin entry point calls `register_from_env()` in every SGLang process BEFORE it registers
the policy hooks. Registration order is wrapping order in SGLang's HookRegistry (the first registered AROUND hook
is the innermost), so the padder sits directly around the real forward and the policy's own `run_batch` timing,
its cost-model fit and its load signal all see the emulated time. SGLang applies the hooks after the plugins ran
(`load_plugins` -> `HookRegistry.apply_hooks`; our `scheduler_hooks.register` applies them too).

The padder of a scheduler is made on its first `run_batch` (SGLang's own warm-up request; building the attention
surfaces takes about 1.5 s) and kept on the scheduler (`padder_of`). Its counters are added to each scheduler's
`/server_info` internal state under `emulated_device` (labelled `emulated`; engine/http.py shows them in
`/sglang_fair/status` through report.status_object) and, with `--enable-metrics`, published as the
`sglang_fair:emulated_*` Prometheus gauges (report.py), whatever the policy. It refuses to run with the overlap
scheduler, whose `run_batch` only launches the forward.

Call site (engine/plugin.py, `load()`, inside its try, right before `scheduler_hooks.register(cfg)`):

    from ..emulate.hook import register_from_env
    register_from_env()  # first: the emulated device's padder must be the innermost run_batch wrapper
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
from typing import Mapping

from . import report
from .spec import DeviceSpec

logger = logging.getLogger("sglang_fair")

ENV_VAR = "SGLANG_FAIR_EMULATE_DEVICE"
RUN_BATCH = "sglang.srt.managers.scheduler.Scheduler.run_batch"
INTERNAL_STATE = ("sglang.srt.managers.scheduler_components.internal_state.SchedulerInternalStateController"
                  ".get_internal_state")
PADDER_ATTR = "_sglang_fair_emulated_device"
STATE_KEY = "emulated_device"
FAST_ATTENTION_ENV = "SGLANG_FAIR_EMULATE_FAST_ATTENTION"
"""`0` keeps SGLang's own torch_native attention under emulation (for measuring what cpu_attention.py saves)."""
_registered: dict[str, DeviceSpec] = {}


def spec_to_env(spec: DeviceSpec) -> str:
    return json.dumps(dataclasses.asdict(spec), sort_keys=True)


def spec_from_env(environ: Mapping[str, str] | None = None) -> DeviceSpec | None:
    """The DeviceSpec in `ENV_VAR`, or None when it is unset/empty; ValueError when it is not a valid spec."""
    raw = (os.environ if environ is None else environ).get(ENV_VAR, "")
    if not raw.strip():
        return None
    try:
        fields = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise ValueError(f"{ENV_VAR} is not JSON: {exc}") from None
    if not isinstance(fields, dict):
        raise ValueError(f"{ENV_VAR} must be a JSON object of DeviceSpec fields")
    known = {f.name for f in dataclasses.fields(DeviceSpec)}
    unknown = sorted(set(fields) - known)
    if unknown:
        raise ValueError(f"{ENV_VAR}: unknown fields {unknown} (known: {sorted(known)})")
    return DeviceSpec(**fields)


def padder_of(scheduler):
    """The scheduler's Padder, or None before its first forward / without an emulated device."""
    return getattr(scheduler, PADDER_ATTR, None)


def launch_credit_s(scheduler) -> float:
    """How long before its `run_batch` call the latest forward began on the emulated device (the host time the
    emulated overlap loop hid, pad.py); 0.0 without an emulated device. The policy's own timing subtracts it from
    the forward's start, so its cost fit sees the device time, as the GPU's overlap loop measures it."""
    padder = padder_of(scheduler)
    return padder.last_credit_s if padder is not None else 0.0


def _make_hooks(spec: DeviceSpec):
    from .device import DeviceModel
    from .pad import Padder

    def around_run_batch(original, self, batch, *args, **kwargs):
        padder = padder_of(self)
        if padder is None:
            if getattr(self, "enable_overlap", False):
                raise RuntimeError("sglang-fair: the emulated device needs --disable-overlap-schedule (with the "
                                   "overlap scheduler run_batch only launches the forward)")
            padder = Padder(DeviceModel(spec), overlap=spec.overlap)
            gauges = report.gauges_for(self, spec)  # None without --enable-metrics
            if gauges is not None:
                padder.on_account = gauges.maybe_update
            from ..core import trace
            tw = trace.writer()
            if tw is not None:
                padder.on_forward = lambda rec: tw.write("device", rec)
            setattr(self, PADDER_ATTR, padder)
            logger.warning("sglang-fair: emulated device %s active (jitter cv %g, KV pool of the emulated GPU %d "
                           "tokens)", spec.text(), spec.jitter_cv, padder.device.kv_pool_tokens)
        return padder.run(original, self, batch, *args, **kwargs)

    def after_get_internal_state(result, self, *args, **kwargs):
        sched = getattr(self, "scheduler", None)
        padder = padder_of(sched)
        state = {"label": report.LABEL, "spec": spec.text(), "preset": spec.preset, "dilation": spec.dilation,
                 "jitter_cv": spec.jitter_cv, "overlap": spec.overlap, "active": padder is not None}
        if padder is not None:
            state.update(padder.counters.as_dict())
            try:  # the gauges show the counters as of this read too (the forwards publish at most every 0.5 s)
                gauges = report.gauges_for(sched, spec)
                if gauges is not None:
                    gauges.update(padder.counters.as_dict())
            except Exception:  # noqa: BLE001  (never break /server_info)
                logger.exception("emulated device: publishing the gauges failed")
            state["recent"] = [{"prefill_tokens": p, "decode_rows": d, "emulated_ms": round(e, 3),
                                "real_ms": round(r, 3)} for p, d, e, r in padder.recent]
        result.internal_state[STATE_KEY] = state
        return result

    return around_run_batch, after_get_internal_state


def register_from_env(environ: Mapping[str, str] | None = None) -> DeviceSpec | None:
    """Register the padder hook when `ENV_VAR` holds a spec (once per process); None when there is none.
    Raises SystemExit on an invalid spec (SGLang's plugin loader swallows other exceptions)."""
    try:
        spec = spec_from_env(environ)
    except (ValueError, TypeError) as exc:
        raise SystemExit(f"sglang-fair: invalid {ENV_VAR}: {exc}") from exc
    if spec is None:
        return None
    if RUN_BATCH in _registered:
        return _registered[RUN_BATCH]
    from sglang.srt.plugins.hook_registry import HookRegistry, HookType

    around, after = _make_hooks(spec)
    if os.environ.get(FAST_ATTENTION_ENV, "1") != "0":
        from . import cpu_attention
        cpu_attention.register()
    HookRegistry.register(RUN_BATCH, around, HookType.AROUND)
    HookRegistry.register(INTERNAL_STATE, after, HookType.AFTER)
    _registered[RUN_BATCH] = spec
    return spec
