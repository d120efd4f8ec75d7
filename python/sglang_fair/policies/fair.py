"""`fair`: FairBatching's deadline-aware, time-budgeted batch formation (arXiv 2510.14392, as far as the public
material pins it down; the choices it leaves open are in docs/design.md, "Policies").

Per iteration:
1. Budget. With running decodes: `max(min decode slack, min tpot_slo)`, at most the least time a decode has before
   its token gap passes `max_token_gap_tpot` x tpot_slo; without: `max_budget_ms` (no envelope to
   protect, and bigger chunks are cheaper per token).
   A decode behind its envelope (an iteration ran longer than planned) lowers it to what lands its last token on time
   (`recover_tpot`). Where the plan then carries no prefill while prompts wait, it is made again with each decode
   past saving (no iteration length lands its last token on time) counted by its token-gap deadline instead
   (`lost_decode`). Then clamped to [min_budget_ms, max_budget_ms], and never below the cost of the smallest step that
   makes progress.
2. Urgent decodes: slack < budget + min tpot_slo, or less than budget + its tpot_slo left before its token gap
   would pass `max_token_gap_tpot` x tpot_slo (those gap deadlines also cap the budget in step 1). They always run
   (preempting, when KV is short, partial prefills and then the running requests with the most slack). If they
   alone exceed the budget the plan is decode-only; where they alone take longer than a TPOT (a device slower than
   their SLO) the aged requests (below) still get `aged_share` of the step (at least the smallest chunk), so prompts
   do not wait for as long as the decodes stay over budget.
3. Prefills (partial and waiting) earliest TTFT deadline first while time and KV remain; the last chunk is sized with
   `CostModel.max_chunk` for the time left. A waiting request is admitted only if its whole prompt (plus its output
   reservation) fits; the first that does not fit stops admission, so a large prompt is never overtaken for ever.
   Where the engine holds one partial prefill (`Snapshot.one_partial_prefill`, SGLang) at most one request ends the
   step partial: a cut that would leave a second one partial is not planned; the time goes to the partial request
   instead (SGLang continues it first anyway), and the request it went ahead of follows it if it finishes.
4. Non-urgent decodes by ascending slack while time remains; the others are deferred (they keep their KV).
Decode rows that share a forward with prefill are charged the cost model's mixed term, so where mixing is slow
(SGLang's CPU backend) fair runs prefill alone and lets decodes with slack sit the step out. Where the engine cannot
mix (`Snapshot.mixing_allowed` false) every plan is prefill-only (decodes sit out, the prefill budget leaving room for
the decode step after it) or decode-only (urgent decodes, or a prefill too small to be worth its own step). Such a
small prefill is held back for a bigger step only until the head of the prefill queue has waited one TPOT (the
smallest running tpot_slo after the margin); then it runs, mixed or alone.

SLO-aware admission (`admission="demote"`, beyond the paper): a waiting request whose first token
cannot be on time even by an optimistic estimate (EDF queue ahead of it, prefilled at the share of each TPOT the running
decodes leave, no per-iteration cost) is demoted to best effort: it goes after every on-time prefill and is listed in
`Plan.demoted` (the simulator counts it as an SLO miss). Stateless: a request is re-judged every step.
`admission="demote-longest"` (the default, with `demote_max_wait_ttft=5`) demotes the longest kept prompt instead
(Moore-Hodgson: fewest late requests); `admission="off"` serves every request EDF, as the paper does. A request that
has waited `demote_max_wait_ttft` TTFT SLOs is no longer demoted: it joins the aged lane, for which `aged_share` (0.1)
of each iteration's prefill time is kept from on-time work (the lane fills after it, with that time and any left).
`demoted_slot="before_aged"` serves the demoted requests right after on-time work, ahead of the aged lane (which keeps
its share): the requests demoted just after an overload then wait seconds, not for the overload's backlog.
`prefill_order="sjf"` serves the requests admission judged on time shortest prompt first instead of EDF (slai's
order: more requests on time on Azure conv, the long prompts later, worse on Azure code and ShareGPT; an option).
"""

from __future__ import annotations

import math
from dataclasses import replace
from heapq import nsmallest
from itertools import chain, compress
from operator import attrgetter
from typing import NamedTuple

from ..core.types import Plan, ReqView, Snapshot
from .admission import AgedLane, admission_lanes, admission_split, aged_lane, prefill_share
from .common import (admission_tokens, decode_rows_s, decode_time_s, edf_key, lazy_edf, make_plan, merge_edf,
                     outstanding_reserve_tokens, output_reserve_tokens, predicted_s, preempt_until)
from .fair_params import FairParams
from .registry import register_policy

__all__ = ["FairParams", "FairPolicy"]

_DECODE_ONLY = "fair decode-only: urgent decodes exceed budget"
_REMAINING = attrgetter("remaining_prompt_tokens")


class _DecodeRows(NamedTuple):
    """Step 1's view of the running decodes (`FairPolicy._decode_rows`), shared by `_plan`'s two passes."""
    slacks: list[float]  # each next token's slack on its envelope (catch-up credited), s
    tpots: list[float]  # each TPOT SLO less the margin, s
    tpot_min: float
    min_slack: float
    floor_s: float  # progress floor: one decode of the most urgent request
    gap_slacks: list[float] | None  # time left before each token gap passes its bound; None: no gap guard
    recover_s: float  # `recover_tpot`'s cap on the budget (inf: no decode behind its envelope can be won back)
    lost: list[int]  # indices of the decodes past saving (`FairPolicy._landings`)
    ctx: list[int]  # each one's context tokens (what its decode row reads)
    all_s: float  # `decode_time_s` of every running request (one decode step of all of them, no base cost)
    tpot_max: float


@register_policy("fair")
class FairPolicy:
    name = "fair"

    def __init__(self, params: FairParams | None = None, **kw) -> None:
        self.params = params if params is not None else FairParams(**kw)

    def plan(self, snap: Snapshot) -> Plan:
        rows = self._decode_rows(snap) if snap.running else None
        if self.params.admission != "off" and snap.waiting:
            p = self.params
            dec_s = rows.all_s if rows else 0.0  # one decode step of every running request, shared
            share, longest = prefill_share(snap, dec_s), p.admission == "demote-longest"
            aged = None
            if p.aged_share < 1.0 and p.demote_max_wait_ttft < math.inf:  # the aged get a lane of their own
                on_time, unjudged, demoted, aged = admission_lanes(snap, longest, p.demote_max_wait_ttft,
                                                                   p.admission_window_reqs, share, p.aged_share)
                aged = aged or None
            else:
                on_time, unjudged, demoted = admission_split(snap, longest, p.demote_max_wait_ttft,
                                                             p.admission_window_reqs, share)
            if p.prefill_order == "sjf" and on_time:  # shortest first (sorted is stable: ties stay in EDF order)
                on_time = sorted(on_time, key=_REMAINING)
                return replace(self._plan(snap, rows, unjudged, demoted, on_time, aged),
                               demoted=tuple([r.rid for r in demoted]), aged=aged.rids() if aged else ())
            if demoted or aged:  # the judged on-time requests (EDF), then those beyond the judging window, then the demoted
                plan = self._plan(snap, rows, unjudged, demoted, on_time, aged) if unjudged else \
                    self._plan(snap, rows, on_time, demoted, (), aged)
                return replace(plan, demoted=tuple([r.rid for r in demoted]),
                               aged=aged.rids() if aged else ())
        return self._plan(snap, rows, snap.waiting, ())

    def _plan(self, snap: Snapshot, rows: _DecodeRows | None, waiting, demoted, edf_head=(),
              aged: AgedLane | None = None) -> Plan:
        """`_plan_once`; where that plan carries no prefill (or only the aged lane's share of a decode-only step)
        while prefill work waits and KV has room for more than
        the decodes' next tokens, planned again with each decode past saving (`_landings`) judged by its token-gap
        deadline (`lost_decode="gap"`), when there is one; where the gap bound itself is shorter than a step that
        carries them and the smallest prefill chunk (`_chunk_step_s`), by that step instead (the prompt would otherwise
        still wait for the decode to end). `rows`: `_decode_rows` (None without running decodes)."""
        p = self.params
        again = (rows is not None and bool(rows.lost) and p.lost_decode == "gap" and (snap.waiting or snap.prefilling)
                 and p.max_token_gap_tpot < math.inf and snap.kv_free_tokens > len(snap.running))
        plan = self._plan_once(snap, rows, waiting, demoted, edf_head, aged, final=not again)
        if plan is None or (again and not plan.prefill):  # None: a decode-only plan, which the second pass replaces
            lost = rows.lost
            plan = self._plan_once(snap, rows, waiting, demoted, edf_head, aged, lost=lost,
                                   lost_floor_s=self._chunk_step_s(snap, lost))
            return replace(plan, note=plan.note + " (decodes past saving paced by their gap bound)")
        return plan

    def _decode_rows(self, snap: Snapshot) -> _DecodeRows:
        """What step 1 needs of the running decodes (at least one), the same in both of `_plan`'s passes and to
        admission (`all_s`)."""
        p, cost, running, now = self.params, snap.cost, snap.running, snap.now
        keep = 1.0 - p.tpot_margin
        ctx = [r.prefilled_tokens + r.output_tokens for r in running]
        all_s = decode_rows_s(cost, len(running), sum(ctx))  # = decode_time_s(cost, running), from the same sum
        slacks = self._decode_slacks(running, now, keep)
        if p.catchup_tokens and p.decode_anchor == "first_token":
            step = cost.base_s + all_s
            k = p.catchup_tokens
            slacks = [s + min(k, max(0, r.max_new_tokens - r.output_tokens - 1))
                      * max(0.0, r.tpot_slo_s * keep - step) for s, r in zip(slacks, running)]
        min_slack = min(slacks)
        tpots = [r.tpot_slo_s * keep for r in running]
        tpot_min, tpot_max = min(tpots), max(tpots)
        # progress floor: one decode of the most urgent request always fits
        floor_s = cost.base_s + cost.decode_s(ctx[slacks.index(min_slack)])
        recover_s, lost = self._landings(running, tpots, slacks, floor_s) if min_slack < tpot_max else \
            (math.inf, [])
        if not (p.recover_tpot and min_slack < tpot_min):
            recover_s = math.inf
        return _DecodeRows(slacks, tpots, tpot_min, min_slack, floor_s,
                           self._gap_slacks(running, tpots, tpot_min, tpot_max, now), recover_s, lost, ctx, all_s,
                           tpot_max)

    def _plan_once(self, snap: Snapshot, rows: _DecodeRows | None, waiting, demoted, edf_head=(),
                   aged: AgedLane | None = None, *, lost: list[int] | None = None,
                   lost_floor_s: float = 0.0, final: bool = True) -> Plan | None:
        """The FairBatching plan with `edf_head` served first (in its order, already EDF), then `waiting` EDF and then
        `demoted` (in its order). `rows`: `_decode_rows` (None without running decodes). `aged`: the aged lane
        (admission.admission_lanes): on-time work may then use only 1 - `aged_share` of the prefill time, and the
        lane, then the demoted, fill the rest (`_fill`).
        `lost`: indices of running decodes judged by their gap slack where that is larger, and at least
        `lost_floor_s` where their gap bound is shorter (`_plan`'s second pass). Not `final` (a second pass follows
        a plan without prefill or a decode-only one): None instead of a decode-only plan."""
        p = self.params
        now, cost, running = snap.now, snap.cost, snap.running
        if not running and not snap.prefilling and not snap.waiting:
            return Plan(budget_s=p.min_budget_ms / 1000.0, note="fair idle")
        lo, hi = p.min_budget_ms / 1000.0, p.max_budget_ms / 1000.0
        head = prefills = None
        lane, prefilling, lane_turn = None, snap.prefilling, False
        if aged:  # the aged lane, then the demoted, share the time on-time prefill leaves them (`demoted_slot`)
            if p.demoted_slot == "after_aged":
                lane = aged.then(demoted) if demoted else aged
                demoted = ()
            else:  # "before_aged": the demoted follow on-time work in its time, the lane keeps its share
                lane = aged
            in_lane = frozenset([r.rid for r in aged.partials])
            if in_lane:
                prefilling = tuple([r for r in prefilling if r.rid not in in_lane])
            # one partial prefill, partial_slot alternate: an on-time request held it, so the lane starts the next cut
            lane_turn = snap.one_partial_prefill and bool(prefilling) and p.partial_slot == "alternate"

        # ---- 1. budget and urgency ----------------------------------------------------------------------------------
        if running:
            slacks, tpots, tpot_min, min_slack, floor_s, gap_slacks = rows[:6]
            if lost:  # `_plan`'s second pass: decodes past saving are judged by their gap deadlines (not None here),
                # a gap bound shorter than a step that carries them and the smallest chunk floored at that step
                slacks, gap_slacks = list(slacks), list(gap_slacks)
                g = p.max_token_gap_tpot
                for i in lost:
                    if g * tpots[i] < lost_floor_s:
                        gap_slacks[i] = max(gap_slacks[i], lost_floor_s)
                    slacks[i] = max(slacks[i], gap_slacks[i])
                min_slack = min(slacks)
            budget = min(max(min_slack, tpot_min), rows.recover_s)
            if gap_slacks is not None and p.gap_caps_budget:
                min_gap = min(gap_slacks)
                budget = min(budget, min_gap)
                # the prefill-only alternative (3b) must also leave the decode step after it inside every gap
                min_slack_3b = min(min_slack, min_gap)
            else:
                min_slack_3b = min_slack
            budget = max(min(max(budget, lo), hi), floor_s)
            thr = budget + tpot_min
            if gap_slacks is None:
                urgent_mask = [s < thr for s in slacks]
            elif p.gap_caps_budget:  # urgent one tpot before the gap deadline, as at the envelope's
                if rows.tpot_max == tpot_min:
                    urgent_mask = [s < thr or gs < thr for s, gs in zip(slacks, gap_slacks)]
                else:
                    urgent_mask = [s < thr or gs < budget + tp for s, gs, tp in zip(slacks, gap_slacks, tpots)]
            else:  # the old guard: urgent only when this iteration alone would pass the gap deadline
                urgent_mask = [s < thr or gs < budget for s, gs in zip(slacks, gap_slacks)]
            if not snap.deferral_allowed:  # every forward that decodes decodes them all: plan (and cost) them all
                urgent_mask = [True] * len(running)
            urgent = list(compress(running, urgent_mask))
            if p.full_kv_progress and not urgent and snap.kv_free_tokens < 1:
                i = slacks.index(min_slack)  # no KV for anything: make room now rather than idle until it is urgent
                urgent_mask[i] = True
                urgent = [running[i]]
        else:
            slacks, urgent_mask, urgent = [], [], []
            prefills = merge_edf(prefilling, self._waiting_order(edf_head, waiting, p.prefill_window_reqs))
            if demoted:
                prefills = chain(prefills, [(r, True) for r in demoted])
            head = next(prefills, None)  # (request, is_waiting) with the earliest TTFT deadline
            h = (head if head is not None else next(iter(lane)))[0]
            # No running decode has an envelope to protect: spend the whole cap on prefill (bigger chunks are
            # cheaper per token). Sizing by the head's TTFT slack starved late prompts into minimum chunks.
            budget = hi
            c0 = min(h.remaining_prompt_tokens, p.min_prefill_chunk_tokens)
            budget = max(budget, cost.base_s + cost.prefill_s(c0, h.prefilled_tokens))

        # ---- KV: make room for the urgent decodes ------------------------------------------------------------------
        free = snap.kv_free_tokens
        preempt: list[str] = []
        n_lazy = len(running) - len(urgent)
        if free < len(urgent):
            preempt, free = self._preempt(snap, slacks, urgent_mask, free, len(urgent))
            gone = frozenset(preempt)
            urgent = [r for r in urgent if r.rid not in gone]
            n_lazy = sum(1 for r, u in zip(running, urgent_mask) if not u and r.rid not in gone)
        gone = frozenset(preempt)
        if not running:
            urgent_s = 0.0
        elif len(urgent) == len(running):  # every running request decodes (the same rows, in the same order)
            urgent_s = rows.all_s
        elif not preempt:  # `decode_time_s(cost, urgent)` from the contexts step 1 read
            urgent_s = decode_rows_s(cost, len(urgent), sum(compress(rows.ctx, urgent_mask)))
        else:
            urgent_s = decode_time_s(cost, urgent)
        t = cost.base_s + urgent_s
        if urgent and t > budget:
            if not final:
                return None
            prefill = []
            # the urgent decodes alone take longer than a TPOT: the device (or the cost model) is slower than their
            # SLO, and they stay over budget for as long as they run; the aged requests keep their share of the step
            # (`aged_share`: the decodes' time x share / (1 - share), at most `max_budget_ms`; at least the smallest
            # chunk), so no prompt waits for all of them to end. Over a budget that recovery or slack cut below a
            # TPOT, the step stays decode-only (it ends sooner).
            slow = t > tpot_min and p.aged_share > 0 and snap.mixing_allowed
            if slow and aged is None and p.demote_max_wait_ttft < math.inf:  # no lanes were formed (no waiting
                # request, or admission off): the aged requests as the lanes find them (a preempted one is skipped)
                aged = aged_lane(snap, p.demote_max_wait_ttft) or None
            if slow and aged and free - len(urgent) - n_lazy > 0:
                mix_s, order = cost.mixed_s(len(urgent)), iter(aged)
                lane_s = hi if p.aged_share >= 1.0 else min(hi, t * p.aged_share / (1.0 - p.aged_share))
                prefill, t, _ = self._fill(snap, next(order, None), order, t + mix_s + lane_s, t,
                                           free - len(urgent) - n_lazy, gone, floor=True, strict=False, mix_s=mix_s)
            plan = make_plan(cost, prefill, urgent, preempt, budget, predicted=t,
                             note=_DECODE_ONLY + (" (the aged lane's share)" if prefill else ""))
            return replace(plan, aged=aged.rids()) if aged else plan
        kv_left = free - len(urgent) - n_lazy  # one token kept per non-urgent decode, so deferring never forces preemption
        if prefills is None and kv_left > 0 and budget > t:
            prefills = self._prefill_order(snap, cost.max_chunk(budget - t), kv_left, waiting, demoted,
                                           edf_head, prefilling)
            head = next(prefills, None)

        # ---- 3. prefills, earliest deadline first ----------------------------------------------------------------
        # urgent decodes cost more once a prefill shares their forward (CostModel.mixed_s); where the engine cannot
        # mix at all, no prefill may join them
        no_mix = not snap.mixing_allowed
        mix_urgent = math.inf if no_mix and urgent else cost.mixed_s(len(urgent))
        prefill, t, kv_left = self._fill(snap, head, prefills, budget, t, kv_left, gone, floor=not running,
                                         strict=bool(urgent), mix_s=mix_urgent, lane=lane, lane_turn=lane_turn)

        # ---- 3b. where mixing is slow: prefill alone while every decode sits the step out, or decodes alone ----------
        if (running and not preempt and (cost.per_mixed_decode_req_s > 0 or no_mix)
                and (snap.prefilling or snap.waiting)):
            t_dec = cost.base_s + rows.all_s  # the next step
            b_budget = min_slack_3b - t_dec
            alt_kv = free - len(running)
            if b_budget > 2.0 * cost.base_s and alt_kv > 0:
                order = self._prefill_order(snap, cost.max_chunk(b_budget - cost.base_s), alt_kv, waiting, demoted,
                                           edf_head, prefilling)
                alt, t_alt, _ = self._fill(snap, next(order, None), order, b_budget, cost.base_s, alt_kv, gone,
                                           floor=False, strict=True, mix_s=0.0, lane=lane, lane_turn=lane_turn)
                # a step of its own must carry at least its fixed cost in prefill work (live: 19-token steps at
                # ~45 ms base each halved prefill throughput); otherwise decode now and prefill with the slack won,
                # unless its head has been held for a TPOT already (nothing more came to share the step)
                if sum(c for _, c in alt) > sum(c for _, c in prefill) and (
                        t_alt >= 2.0 * cost.base_s or now - alt[0][0].arrival_s >= tpot_min):
                    return make_plan(cost, alt, [], preempt, b_budget, predicted=t_alt,
                                     note=f"fair prefill-only budget={b_budget * 1e3:.1f}ms: decodes sit out")
            if (prefill and urgent and now - prefill[0][0].arrival_s < tpot_min
                    and t - cost.base_s - urgent_s - mix_urgent < mix_urgent):
                # the mixed penalty would cost more than the prefill it carries: decode now, prefill alone later,
                # for at most a TPOT (`tpot_min`) after the head's arrival: a prompt alone behind long decodes
                # would otherwise wait for them to finish (no later prompt comes to make a prefill step worth it)
                prefill, t, kv_left = [], cost.base_s + urgent_s, free - len(urgent) - n_lazy

        # ---- 4. non-urgent decodes by slack while time remains ---------------------------------------------------
        lazy_decodes: list[ReqView] = []
        kv_lazy = kv_left + n_lazy  # KV the non-urgent decodes may use (>= n_lazy unless KV was already short)
        if n_lazy and budget - t >= cost.per_decode_req_s and kv_lazy > 0 and not (no_mix and prefill):
            cand = [i for i, u in enumerate(urgent_mask) if not u and running[i].rid not in gone] if gone else \
                [i for i, u in enumerate(urgent_mask) if not u]
            rem_t = budget - t
            per_req, per_ctx = cost.per_decode_req_s, cost.per_context_token_s
            if prefill:
                per_req += cost.per_mixed_decode_req_s
            # each decode costs at least per_req, so at most rem_t / per_req of them can fit
            cap = rem_t / per_req if per_req > 0 else math.inf
            k = min(len(cand), kv_lazy, int(cap) + 1 if cap < len(cand) else len(cand))
            key = slacks.__getitem__  # ties keep running order
            for i in (nsmallest(k, cand, key=key) if k < len(cand) // 4 else sorted(cand, key=key)[:k]):
                r = running[i]
                dt = per_req + per_ctx * (r.prefilled_tokens + r.output_tokens)
                if dt > rem_t:
                    break
                rem_t -= dt
                t += dt
                lazy_decodes.append(r)
        decodes = urgent + lazy_decodes if lazy_decodes else urgent
        return make_plan(cost, prefill, decodes, preempt, budget, predicted=t,
                         note=f"fair budget={budget * 1e3:.1f}ms urgent={len(urgent)} lazy={len(lazy_decodes)}")

    @staticmethod
    def _waiting_order(edf_head, waiting, window: int):
        return chain(edf_head, lazy_edf(waiting, window)) if edf_head else lazy_edf(waiting, window)

    def _prefill_order(self, snap: Snapshot, fit_tokens: int, kv_left: int, waiting, demoted=(), edf_head=(),
                       prefilling=None):
        """Partial prefills and waiting requests, earliest TTFT deadline first: EDF only among as many of the oldest
        waiting requests as could still start this iteration (counted at `min_prefill_chunk_tokens` each, so prompts
        shorter than that can start beyond the window, in arrival order); demoted requests after all of them."""
        p = self.params
        window = 1 + min(kv_left, fit_tokens) // p.min_prefill_chunk_tokens
        if p.prefill_window_reqs:
            window = min(window, p.prefill_window_reqs)
        order = merge_edf(snap.prefilling if prefilling is None else prefilling,
                          self._waiting_order(edf_head, waiting, window))
        return chain(order, [(r, True) for r in demoted]) if demoted else order

    def _fill(self, snap: Snapshot, item, prefills, budget: float, t: float, kv_left: int, gone: frozenset, *,
              floor: bool, strict: bool, mix_s: float, lane: AgedLane | None = None,
              lane_turn: bool = False) -> tuple[list, float, int]:
        """Prefill chunks EDF while time and KV remain (step 3). `floor`: the first chunk gets at least
        min_prefill_chunk_tokens (an otherwise idle engine); `strict`: not even the first chunk may be shorter than
        that (unless it finishes the prompt); `mix_s`: extra time charged when the first prefill joins decodes.
        `lane` (the aged lane, `aged_share`): `prefills` may use only 1 - aged_share of the prefill time; when its
        time is spent, or it has nothing left, the lane's requests fill the rest of the budget in order. The lane
        shares time, not KV: the order before it admits first (keeping the lane's head out of KV cost 90%-attainment
        capacity wherever KV binds; docs/results.md, "Aged requests in a lane of their own")."""
        p, cost = self.params, snap.cost
        prefill: list[tuple[ReqView, int]] = []
        # One partial prefill (`snap.one_partial_prefill`): a request may be cut only while no other stays partial
        open_partials = {r.rid for r in snap.prefilling if r.rid not in gone} if snap.one_partial_prefill else None
        planned: set[str] = set()  # rids in `prefill` (only tracked under that rule: a partial may be served early)
        back = None  # the item a partial was served ahead of
        resume = None  # (item, order) of on-time work held back for the lane's turn at the cut
        ratio = p.kv_reserve_output_ratio
        reserve = None
        limit = budget if lane is None else t + (1.0 - p.aged_share) * (budget - t)
        while True:
            if item is None:  # this order is done (or out of its time): the lane, if any, goes on to the budget
                back = None
                if lane is None:
                    if resume is not None and not open_partials:  # the lane's turn at the cut went unused
                        (item, prefills), resume, lane_turn = resume, None, False
                        continue
                    break
                prefills, lane, limit = iter(lane), None, budget
                item = next(prefills, None)
                continue
            r, is_new = item
            rem_t = limit - t - (mix_s if not prefill else 0.0)
            if kv_left <= 0:
                break
            if rem_t <= 0:
                item = None
                continue
            if r.rid in gone or r.rid in planned:
                item = next(prefills, None)
                continue
            remaining = r.remaining_prompt_tokens
            if is_new:
                if reserve is None:  # partial chunks planned so far are already inside the reserve
                    reserve = outstanding_reserve_tokens(snap, ratio, gone) - sum([c for _, c in prefill])
                if kv_left - reserve < admission_tokens(r, ratio):
                    break  # head-of-line: a request that does not fit blocks later ones (the lane too)
            c = min(remaining, kv_left, cost.max_chunk(rem_t, r.prefilled_tokens))
            if floor and not prefill:  # the floor put in the budget for this chunk; absorbs float rounding
                c = max(c, min(remaining, kv_left, p.min_prefill_chunk_tokens))
            if c <= 0 or (c < remaining and c < p.min_prefill_chunk_tokens and (prefill or strict)):
                item = None  # out of time (kv_left > 0 here unless c is 0 for want of KV: the next pass stops)
                continue
            if open_partials is not None:
                if c < remaining and lane_turn and lane is not None and r.rid not in open_partials:
                    resume, item = (item, prefills), None  # the lane's turn at the one cut: on-time work waits
                    continue
                if c < remaining and (len(open_partials) > 1 or (open_partials and r.rid not in open_partials)):
                    # another request stays partial: the engine would drop this cut. It continues that one first in
                    # any case, so the time goes to it (ahead of its turn) while it is not yet planned.
                    # (once per item: with several partials, as only a test or the old engine mode makes, the
                    # jumped-to one may not be cut either)
                    nxt = None if back is not None else next(
                        (q for q in snap.prefilling if q.rid in open_partials and q.rid not in planned
                         and q.rid != r.rid), None)
                    if nxt is None and prefill and prefill[-1][1] < prefill[-1][0].remaining_prompt_tokens:
                        before = kv_left
                        t, kv_left = self._extend_last(snap, prefill, limit, t, kv_left)  # the one partial: more
                        if reserve is not None:
                            reserve -= before - kv_left
                    back, item = (item, (nxt, False)) if nxt is not None else (None, None)
                    continue
                if c < remaining:
                    open_partials = {r.rid}  # the one partial prefill from here on: nothing else may be cut
                else:
                    open_partials.discard(r.rid)
                planned.add(r.rid)
            if not prefill:
                t += mix_s
            prefill.append((r, c))
            t += cost.prefill_s(c, r.prefilled_tokens)
            kv_left -= c
            if is_new:
                reserve += remaining - c + output_reserve_tokens(r, ratio)
            elif reserve is not None:
                reserve -= c
            if c < remaining:
                item = None
            else:  # the request a partial was served ahead of (`back`) comes next: its cut may be allowed now
                item, back = (back, None) if back is not None else (next(prefills, None), None)
        if open_partials is not None and prefill and prefill[-1][1] < prefill[-1][0].remaining_prompt_tokens:
            t, kv_left = self._extend_last(snap, prefill, budget, t, kv_left)  # time nothing else could take
        return prefill, t, kv_left

    @staticmethod
    def _extend_last(snap: Snapshot, prefill: list, limit: float, t: float, kv_left: int) -> tuple[float, int]:
        """The plan's last item is its one partial prefill and nothing else may be cut: it takes the time left up to
        `limit` (and the KV left), as SGLang would run it with the step's tokens."""
        cost = snap.cost
        r, c = prefill[-1]
        extra = min(r.remaining_prompt_tokens - c, kv_left,
                    max(0, cost.max_chunk(limit - t + cost.prefill_s(c, r.prefilled_tokens), r.prefilled_tokens) - c))
        if extra <= 0:
            return t, kv_left
        t += cost.prefill_s(c + extra, r.prefilled_tokens) - cost.prefill_s(c, r.prefilled_tokens)
        prefill[-1] = (r, c + extra)
        return t, kv_left - extra

    def _chunk_step_s(self, snap: Snapshot, lost: list[int]) -> float:
        """Cost of a step that decodes the running requests at `lost` and prefills the smallest chunk
        (`min_prefill_chunk_tokens` after the longest partial prefill's prefix): the least a plan that serves a
        waiting prompt takes, which a decode past saving's gap deadline is floored at."""
        prefix = max([r.prefilled_tokens for r in snap.prefilling], default=0)
        return predicted_s(snap.cost, [(self.params.min_prefill_chunk_tokens, prefix)],
                           [snap.running[i] for i in lost]) + 1e-9  # 1 ns: float rounding

    @staticmethod
    def _landings(running, tpots: list[float], slacks: list[float], floor_s: float) -> tuple[float, list[int]]:
        """The landing length of each decode behind its envelope (slack s below its envelope's tpot tp, `tpots`; m >= 1
        tokens left) is `tp + (s - tp) / m`, the uniform iteration length that lands its last token by first_token +
        (outputs - 1) x tp. Returns (the smallest landing length from the progress floor `floor_s` up, which
        `recover_tpot` caps the budget at (inf: none); indices of the decodes past saving, whose landing length is
        below the floor: no iteration length lands them on time, `lost_decode`). One loop, not a list of landings and
        two filters over it: at 256 rows, most of them behind, it saves about a third of this step."""
        recover_s, lost = math.inf, []
        for i, (r, tp, s) in enumerate(zip(running, tpots, slacks)):
            if s < tp and (m := r.max_new_tokens - r.output_tokens) >= 1:
                x = tp + (s - tp) / m
                if x < floor_s:
                    lost.append(i)
                elif x < recover_s:
                    recover_s = x
        return recover_s, lost

    def _gap_slacks(self, running, tpots: list[float], tpot_min: float, tpot_max: float,
                    now: float) -> list[float] | None:
        """Time each running decode has left before its gap since its last token passes `max_token_gap_tpot` x its
        tpot_slo (inf without a last token time); None when the guard is off."""
        g = self.params.max_token_gap_tpot
        if g == math.inf:
            return None
        inf = math.inf
        if tpot_max == tpot_min:  # one TPOT class (the common case, and cheaper)
            off = g * tpot_min - now
            return [inf if (lt := r.last_token_s) is None else lt + off for r in running]
        return [inf if (lt := r.last_token_s) is None else lt + g * tp - now for r, tp in zip(running, tpots)]

    def _decode_slacks(self, running, now: float, keep: float = 1.0) -> list[float]:
        """Slack of each running request's next token. Anchor "first_token": first_token_s + j * tpot (the TPOT
        measured from the first token, as the metrics define it), falling back to the arrival envelope when the
        first token time is unknown; anchor "arrival": arrival + ttft + j * tpot (the paper's envelope). tpot is
        the request's TPOT SLO x `keep` (1 - `tpot_margin`)."""
        if self.params.decode_anchor == "first_token":
            return [(r.arrival_s + r.ttft_slo_s if (f := r.first_token_s) is None else f)
                    + r.output_tokens * r.tpot_slo_s * keep - now for r in running]
        return [r.arrival_s + r.ttft_slo_s + r.output_tokens * r.tpot_slo_s * keep - now for r in running]

    @staticmethod
    def _preempt(snap: Snapshot, slacks: list[float], urgent_mask: list[bool], free: int,
                 need: int) -> tuple[list[str], int]:
        """Free KV for the urgent decodes: partial prefills latest deadline first, then running requests with the
        most slack first (ties: latest arrival), urgent ones last."""
        victims = [(r, False) for r in sorted(snap.prefilling, key=edf_key, reverse=True)]
        order = sorted(range(len(snap.running)),
                       key=lambda i: (urgent_mask[i], -slacks[i], -snap.running[i].arrival_s, snap.running[i].rid))
        victims += [(snap.running[i], urgent_mask[i]) for i in order]
        out, free, _ = preempt_until(free, need, victims)
        return out, free
