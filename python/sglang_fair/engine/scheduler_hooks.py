"""Every scheduler-side hook, registered with SGLang's HookRegistry, and the checks that they are live.

`register(cfg)` is called by the plugin entry point in every SGLang process. It registers the hooks, applies them at
once (HookRegistry.apply_hooks() is idempotent and otherwise only logs failures) and checks at class level that each
target now runs our wrapper, raising SystemExit naming the targets that do not (SGLang's plugin loader swallows
Exceptions, not SystemExit). The AROUND hook on Scheduler.__init__ then runs `verify_live(scheduler)` on the live
instance, so a half-applied hook set stops the scheduler child with a clear message.

Pinned to SGLang 0.5.23 (the private names `_collect_inflight_batches` and `_reqs_finishing_inflight` included);
another version fails loudly unless SGLANG_FAIR_ALLOW_UNTESTED_SGLANG=1. The SGLang internals used without a hook and
the refused configurations are checked by engine/selftest.py (at registration and in Scheduler.__init__); per-request
SLOs are checked at the scheduler's intake (engine/intake.py). See patches/README.md for each target.
"""

from __future__ import annotations

import logging
import os
import pkgutil
import time
from dataclasses import dataclass
from typing import Callable

from ..config import RuntimeConfig
from ..emulate.hook import launch_credit_s
from . import intake, reject, selftest
from .selftest import unsupported_features
from .snapshot import kv_usage

logger = logging.getLogger("sglang_fair")

VERIFIED_SGLANG_VERSIONS = ("0.5.23",)
VERSION_OVERRIDE_ENV = "SGLANG_FAIR_ALLOW_UNTESTED_SGLANG"
MARK = "__sglang_fair_hook__"
ADAPTER_ATTR = "_sglang_fair"

_SCHED = "sglang.srt.managers.scheduler.Scheduler"
_POLICY = "sglang.srt.managers.schedule_policy.SchedulePolicy"
_STATE = "sglang.srt.managers.scheduler_components.internal_state.SchedulerInternalStateController"


@dataclass(frozen=True)
class HookSpec:
    target: str
    kind: str  # "around" | "after" | "before"
    fn: Callable
    changes_behaviour: bool


def _mark(fn: Callable, target: str) -> Callable:
    setattr(fn, MARK, target)
    return fn


def _adapter(sched):
    return getattr(sched, ADAPTER_ATTR, None)


# ---- hook bodies ------------------------------------------------------------------------------------------------
def _make_init_hook(cfg: RuntimeConfig, specs: list[HookSpec]):
    def around_init(original, self, *args, **kwargs):
        original(self, *args, **kwargs)
        setattr(self, ADAPTER_ATTR, None)
        problems = unsupported_features(self) if cfg.active else []
        if problems:
            raise RuntimeError("sglang-fair --fair-policy %s does not support: %s (use --fair-policy off)"
                               % (cfg.policy, "; ".join(problems)))
        missing = selftest.missing_live_internals(self) if cfg.active else []
        if missing:
            raise RuntimeError("sglang-fair: the scheduler lacks what --fair-policy %s relies on: %s (use --fair-policy "
                               "off)" % (cfg.policy, "; ".join(missing)))
        verify_live(self, specs)
        if cfg.active:
            from ..policies.chaos import make_configured_policy
            from .adapter import PolicyAdapter
            adapter = PolicyAdapter(self, cfg, make_configured_policy(cfg.policy, cfg.policy_params))
            adapter.hooks_verified = True
            setattr(self, ADAPTER_ATTR, adapter)
            from . import gauges
            gauges.maybe_install(self, adapter)
        self._sglang_fair_hooks_verified = True
        logger.warning("sglang-fair scheduler hooks verified: policy=%s, %d hooks live", cfg.policy, len(specs))
    return around_init


def around_get_next_batch_to_run(original, self, *args, **kwargs):
    ad = _adapter(self)
    if ad is not None:
        ad.arrivals.on_pass(time.perf_counter())  # right after this pass read the socket
        if args:
            args = (ad.rejoin(args[0]), *args[1:])
        else:
            kwargs["running_batch"] = ad.rejoin(kwargs["running_batch"])
    return original(self, *args, **kwargs)


def around_get_new_batch_prefill(original, self, running_batch):
    ad = _adapter(self)
    if ad is None:
        return original(self, running_batch)
    return ad.form_prefill(original, self, running_batch)


def around_run_batch(original, self, batch, *args, **kwargs):
    ad = _adapter(self)
    if ad is None:
        return original(self, batch, *args, **kwargs)
    t0 = time.perf_counter()
    ad.arrivals.on_forward(t0)
    result = original(self, batch, *args, **kwargs)
    t1 = time.perf_counter()
    ad.on_run_batch(batch, t0 - launch_credit_s(self), t1)  # an emulated overlap loop began the forward earlier
    return result


def around_process_batch_result(original, self, *args, **kwargs):
    result = original(self, *args, **kwargs)
    ad = _adapter(self)
    if ad is not None:
        ad.on_result(time.perf_counter())
    return result


def after_is_fully_idle(result, self, *args, **kwargs):
    ad = _adapter(self)
    if result and ad is not None and len(ad.parking):
        return False  # parked rows hold KV (a bare None would keep SGLang's True)
    return None


def after_collect_inflight_batches(result, self, *args, **kwargs):
    ad = _adapter(self)
    if ad is not None and ad.parking.batch is not None:
        return [*result, ad.parking.batch]  # aborts reach parked rows
    return None


def before_pause_generation(self, *args, **kwargs):
    ad = _adapter(self)
    if ad is not None and len(ad.parking):
        self.running_batch = ad.rejoin(self.running_batch)  # retract-all must see every running row
    return None


def around_calc_priority(original, self, waiting_queue, *args, **kwargs):
    result = original(self, waiting_queue, *args, **kwargs)
    from .deferral import apply_plan_order
    apply_plan_order(self, waiting_queue)
    return result


def around_shortest_prefill_chunk_limit(original, self, *args, **kwargs):
    from .deferral import CHUNK_LIMIT_ATTR
    limit = getattr(self, CHUNK_LIMIT_ATTR, None)  # set only while a planned prefill is formed (deferral.py)
    return limit if limit is not None else original(self, *args, **kwargs)


def _make_intake_hook(cfg: RuntimeConfig):
    def before_add_request_to_queue(self, req, *args, **kwargs):
        ad = _adapter(self)
        if ad is not None:
            try:
                intake.stamp_arrival(req, ad.arrivals)  # before any view of it (the snapshot's arrival_s)
            except Exception as exc:  # noqa: BLE001  (the receipt time stands)
                ad._fault("arrival", f"{type(exc).__name__}: {exc}")
        if intake.check_request(req, cfg.slo) is None and cfg.admission != "off":  # invalid SLO: aborted here
            if ad is not None:
                try:
                    reject.reject_if_late(ad, req)  # HTTP 429 at arrival (engine/reject.py)
                except Exception as exc:  # never lose a request over admission: it is queued as usual
                    ad._fault("admission", f"{type(exc).__name__}: {exc}")
        return None
    return before_add_request_to_queue


def _make_state_hook(cfg: RuntimeConfig):
    def after_get_internal_state(result, self, *args, **kwargs):
        sched = self.scheduler
        ad = _adapter(sched)
        if ad is not None:
            try:
                status = ad.status()
            except Exception as exc:  # never break /server_info
                status = {"active": True, "policy": cfg.policy, "error": f"{type(exc).__name__}: {exc}"}
        else:
            status = {"active": False, "policy": cfg.policy,
                      "hooks_verified": bool(getattr(sched, "_sglang_fair_hooks_verified", False)),
                      "planned_iterations": 0, "token_load": 0,
                      "num_running_reqs": len(sched.running_batch.reqs), "num_waiting_reqs": len(sched.waiting_queue),
                      "deferred_now": 0}
            try:  # what a client waiting for an idle server reads (live.monitor.wait_idle), as under a policy
                status["kv_used_tokens"] = kv_usage(sched)[1]
            except Exception as exc:  # noqa: BLE001  (never break /server_info)
                status["kv_error"] = f"{type(exc).__name__}: {exc}"
        result.internal_state["sglang_fair"] = status
        return result
    return after_get_internal_state


# ---- registration and verification --------------------------------------------------------------------------------
def hook_specs(cfg: RuntimeConfig) -> list[HookSpec]:
    specs = [HookSpec(f"{_STATE}.get_internal_state", "after", _make_state_hook(cfg), False)]
    if cfg.active:
        specs += [
            HookSpec(f"{_SCHED}.get_next_batch_to_run", "around", around_get_next_batch_to_run, True),
            HookSpec(f"{_SCHED}.get_new_batch_prefill", "around", around_get_new_batch_prefill, True),
            HookSpec(f"{_SCHED}.run_batch", "around", around_run_batch, False),
            HookSpec(f"{_SCHED}.process_batch_result", "around", around_process_batch_result, False),
            HookSpec(f"{_SCHED}.is_fully_idle", "after", after_is_fully_idle, True),
            HookSpec(f"{_SCHED}._collect_inflight_batches", "after", after_collect_inflight_batches, True),
            HookSpec(f"{_SCHED}.pause_generation", "before", before_pause_generation, True),
            HookSpec(f"{_POLICY}.calc_priority", "around", around_calc_priority, True),
            HookSpec(f"{_POLICY}.shortest_prefill_chunk_limit", "around", around_shortest_prefill_chunk_limit, True),
            HookSpec(f"{_SCHED}._add_request_to_queue", "before", _make_intake_hook(cfg), True),
        ]
    init_spec = HookSpec(f"{_SCHED}.__init__", "around", None, False)  # fn filled below (needs the list)
    specs.append(init_spec)
    specs[-1] = HookSpec(init_spec.target, "around", _make_init_hook(cfg, specs), False)
    for s in specs:
        _mark(s.fn, s.target)
    return specs


def check_version() -> str:
    import sglang
    version = getattr(sglang, "__version__", "unknown")
    if version not in VERIFIED_SGLANG_VERSIONS and os.environ.get(VERSION_OVERRIDE_ENV) != "1":
        raise SystemExit(f"sglang-fair: SGLang {version} is not a verified version "
                         f"({', '.join(VERIFIED_SGLANG_VERSIONS)}); set {VERSION_OVERRIDE_ENV}=1 to try anyway")
    return version


def register(cfg: RuntimeConfig) -> list[HookSpec]:
    """Register, apply and class-check every scheduler hook for `cfg`. Safe to call once per process."""
    from sglang.srt.plugins.hook_registry import HookRegistry, HookType

    check_version()
    if cfg.active:
        selftest.require_internals()  # SystemExit naming what this SGLang lacks (before any hook applies)
    kinds = {"around": HookType.AROUND, "after": HookType.AFTER, "before": HookType.BEFORE}
    specs = hook_specs(cfg)
    for s in specs:
        HookRegistry.register(s.target, s.fn, kinds[s.kind])
    HookRegistry.apply_hooks()
    missing = [s.target for s in specs if not _is_ours(_resolve(s.target), s.fn)]
    if missing:
        raise SystemExit("sglang-fair: these SGLang hooks did not apply (see SGLang's log above): "
                         + ", ".join(missing))
    return specs


def _resolve(target: str):
    owner, attr = target.rsplit(".", 1)
    obj = pkgutil.resolve_name(owner)
    if isinstance(obj, type) and attr in obj.__dict__:
        raw = obj.__dict__[attr]
        return getattr(raw, "__func__", raw)
    return getattr(obj, attr, None)


def _is_ours(live, hook_fn: Callable) -> bool:
    """Whether `live` is an SGLang hook wrapper (or a chain of them) that calls `hook_fn`."""
    seen = 0
    while live is not None and seen < 16:
        for cell in getattr(live, "__closure__", None) or ():
            try:
                if cell.cell_contents is hook_fn:
                    return True
            except ValueError:  # empty cell
                continue
        live = getattr(live, "__wrapped__", None)
        seen += 1
    return False


def verify_live(scheduler, specs: list[HookSpec]) -> None:
    """Raise RuntimeError naming each target whose live attribute (as this scheduler sees it) is not our wrapper."""
    bad = []
    for s in specs:
        owner, attr = s.target.rsplit(".", 1)
        if owner == _SCHED and attr != "__init__":
            live = getattr(type(scheduler), attr, None)
            if attr in vars(scheduler):  # an instance attribute would shadow the class hook
                live = vars(scheduler)[attr]
            live = getattr(live, "__func__", live)
        elif owner == _POLICY and hasattr(scheduler, "policy"):
            live = getattr(type(scheduler.policy), attr, None)
        elif owner == _STATE and hasattr(scheduler, "internal_state"):
            live = getattr(type(scheduler.internal_state), attr, None)
        else:
            live = _resolve(s.target)
        if not _is_ours(live, s.fn):
            bad.append(s.target)
    if bad:
        raise RuntimeError("sglang-fair: hooks not live in the scheduler (half-applied hook set): " + ", ".join(bad))
