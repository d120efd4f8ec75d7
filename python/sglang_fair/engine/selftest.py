"""Start-up self-test of an active policy: the SGLang configurations it refuses, and the SGLang internals it relies on.

Two kinds of check, each failing with a message that names what is wrong:
- `unsupported_features(sched)`: scheduler configurations an active policy cannot honour, each named by the flag
  that turns it on (the user's remedy is that flag, or `--fair-policy off`).
- `missing_internals()` / `missing_live_internals(sched)`: SGLang names and behaviours the adapter uses without a
  hook pinning them. A hook on a missing method fails loudly at registration (scheduler_hooks.register), but these
  would fail silently: a renamed `time_stats` field reads as "no timestamp", a `getattr` default hides a removed
  method, an attribute PrefillAdder no longer reads at call time simply stops steering the chunk. The class-level
  check runs in every SGLang process when the plugin loads (before any model loads); the live check runs on the
  scheduler instance in `Scheduler.__init__`. Both run also with SGLANG_FAIR_ALLOW_UNTESTED_SGLANG=1, which is
  where they matter most.

The checks read classes, signatures and code objects only (`co_names`: the attribute and global names a function's
bytecode uses), never source text, and call nothing on SGLang.
"""

from __future__ import annotations

import dataclasses
import inspect
import pkgutil
from dataclasses import dataclass
from typing import Any, Callable, Mapping

SGLANG_OBJECTS = {
    "Scheduler": "sglang.srt.managers.scheduler.Scheduler",
    "SchedulePolicy": "sglang.srt.managers.schedule_policy.SchedulePolicy",
    "ScheduleBatch": "sglang.srt.managers.schedule_batch.ScheduleBatch",
    "NextBatchPlan": "sglang.srt.managers.schedule_batch.NextBatchPlan",
    "Req": "sglang.srt.managers.schedule_batch.Req",
    "FINISH_ABORT": "sglang.srt.managers.schedule_batch.FINISH_ABORT",
    "_make_abort_req": "sglang.srt.managers.scheduler._make_abort_req",
    "PrefillAdder": "sglang.srt.managers.schedule_policy.PrefillAdder",
    "SchedulerReqTimeStats": "sglang.srt.observability.req_time_stats.SchedulerReqTimeStats",
    "FutureMap": "sglang.srt.managers.overlap_utils.FutureMap",
    "resolve_forward_inputs": "sglang.srt.managers.overlap_utils.resolve_forward_inputs",
    "SchedulerLoadInquirer": "sglang.srt.managers.scheduler_components.load_inquirer.SchedulerLoadInquirer",
    "SchedulerInvariantChecker":
        "sglang.srt.managers.scheduler_components.invariant_checker.SchedulerInvariantChecker",
}
"""The SGLang objects the checks read, by the short name the checks use (all in SGLang 0.5.23)."""

TIME_STATS_FIELDS = ("scheduler_recv_time", "wait_queue_entry_time", "prefill_finished_time",
                     "last_decode_finish_time")
"""`Req.time_stats` fields the snapshot reads (arrival, first token, last token)."""


# ---- configurations refused -----------------------------------------------------------------------------------------
def unsupported_features(sched, par: Any = None) -> list[str]:
    """Scheduler configurations an active policy refuses, each with the flag that causes it. `par` is SGLang's
    ParallelContext (default: `sglang.srt.runtime_context.get_parallel()`)."""
    if par is None:
        from sglang.srt.runtime_context import get_parallel
        par = get_parallel()
    out = []
    if not sched.chunked_prefill_size or sched.chunked_prefill_size <= 0:
        out.append("chunked prefill disabled (--chunked-prefill-size must be > 0)")
    if getattr(par, "tp_size", 1) != 1:
        # SGLang's TP ranks each run a scheduler and form their batches independently (only requests are broadcast),
        # relying on batch formation being deterministic. Plans read each rank's own clock and measured iteration
        # times, so the ranks could form different batches for one collective forward.
        out.append("tensor parallelism (--tp-size > 1)")
    if getattr(par, "dp_size", 1) != 1:
        out.append("data parallelism (--dp-size > 1)")
    if getattr(par, "attn_dp_size", 1) != 1:
        # SGLang turns --enable-dp-attention --dp-size N into attn_dp_size=N, dp_size=1: one scheduler per attention
        # DP group, whose batches SGLang keeps in step across groups (MLP sync); per-group plans would break that.
        out.append("DP attention (--attn-dp-size > 1, or --enable-dp-attention with --dp-size)")
    if getattr(par, "pp_size", 1) != 1:
        out.append("pipeline parallelism (--pp-size > 1)")
    if not sched.spec_algorithm.is_none():
        out.append("speculative decoding (--speculative-algorithm)")
    mode = getattr(sched, "disaggregation_mode", None)
    if mode is not None and getattr(mode, "value", "null") != "null":
        out.append("PD disaggregation (--disaggregation-mode)")
    if getattr(sched, "dllm_config", None) is not None:
        out.append("diffusion LLMs (--dllm-algorithm)")
    if getattr(sched, "prefill_decode_interval", 0):
        out.append("--prefill-decode-interval")
    if getattr(sched, "enable_hisparse", False):
        out.append("HiSparse (--enable-hisparse)")
    if getattr(sched, "enable_priority_scheduling", False) or getattr(sched, "enable_priority_preemption", False):
        # The plan orders the waiting queue and chooses which decodes run; request priorities are not an input of
        # the policies, so SGLang's priority order (and priority preemption) would be silently overridden.
        out.append("request priorities (--enable-priority-scheduling)")
    policy = getattr(sched, "schedule_policy", "fcfs")
    if policy != "fcfs":
        # Every planned prefill restores the plan's order after SGLang's sort, so another order would be ignored.
        out.append(f"--schedule-policy {policy} (the policy orders the waiting queue; only the default fcfs)")
    if getattr(sched, "enable_pdmux", False):
        out.append("PD multiplexing (--enable-pdmux): its event loop forms batches without the hooks that rejoin "
                   "deferred decodes")
    if getattr(sched, "prefill_delayer", None) is not None:
        out.append("the prefill delayer (--enable-prefill-delayer)")
    if getattr(sched, "min_free_slots_delayer", None) is not None:
        # it holds prefills back until enough request slots are free, counting the running batch without the
        # parked rows: a second rule on when prefills run, like the prefill delayer (SGLang also turns it on by
        # itself for DFlash, which is speculative decoding and refused anyway)
        out.append("the min-free-slots delay (--min-free-slots-delay)")
    if not getattr(sched, "is_generation", True):
        out.append("embedding/reward models")
    return out


# ---- SGLang internals required -------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Requirement:
    what: str
    """The SGLang name or behaviour, as the refusal message states it."""
    used_for: str
    """What in sglang-fair depends on it."""
    check: Callable[[Mapping[str, Any]], bool]
    """True when the objects (SGLANG_OBJECTS' short names -> the objects, None where absent) satisfy it."""


def _unwrap(fn):
    fn = getattr(fn, "__func__", fn)
    return inspect.unwrap(fn) if callable(fn) else fn


def _uses(obj, attr: str | None, *names: str) -> bool:
    """Whether `obj.attr` (or `obj` itself when attr is None) is a function whose code uses every name in `names`
    (attribute loads/stores, globals and calls all appear in `co_names`)."""
    fn = getattr(obj, attr, None) if attr is not None else obj
    code = getattr(_unwrap(fn), "__code__", None)
    return code is not None and set(names) <= set(code.co_names)


def _params(obj, attr: str) -> list[str] | None:
    fn = getattr(obj, attr, None)
    if not callable(fn):
        return None
    try:
        return list(inspect.signature(_unwrap(fn)).parameters)
    except (TypeError, ValueError):
        return None


def _fields(cls) -> set[str]:
    """Names an instance of `cls` carries: dataclass / msgspec fields, class attributes, attributes set in __init__."""
    if cls is None:
        return set()
    names = set(dir(cls))
    if dataclasses.is_dataclass(cls):
        names |= {f.name for f in dataclasses.fields(cls)}
    names |= set(getattr(cls, "__struct_fields__", ()))
    code = getattr(_unwrap(cls.__dict__.get("__init__")), "__code__", None) if isinstance(cls, type) else None
    if code is not None:
        names |= set(code.co_names)
    return names


def _has(cls, *names: str) -> bool:
    return cls is not None and set(names) <= _fields(cls)


REQUIREMENTS: tuple[Requirement, ...] = (
    Requirement(
        "FutureMap.output_tokens_buf, read by overlap_utils.resolve_forward_inputs at batch.req_pool_indices",
        "decode deferral: a parked row's next input token waits in a buffer keyed by its request-pool row",
        lambda o: _has(o["FutureMap"], "output_tokens_buf")
        and _uses(o["resolve_forward_inputs"], None, "output_tokens_buf", "req_pool_indices")),
    Requirement(
        "Scheduler._get_new_batch_prefill_raw reading self.chunked_prefill_size, self.is_mixed_chunk, "
        "self.waiting_queue and self.chunked_req at call time, called by get_new_batch_prefill(running_batch)",
        "prefill chunk size, mixed forwards and the planned waiting requests (set for one call, then restored)",
        lambda o: _uses(o["Scheduler"], "_get_new_batch_prefill_raw", "chunked_prefill_size", "is_mixed_chunk",
                        "waiting_queue", "chunked_req")
        and _uses(o["Scheduler"], "get_new_batch_prefill", "_get_new_batch_prefill_raw")
        and _params(o["Scheduler"], "get_new_batch_prefill") == ["self", "running_batch"]),
    Requirement(
        "SchedulePolicy.calc_priority(waiting_queue, ...) and NextBatchPlan(batch_to_run, running_batch)",
        "restoring the plan's order after SGLang's sort; a prefill step that runs no prefill",
        lambda o: (_params(o["SchedulePolicy"], "calc_priority") or [])[:2] == ["self", "waiting_queue"]
        and _has(o["NextBatchPlan"], "batch_to_run", "running_batch")),
    Requirement(
        "Scheduler._get_new_batch_prefill_raw setting PrefillAdder.chunked_req_limit from "
        "SchedulePolicy.shortest_prefill_chunk_limit before add_chunked_req, which reads it and sets the chunk's "
        "end (Req.extend_end into full_untruncated_fill_ids)",
        "the chunked request's planned chunk when a plan leaves it partial (else it takes the step's whole budget), "
        "with the KV of its later chunks held back from the requests admitted beside it",
        lambda o: _uses(o["Scheduler"], "_get_new_batch_prefill_raw", "shortest_prefill_chunk_limit",
                        "chunked_req_limit", "add_chunked_req")
        and _uses(o["PrefillAdder"], "add_chunked_req", "chunked_req_limit", "extend_end",
                  "full_untruncated_fill_ids", "memory_budget")),
    Requirement(
        "Req.time_stats fields " + ", ".join(TIME_STATS_FIELDS),
        "request arrival, first-token and last-token times in the snapshot",
        lambda o: _has(o["Req"], "time_stats") and _has(o["SchedulerReqTimeStats"], *TIME_STATS_FIELDS)),
    Requirement(
        "Scheduler._reqs_finishing_inflight(batch)",
        "never deferring a row the in-flight result finishes (overlap loop)",
        lambda o: _params(o["Scheduler"], "_reqs_finishing_inflight") == ["self", "batch"]),
    Requirement(
        "the get_running_batch field of SchedulerLoadInquirer and SchedulerInvariantChecker",
        "/v1/loads and SGLang's memory check counting parked (deferred) decodes",
        lambda o: _has(o["SchedulerLoadInquirer"], "get_running_batch")
        and _has(o["SchedulerInvariantChecker"], "get_running_batch")),
    Requirement(
        "ScheduleBatch.filter_batch(keep_indices=...), merge_batch, check_decode_mem, is_empty",
        "parking and rejoining decode rows",
        lambda o: "keep_indices" in (_params(o["ScheduleBatch"], "filter_batch") or [])
        and all(callable(getattr(o["ScheduleBatch"], m, None)) for m in ("merge_batch", "check_decode_mem", "is_empty"))),
    Requirement(
        "Scheduler._add_request_to_queue(req, ...) and Req.set_finish_with_abort(error_msg, ...)",
        "rejecting invalid per-request SLOs at the scheduler's intake",
        lambda o: (_params(o["Scheduler"], "_add_request_to_queue") or [])[:2] == ["self", "req"]
        and (_params(o["Req"], "set_finish_with_abort") or [])[:2] == ["self", "error_msg"]),
    Requirement(
        "Scheduler._release_aborted_request(req), send_abort_output(abort_req, req) and beam_coordinator, "
        "scheduler._make_abort_req(req, finished_reason) and FINISH_ABORT(message, status_code, err_type).to_json()",
        "`--fair-admission shed`: a queued request taken out of the queue and answered HTTP 429, as "
        "Scheduler._abort_on_queued_limit evicts one",
        lambda o: _params(o["Scheduler"], "_release_aborted_request") == ["self", "req"]
        and (_params(o["Scheduler"], "send_abort_output") or [])[:3] == ["self", "abort_req", "req"]
        and _uses(o["Scheduler"], "_abort_on_queued_limit", "_release_aborted_request", "beam_coordinator",
                  "send_abort_output", "_make_abort_req")
        and list(inspect.signature(o["_make_abort_req"]).parameters)[:2] == ["req", "finished_reason"]
        and (_params(o["FINISH_ABORT"], "__init__") or [])[:4] == ["self", "message", "status_code", "err_type"]
        and callable(getattr(o["FINISH_ABORT"], "to_json", None))),
)


def sglang_objects(names: Mapping[str, str] = SGLANG_OBJECTS) -> dict[str, Any]:
    """Short name -> the SGLang object (None where it cannot be imported)."""
    out = {}
    for short, dotted in names.items():
        try:
            out[short] = pkgutil.resolve_name(dotted)
        except (ImportError, AttributeError, ValueError):
            out[short] = None
    return out


def missing_internals(objects: Mapping[str, Any] | None = None) -> list[str]:
    """Each requirement the SGLang classes do not meet, as 'what (needed for: ...)'. Empty on SGLang 0.5.23."""
    objs = sglang_objects() if objects is None else objects
    out = []
    for req in REQUIREMENTS:
        try:
            ok = bool(req.check(objs))
        except Exception:  # an object of an unexpected shape is a missing requirement, not a crash
            ok = False
        if not ok:
            out.append(f"{req.what} (needed for: {req.used_for})")
    return out


def missing_live_internals(sched) -> list[str]:
    """What the live scheduler instance lacks of the instance attributes the adapter reads or sets."""
    out = []
    for attr in ("chunked_prefill_size", "is_mixed_chunk", "waiting_queue", "chunked_req", "running_batch", "policy",
                 "max_total_num_tokens", "token_to_kv_pool_allocator", "tree_cache", "enable_lora"):
        if not hasattr(sched, attr):
            out.append(f"Scheduler.{attr}")
    fm = getattr(sched, "future_map", None)
    if fm is None or getattr(fm, "output_tokens_buf", None) is None:
        out.append("Scheduler.future_map.output_tokens_buf (decode deferral's per-row input-token relay)")
    for comp in ("load_inquirer", "invariant_checker"):
        if not hasattr(getattr(sched, comp, None), "get_running_batch"):
            out.append(f"Scheduler.{comp}.get_running_batch (parked decodes counted in /v1/loads)")
    return out


def require_internals(objects: Mapping[str, Any] | None = None) -> None:
    """Raise SystemExit naming every missing requirement (SGLang's plugin loader does not swallow SystemExit)."""
    missing = missing_internals(objects)
    if missing:
        raise SystemExit("sglang-fair: this SGLang lacks what an active --fair-policy relies on: " + "; ".join(missing)
                         + ". Use --fair-policy off, or an SGLang version sglang-fair supports (0.5.23).")
