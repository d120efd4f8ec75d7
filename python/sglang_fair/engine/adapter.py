"""The per-iteration glue inside SGLang's scheduler child: snapshot -> policy.plan -> validate -> apply; measure.

One `PolicyAdapter` per Scheduler (for whichever policy is active) (attached as `scheduler._sglang_fair`). The hooks in scheduler_hooks.py call:
- `rejoin(running_batch)` at the start of every `get_next_batch_to_run` (parked rows come back);
- `form_prefill(original, sched, running_batch)` in place of `get_new_batch_prefill`: the policy's step;
- `on_run_batch` / `on_result` around `run_batch` / `process_batch_result`: iteration timing -> online cost fit;
- `status()` for the internal-state RPC (the HTTP status and /get_load) and the Prometheus gauges.
A policy exception or an invalid plan makes that one step stock SGLang (counted under `faults`, logged once per
kind). With policy "off" no adapter is created and no hook changes behaviour.
"""

from __future__ import annotations

import collections
import dataclasses
import logging
import math
import time

from ..config import RuntimeConfig
from ..core import trace
from ..core.cost_model import CostModel
from ..core.headroom import Headroom
from ..core.plan_check import plan_problem
from ..core.prefill_shape import chunked_plan
from ..core.presets import load_cost_model
from ..core.types import Plan, Snapshot
from ..policies import Policy
from . import deferral, intake, sglang_view
from .snapshot import SnapshotBuilder

logger = logging.getLogger("sglang_fair")
DEMOTED_RECENT = 512
"""How many of the latest demotions the status lists (`demoted_recent`)."""

def admission_budget(snap: Snapshot, horizon_s: float) -> tuple[int, int]:
    """(prefill admission budget tokens, router token load) from core.load."""
    from ..core.load import prefill_admission_budget
    b = prefill_admission_budget(snap, horizon_s)
    return int(b.tokens), int(b.router_load_tokens)


class PolicyAdapter:
    """Runs `policy` (built by the caller from `cfg`) for one SGLang scheduler."""

    def __init__(self, sched, cfg: RuntimeConfig, policy: Policy) -> None:
        self.sched = sched
        self.cfg = cfg
        self.policy = policy
        self.prior, self.cost_source = load_cost_model(cfg.cost_model, str(getattr(sched, "device", "cpu")))
        self.headroom = Headroom()
        self.fitter = None
        if cfg.online_fit:
            from ..core.fit import OnlineCostFitter
            self.fitter = OnlineCostFitter(self.prior)
        self.saver = None
        if cfg.save_cost_model and self.fitter is not None:
            import atexit

            from .cost_store import CostModelSaver
            self.saver = CostModelSaver(cfg.save_cost_model)
            atexit.register(self._save_at_exit)
        self.builder = SnapshotBuilder(cfg.slo)
        self.arrivals = intake.ArrivalEstimate()
        """When each new request can have arrived (the intake hook stamps it; engine/intake.py)."""
        self.mixing_bans = sglang_view.mixing_bans(sched)
        self.prefix_matcher = sglang_view.PrefixMatcher(on_match=self.builder.waiting.touch)
        self.parking = deferral.Parking()
        self.running_views = deferral.install_running_view(sched, self.parking)
        self.horizon_s = (cfg.load_horizon_ms or cfg.slo.ttft_slo_ms) / 1000.0
        self.sync_device = str(getattr(sched, "device", "cpu")) == "cpu"
        self.hooks_verified = False
        # counters
        self.planned_iterations = 0
        self.stock_iterations = 0
        self.deferred_now = 0
        self.deferred_total = 0
        self.demoted_now = 0
        self.demotions_total = 0
        self.aged_now = 0
        """Requests in fair's aged lane in the last plan (Plan.aged)."""
        self._demoted_last: frozenset = frozenset()
        self.demoted_recent: collections.deque = collections.deque(maxlen=DEMOTED_RECENT)
        """The latest demotions, for a client to tell which of its requests were demoted (`status()`)."""
        self.plan_deferred_rows = 0
        self.reordered = 0
        self.chunk_limited = 0
        """Steps whose plan left SGLang's chunked request partial: it got its planned chunk (`chunked_plan`)."""
        self.cuts_dropped = 0
        """Planned cuts of a second request dropped because the chunked request stayed partial."""
        self.preempt_left_to_sglang = 0
        self.mixed_forwards = 0
        self.planned_prefill_tokens = 0
        self.budget_s = math.inf
        self.predicted_s = 0.0
        self.faults: collections.Counter = collections.Counter()
        self.no_defer_reasons: collections.Counter = collections.Counter()
        self._logged: set[str] = set()
        # timing
        self._launches: collections.deque = collections.deque(maxlen=8)
        self.recent_samples: collections.deque = collections.deque(maxlen=16)
        self.recent_plans: collections.deque = collections.deque(maxlen=16)
        self._prev_done = 0.0
        self.recent_iter_s = 0.0
        self.last_measured_s = 0.0
        self.last_predicted_s = 0.0
        self.abs_rel_err_ewma = 0.0
        self.overhead_s_total = 0.0
        self.overhead_s_max = 0.0
        self.rejected_at_arrival = 0
        """Requests answered HTTP 429 at arrival (`--fair-admission reject` or `shed`, engine/reject.py)."""
        self.shed_from_queue = 0
        """Queued requests answered HTTP 429 when the plan demoted them (`--fair-admission shed`, engine/reject.py)."""
        self.measured_iterations = 0
        self.gauges = None  # gauges.Gauges when --enable-metrics
        self.trace = trace.writer()  # --fair-trace (core/trace.py), or None
        self._first_traced: collections.OrderedDict[str, None] = collections.OrderedDict()
        """The latest requests given a `first_token` trace record (bounded)."""

    # ---- helpers ----------------------------------------------------------------------------------------------
    @property
    def fitted_cost(self) -> CostModel:
        """The cost model as fitted (what is saved and reported)."""
        return self.fitter.model if self.fitter is not None else self.prior

    @property
    def cost(self) -> CostModel:
        """The cost model plans use: the fit scaled by the observed headroom (core/headroom.py)."""
        return self.fitted_cost.scaled(self.headroom.factor)

    def _fault(self, kind: str, detail: str) -> None:
        self.faults[kind] += 1
        if kind not in self._logged:
            self._logged.add(kind)
            logger.warning("sglang-fair fault %s: %s (counted in status.faults; logged once per kind)", kind, detail)

    def snapshot(self, running_reqs, now: float | None = None) -> Snapshot:
        running_reqs = list(running_reqs)
        snap = self.builder.build(self.sched, running_reqs, now=time.perf_counter() if now is None else now,
                                  cost=self.cost, recent_iter_s=self.recent_iter_s)
        if not self.mixing_allowed(running_reqs):
            snap = dataclasses.replace(snap, mixing_allowed=False)
        return dataclasses.replace(snap, deferral_allowed=False) if self.sched.enable_lora else snap

    def mixing_allowed(self, running_reqs) -> bool:
        """After a snapshot (it reads the waiting mirror the snapshot updated)."""
        return not self.mixing_bans and sglang_view.mixing_allowed(running_reqs, self.sched.chunked_req,
                                                                   self.builder.waiting.blocks_mixing)

    # ---- hook bodies --------------------------------------------------------------------------------------------
    def rejoin(self, running_batch):
        self.deferred_now = 0
        return self.parking.rejoin(running_batch)

    def form_prefill(self, original, sched, running_batch):
        """Replaces one call of Scheduler.get_new_batch_prefill(running_batch) -> NextBatchPlan."""
        t0 = time.perf_counter()
        sglang_view.admit_ready_grammar(sched)  # SGLang does this only inside the call a plan may skip
        try:
            self.prefix_matcher.match(sched)
            snap = self.snapshot(running_batch.reqs, now=t0)
            plan = self.policy.plan(snap)
            problem = plan_problem(plan, snap)
        except Exception as exc:  # a policy bug must not take the server down
            self._fault("policy_exception", f"{type(exc).__name__}: {exc}")
            return self._stock_step(original, sched, running_batch)
        if problem is not None:
            self._fault("invalid_plan", problem)
            return self._stock_step(original, sched, running_batch)
        self.planned_iterations += 1
        record = {"seq": self.planned_iterations, "t_s": t0, "running": len(snap.running), "decode": len(plan.decode),
                  "first_token_known": sum(r.first_token_s is not None for r in snap.running),
                  "prefill_tokens": plan.prefill_tokens, "waiting": len(snap.waiting),
                  "budget_ms": plan.budget_s * 1000.0 if math.isfinite(plan.budget_s) else None,
                  "predicted_ms": plan.predicted_s * 1000.0, "demoted": len(plan.demoted), "aged": len(plan.aged),
                  "note": plan.note[:120]}
        self.recent_plans.append(record)
        self._count_demoted(plan.demoted, snap)
        if plan.demoted and self.cfg.admission == "shed":
            try:
                from .reject import shed_demoted
                shed_demoted(self, sched, plan, snap)  # HTTP 429 for the demoted requests still queued
            except Exception as exc:  # noqa: BLE001  (never lose a request over shedding: it stays queued)
                self._fault("admission", f"{type(exc).__name__}: {exc}")
        self.aged_now = len(plan.aged)
        self.budget_s = plan.budget_s
        self.predicted_s = plan.predicted_s
        self.planned_prefill_tokens += plan.prefill_tokens
        if plan.preempt:
            self.preempt_left_to_sglang += len(plan.preempt)

        # -- decode rows: park the deferred ones (preemption is left to SGLang's own retraction)
        defer, n_wanted = deferral.rows_to_defer(running_batch, set(plan.decode) | set(plan.preempt),
                                                 has_prefill=bool(plan.prefill), finishing=self._finishing_inflight,
                                                 blocked=self.no_defer_reasons, lora=not snap.deferral_allowed)
        self.plan_deferred_rows += n_wanted
        if defer:
            n = self.parking.park(running_batch, defer)
            self.deferred_now = n
            self.deferred_total += n
        n_decode = len(running_batch.reqs)

        # -- prefill
        if not plan.prefill:
            from sglang.srt.managers.schedule_batch import NextBatchPlan
            result = NextBatchPlan(batch_to_run=None, running_batch=running_batch)
        else:
            reqs, tokens, limit = self._resolve_prefill(sched, plan, snap)
            mixed = n_decode > 0 and bool(plan.decode)
            ctl = deferral.PrefillControl(sched, prefill_reqs=reqs, chunk_tokens=tokens, n_decode=n_decode,
                                          mixed=mixed, parked_reqs=self.parking.reqs, chunked_limit=limit)
            t_orig = time.perf_counter()
            try:
                result = original(sched, running_batch)
            finally:
                ctl.restore()
                self.builder.waiting.touch(reqs)  # SGLang matched their prefixes; the ones not admitted still wait
            t0 += time.perf_counter() - t_orig  # exclude SGLang's own batch building from our overhead
            if result.batch_to_run is not None and result.batch_to_run.forward_mode.is_mixed():
                self.mixed_forwards += 1
        if result.batch_to_run is None and result.running_batch.is_empty() and len(self.parking):
            # Nothing would run while rows sit parked: bring them back so the decode step takes them.
            result = type(result)(batch_to_run=None, running_batch=self.rejoin(result.running_batch))
        dt = time.perf_counter() - t0
        self.overhead_s_total += dt
        self.overhead_s_max = max(self.overhead_s_max, dt)
        if self.trace is not None and (snap.running or snap.waiting or snap.prefilling):  # idle wake-ups: not traced
            self.trace.write("plan", {**record, "prefilling": len(snap.prefilling), "n_prefill": len(plan.prefill),
                                      "prefill_chunks": [c for _, c in plan.prefill[:16]], "deferred": n_wanted,
                                      "parked": self.deferred_now if defer else 0, "preempt": len(plan.preempt),
                                      "note": plan.note, "overhead_ms": dt * 1000.0})
        return result

    def _stock_step(self, original, sched, running_batch):
        """This step as stock SGLang (a policy fault); SGLang works on the whole waiting queue."""
        self.stock_iterations += 1
        self.builder.waiting.invalidate()
        if self.trace is not None:
            self.trace.write("plan", {"seq": self.planned_iterations, "t_s": time.perf_counter(), "stock": True})
        with sglang_view.grammar_queue_hidden(sched):  # polled above: once per step on every rank
            return original(sched, running_batch)

    def _finishing_inflight(self, batch) -> list:
        fn = getattr(self.sched, "_reqs_finishing_inflight", None)
        try:
            return fn(batch) if fn is not None else []
        except Exception:  # its assertion on the result queue: be conservative, defer nothing finishing
            return list(batch.reqs)

    def _resolve_prefill(self, sched, plan: Plan, snap: Snapshot) -> tuple[list, int, int | None]:
        """(the Reqs to hand SGLang in plan order, their token budget, the limit of SGLang's chunked request):
        SGLang continues its chunked request first and cuts one request per step (core/prefill_shape.chunked_plan)."""
        chunked = sched.chunked_req
        reqs = [chunked if chunked is not None and rid == chunked.rid else self.builder.waiting.req(rid)
                for rid, _ in plan.prefill]
        views = {v.rid: v for v in snap.prefilling}
        chunks = [(c, (views.get(rid) or self.builder.waiting.view(rid)).remaining_prompt_tokens)
                  for rid, c in plan.prefill]
        partial_early = any(c < rem for c, rem in chunks[:-1])
        chunked_not_first = chunked is not None and (reqs[0] is not chunked)
        if partial_early or chunked_not_first:
            self.reordered += 1
        at = None if chunked is None else next((i for i, r in enumerate(reqs) if r is chunked), -1)
        limit, keep = chunked_plan(chunks, at, int(getattr(sched, "page_size", 1) or 1))
        if limit is None:
            return reqs, plan.prefill_tokens, None
        self.chunk_limited += 1
        self.cuts_dropped += sum(1 for i, (c, rem) in enumerate(chunks) if i != at and i not in keep)
        tokens = limit + sum(chunks[i][0] for i in keep)
        return [reqs[i] for i in keep], tokens, limit  # PrefillControl leaves the chunked request to SGLang anyway

    # ---- timing -------------------------------------------------------------------------------------------------
    def on_run_batch(self, batch, t_start: float, t_end: float) -> None:
        try:
            prefills, decodes = deferral.forward_features(batch)
        except Exception as exc:
            self._fault("features", f"{type(exc).__name__}: {exc}")
            return
        self._launches.append((prefills, decodes, t_start, t_end, list(batch.reqs), self.planned_iterations))

    def on_result(self, t_done: float) -> None:
        if not self._launches:
            return
        prefills, decodes, t_start, t_end, reqs, plan_seq = self._launches.popleft()
        if self.trace is not None:
            self._trace_first_tokens(reqs, t_done)
        gap = self.builder.token_times.observe(reqs, t_done)  # each row's latest token, whatever forward made it
        if self.sync_device:  # CPU forward runs inside run_batch
            measured = t_end - t_start
        else:  # accelerator: launch .. result processed, not before the previous batch was done
            measured = t_done - max(t_start, self._prev_done)
        self._prev_done = t_done
        if not (prefills or decodes) or measured <= 0:
            return
        predicted = self.fitted_cost.predict(prefills, decodes)
        self.headroom.observe(predicted, measured)
        self.recent_samples.append({"t_start_s": t_start, "t_done_s": t_done,
                                    "prefills": [list(p) for p in prefills[:8]], "n_decode": len(decodes),
                                    "decode_ctx": int(sum(decodes)), "measured_ms": measured * 1000.0,
                                    "predicted_ms": predicted * 1000.0})
        if self.trace is not None:
            self.trace.write("forward", {"plan_seq": plan_seq, "t_start_s": t_start, "t_done_s": t_done,
                                         "prefill_tokens": sum(c for c, _ in prefills),
                                         "prefills": [list(p) for p in prefills[:16]], "n_prefill": len(prefills),
                                         "n_decode": len(decodes), "decode_ctx": int(sum(decodes)),
                                         "measured_ms": measured * 1000.0, "predicted_ms": predicted * 1000.0,
                                         "max_token_gap_ms": gap * 1000.0})
        self.measured_iterations += 1
        self.last_measured_s, self.last_predicted_s = measured, predicted
        a = 0.1
        self.recent_iter_s = measured if self.measured_iterations == 1 else (1 - a) * self.recent_iter_s + a * measured
        self.abs_rel_err_ewma = (1 - a) * self.abs_rel_err_ewma + a * abs(predicted - measured) / measured
        if self.fitter is not None:
            try:
                self.fitter.observe(prefills, decodes, measured)
            except Exception as exc:
                self._fault("cost_fit", f"{type(exc).__name__}: {exc}")
            if self.saver is not None:
                try:
                    self.saver.maybe_save(self.fitter)
                except Exception as exc:  # a full disk must not stop serving
                    self._fault("save_cost_model", f"{type(exc).__name__}: {exc}")
        if self.gauges is not None:
            try:
                self.gauges.maybe_update(self.status)
            except Exception as exc:
                self._fault("metrics", f"{type(exc).__name__}: {exc}")

    def _trace_first_tokens(self, reqs, t_done: float) -> None:
        """One `first_token` record per request when its first token is processed (before `token_times` observes
        it): which server got which request, when its scheduler received it and when the first token came, on the
        scheduler's clock. A retracted request prefilled again is not recorded twice (it has more than one output),
        nor one that finished with its first token and still rides in the next launched batch (the overlap loop)."""
        times, recorded = self.builder.token_times, self._first_traced
        for req in reqs:
            if len(req.output_ids) != 1 or times.get(req.rid) or req.rid in recorded:
                continue
            recorded[req.rid] = None
            if len(recorded) > 1024:
                recorded.popitem(last=False)
            ts = req.time_stats
            self.trace.write("first_token", {
                "rid": req.rid, "recv_s": float(ts.scheduler_recv_time or ts.wait_queue_entry_time or 0.0),
                "arrival_s": getattr(req, intake.ARRIVAL_ATTR, None),
                "t_s": t_done, "prompt_tokens": len(req.origin_input_ids),
                "max_new_tokens": int(req.sampling_params.max_new_tokens or 0)})

    def _count_demoted(self, demoted: tuple[str, ...], snap: Snapshot | None = None) -> None:
        """Requests the plan serves as best effort (SLO-aware admission): how many now, and how many times one
        entered that state (a request demoted in consecutive plans counts once). Each entry is also kept in
        `demoted_recent` with what a client can match it by: the prompt's length and the arrival's wall time."""
        self.demoted_now = len(demoted)
        if demoted:
            now = frozenset(demoted)
            new = now - self._demoted_last
            self.demotions_total += len(new)
            self._demoted_last = now
            if new and snap is not None:
                views = {r.rid: r for r in (*snap.waiting, *snap.prefilling) if r.rid in new}
                to_wall = time.time() - time.perf_counter()  # arrival_s is on the scheduler's perf_counter clock
                self.demoted_recent.extend(
                    {"rid": rid, "prompt_tokens": v.prompt_tokens, "arrival_wall_s": v.arrival_s + to_wall}
                    for rid, v in views.items())
        elif self._demoted_last:
            self._demoted_last = frozenset()

    # ---- status -------------------------------------------------------------------------------------------------
    def current_snapshot(self) -> Snapshot:
        """A snapshot outside the policy step (status, arrivals): the running batch, the parked rows and the last
        extend batch's rows not merged yet."""
        running = list(self.sched.running_batch.reqs) + self.parking.reqs
        running += sglang_view.unmerged_rows(self.sched, running)
        return self.snapshot(running)

    def status(self) -> dict:
        snap = self.current_snapshot()
        budget, load = admission_budget(snap, self.horizon_s)
        fin = lambda x: x if math.isfinite(x) else None  # noqa: E731  (JSON has no inf)
        return {
            "active": True,
            "policy": self.cfg.policy,
            "params": dict(self.cfg.policy_params),
            "hooks_verified": self.hooks_verified,
            "planned_iterations": self.planned_iterations,
            "stock_iterations": self.stock_iterations,
            "deferred_now": len(self.parking),
            "deferred_last_plan": self.deferred_now,
            "deferred_total": self.deferred_total,
            "demoted_now": self.demoted_now,
            "demotions_total": self.demotions_total,
            "demoted_recent": list(self.demoted_recent),
            "aged_now": self.aged_now,
            **self.arrivals.status(),
            "plan_deferred_rows": self.plan_deferred_rows,
            "mixed_forwards": self.mixed_forwards,
            "admission": self.cfg.admission,
            "rejected_at_arrival": self.rejected_at_arrival,
            "shed_from_queue": self.shed_from_queue,
            "mixing_allowed": snap.mixing_allowed,
            "mixing_banned_by": list(self.mixing_bans),
            "reordered_plans": self.reordered,
            "chunk_limited_steps": self.chunk_limited,
            "cuts_dropped": self.cuts_dropped,
            "preempt_left_to_sglang": self.preempt_left_to_sglang,
            "no_defer_reasons": dict(self.no_defer_reasons),
            "budget_ms": fin(self.budget_s * 1000.0),
            "predicted_ms": self.predicted_s * 1000.0,
            "last_measured_ms": self.last_measured_s * 1000.0,
            "last_predicted_ms": self.last_predicted_s * 1000.0,
            "recent_iter_ms": self.recent_iter_s * 1000.0,
            "cost_rel_err_ewma": self.abs_rel_err_ewma,
            "measured_iterations": self.measured_iterations,
            "admission_budget_tokens": budget,
            "token_load": load,
            "load_horizon_ms": self.horizon_s * 1000.0,
            "num_running_reqs": len(snap.running),
            "num_waiting_reqs": len(snap.waiting) + len(snap.prefilling),
            "kv_used_tokens": snap.kv_used_tokens,
            "kv_capacity_tokens": snap.kv_capacity_tokens,
            "cost_model": self.fitted_cost.to_dict(),
            "cost_headroom": self.headroom.factor,
            "cost_model_source": self.cost_source,
            "cost_fit_samples": self.fitter.n_samples if self.fitter is not None else 0,
            "faults": dict(self.faults),
            "recent_samples": list(self.recent_samples),
            "recent_plans": list(self.recent_plans),
            "bad_slo_requests": self.builder.bad_slo_requests,
            "waiting_views_stale_fixed": self.builder.waiting.stale_fixed,
            "waiting_full_reads": self.builder.waiting.full_reads,
            "recent_request_slos": [{"rid": rid, "ttft_slo_ms": t * 1000.0, "tpot_slo_ms": p * 1000.0, "strict": st}
                                    for rid, (t, p, st) in self.builder.recent_custom_slos.items()],
            "cost_model_saves": self.saver.saves if self.saver is not None else 0,
            "overhead_ms_mean": 1000.0 * self.overhead_s_total / max(1, self.planned_iterations),
            "overhead_ms_max": 1000.0 * self.overhead_s_max,
            "trace": self.trace.status() if self.trace is not None else None,
        }

    def _save_at_exit(self) -> None:
        try:
            self.saver.maybe_save(self.fitter)
        except Exception:  # noqa: BLE001  (interpreter shutdown: nothing left to report to)
            pass
