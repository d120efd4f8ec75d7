"""`fair`: FairBatching's deadline-aware, time-budgeted batch formation (arXiv 2510.14392, as far as the public
material pins it down; the choices it leaves open are in docs/design.md, "Policies").

Per iteration:
1. Budget. With running decodes: `max(min decode slack, min tpot_slo)`, at most the least time a decode has before
   its token gap passes `max_token_gap_tpot` x tpot_slo; without: `max_budget_ms` (no envelope to
   protect, and bigger chunks are cheaper per token).
   A decode behind its envelope (an iteration ran longer than planned) lowers it to what lands its last token on time
   (`recover_tpot`). Then clamped to [min_budget_ms, max_budget_ms], and never below the cost of the smallest step
   that makes progress.
2. Urgent decodes: slack < budget + min tpot_slo, or less than budget + its tpot_slo left before its token gap
   would pass `max_token_gap_tpot` x tpot_slo (those gap deadlines also cap the budget in step 1). They always run
   (preempting, when KV is short, partial prefills and then the running requests with the most slack). If they
   alone exceed the budget the plan is decode-only.
3. Prefills (partial and waiting) earliest TTFT deadline first while time and KV remain; the last chunk is sized with
   `CostModel.max_chunk` for the time left. A waiting request is admitted only if its whole prompt (plus its output
   reservation) fits; the first that does not fit stops admission, so a large prompt is never overtaken for ever.
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
has waited `demote_max_wait_ttft` TTFT SLOs is no longer demoted: it joins the aged lane, which gets `aged_share` (0.1)
of each iteration's prefill time ahead of on-time work.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from heapq import nsmallest
from itertools import chain

from ..core.checks import check_int_at_least, check_ratio
from ..core.kv import DEFAULT_OUTPUT_RESERVE_RATIO
from ..core.types import Plan, ReqView, Snapshot
from .admission import admission_lanes, admission_split, prefill_share
from .common import (admission_tokens, decode_time_s, edf_key, lazy_edf,
                     make_plan, merge_edf, outstanding_reserve_tokens, output_reserve_tokens, preempt_until)
from .registry import register_policy


@dataclass(frozen=True, slots=True)
class FairParams:
    min_budget_ms: float = 5.0
    """Floor of the per-iteration time budget, milliseconds."""
    max_budget_ms: float = 1000.0
    """Cap of the per-iteration time budget, milliseconds (bounds the iteration a far-ahead decode set allows)."""
    min_prefill_chunk_tokens: int = 16
    """A last prefill chunk smaller than this (and smaller than the remaining prompt) is not started; the head prefill
    of an otherwise empty engine always gets at least this many tokens (KV permitting)."""
    max_token_gap_tpot: float = 5.0
    """TBT guard on top of the envelope: no gap between two tokens of a decode longer than this many of its own
    tpot_slo (math.inf disables it). With `gap_caps_budget` the budget never runs past a decode's gap deadline
    (its last token + this x tpot_slo) and a decode is urgent one tpot_slo before it; without, a decode is urgent
    only when this iteration alone would pass it."""
    gap_caps_budget: bool = True
    """Make `max_token_gap_tpot` a bound: the gap deadlines cap the budget as the envelope does. False: the guard
    as before the thirteenth session, which let a gap reach the bound plus one whole budget (simulated: 600 ms gaps
    at a 100 ms TPOT SLO for most Azure conv requests; docs/results.md, "Token gaps")."""
    kv_reserve_output_ratio: float = DEFAULT_OUTPUT_RESERVE_RATIO
    """Fraction of admitted requests' outstanding max_new_tokens held back in KV before admitting another."""
    decode_anchor: str = "first_token"
    """Decode deadlines: "first_token" = first_token_s + j * tpot_slo (keeps the TPOT metric, which is measured from
    the first token; falls back to "arrival" for a request whose first token time is unknown) or "arrival" =
    arrival + ttft_slo + j * tpot_slo (the FairBatching envelope, which lets TTFT slack delay decodes)."""
    catchup_tokens: int = 0
    """With the first-token anchor: a decode may fall behind its per-token deadline by what its next
    `catchup_tokens` tokens (at most those it still has to produce) can win back at the current decode step time,
    `min(k, remaining - 1) * max(0, tpot_slo - step)`, since TPOT is an average over the output (0: per-token deadlines,
    as the paper). The `max_token_gap_tpot` guard still bounds every gap."""
    prefill_window_reqs: int = 256
    """Waiting requests are taken EDF among the oldest few, then FCFS. The window is 1 + (prompt tokens that can
    still fit this iteration) // min_prefill_chunk_tokens, capped by this (0: no cap). Bounds the planning cost of a
    long queue; see docs/design.md."""
    full_kv_progress: bool = False
    """With no free KV and no urgent decode, treat the least-slack decode as urgent, so it preempts now (most slack
    first) instead of the engine idling until a decode turns urgent. Off by default (plans change only when KV is full).
    """
    recover_tpot: bool = True
    """A decode behind its envelope (slack < its tpot_slo, after an iteration ran longer than planned) caps the
    budget at the iteration length that still lands its last token on time if every iteration until then is that
    long: `tpot + (slack - tpot) / tokens left` (tokens left from max_new_tokens). TPOT is measured from the first
    to the last token, so a row late by d wins d back over its remaining tokens instead of staying late by d. A row
    that cannot make it even at the progress floor does not shrink the budget. Plans change only while some decode
    is behind; with an exact cost model none ever is (docs/results.md: it raised the noisy A100's Azure code cells and
    left every other simulated cell unchanged; False: the budget stays at least one TPOT, as before)."""
    admission: str = "demote-longest"
    """SLO-aware admission: "off" (every request is served EDF), "demote" (a waiting request whose TTFT can no
    longer be met is served after the on-time ones and reported in `Plan.demoted`) or "demote-longest" (the default:
    when one would be late, the longest kept prompt is demoted instead: Moore-Hodgson, fewest late requests; it
    raised simulated capacity in every cell measured, docs/results.md). See policies/admission.py. Refusing at
    arrival (HTTP 429) is the server's `--fair-admission reject`."""
    demote_max_wait_ttft: float = 5.0
    """With admission on: a waiting request that has waited more than this many of its TTFT SLOs is no longer
    demoted; it is served in EDF order (first, its deadline being long past). Bounds how long demotion postpones a
    request under sustained overload, where a demoted request otherwise waits for the overload to end (math.inf: no
    bound; docs/results.md)."""
    aged_share: float = 0.1
    """With admission on and a finite `demote_max_wait_ttft`: the share of each iteration's prefill time that the
    aged requests (waited more than `demote_max_wait_ttft` TTFT SLOs, partial prefills among them) get, oldest first,
    while on-time prefill waits; the on-time requests keep the rest, and any time they leave goes to the aged and then
    to the demoted. So an aged request makes progress every iteration (at least this share of the prefill time when
    it heads the aged) without making on-time requests late; the admission walk judges on-time work knowing it.
    1: aged requests go first with the whole iteration, EDF (their deadline is long past; the default before the
    seventeenth session, which under sustained overload made on-time requests late in turn); 0: they wait behind
    every on-time request, as with no ageing bound. 0.1 raised simulated 90%-attainment capacity in all 24 cells
    measured and changed no tail capacity (docs/results.md, "Aged requests in a lane of their own")."""
    tpot_margin: float = 0.02
    """Fraction of each request's TPOT SLO the envelope holds back: decode deadlines (and the budget, urgency,
    recovery and gap guard built on them) use tpot_slo x (1 - tpot_margin). The envelope spends a decode's slack
    to the last millisecond, so where the planner's model is not exact an iteration that runs a little long puts
    a short output's TPOT just over the SLO with no token left to win it back (simulated on the emulated device's
    model: Azure code's misses were 6-13-token outputs at 100.2-100.9 ms; docs/results.md)."""
    admission_window_reqs: int = 64
    """With admission on: how many waiting requests whose TTFT deadline is still ahead are judged each step, the
    oldest (0: all). Requests past their deadline are always judged (demoted unless aged); the others beyond the
    window follow the judged on-time ones unjudged until they reach it. Bounds the planning cost of a long queue
    (the judgement is a Python walk, about a microsecond a request); see policies/admission.py."""

    def __post_init__(self) -> None:
        for name in ("min_budget_ms", "max_budget_ms"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not (0 < v < math.inf):
                raise ValueError(f"{name} must be a finite number > 0, got {v!r}")
        if self.max_budget_ms < self.min_budget_ms:
            raise ValueError(f"max_budget_ms ({self.max_budget_ms}) must be >= min_budget_ms ({self.min_budget_ms})")
        check_int_at_least("min_prefill_chunk_tokens", self.min_prefill_chunk_tokens, 1)
        g = self.max_token_gap_tpot
        if isinstance(g, bool) or not isinstance(g, (int, float)) or not g >= 1.0:
            raise ValueError(f"max_token_gap_tpot must be >= 1 (math.inf disables it), got {g!r}")
        check_ratio("kv_reserve_output_ratio", self.kv_reserve_output_ratio)
        check_int_at_least("prefill_window_reqs", self.prefill_window_reqs, 0)
        check_int_at_least("catchup_tokens", self.catchup_tokens, 0)
        check_int_at_least("admission_window_reqs", self.admission_window_reqs, 0)
        if self.decode_anchor not in ("first_token", "arrival"):
            raise ValueError(f"decode_anchor must be 'first_token' or 'arrival', got {self.decode_anchor!r}")
        for name in ("full_kv_progress", "recover_tpot", "gap_caps_budget"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name} must be a bool, got {getattr(self, name)!r}")
        m = self.tpot_margin
        if isinstance(m, bool) or not isinstance(m, (int, float)) or not 0.0 <= m < 0.5:
            raise ValueError(f"tpot_margin must be in [0, 0.5), got {m!r}")
        w = self.demote_max_wait_ttft
        if isinstance(w, bool) or not isinstance(w, (int, float)) or not w > 0:
            raise ValueError(f"demote_max_wait_ttft must be > 0 (math.inf: no bound), got {w!r}")
        s = self.aged_share
        if isinstance(s, bool) or not isinstance(s, (int, float)) or not 0.0 <= s <= 1.0:
            raise ValueError(f"aged_share must be in [0, 1], got {s!r}")
        if self.admission not in ("off", "demote", "demote-longest"):
            raise ValueError(f"admission must be 'off', 'demote' or 'demote-longest', got {self.admission!r}")


@register_policy("fair")
class FairPolicy:
    name = "fair"

    def __init__(self, params: FairParams | None = None, **kw) -> None:
        self.params = params if params is not None else FairParams(**kw)

    def plan(self, snap: Snapshot) -> Plan:
        if self.params.admission != "off" and snap.waiting:
            p = self.params
            dec_s = decode_time_s(snap.cost, snap.running)  # one decode step of every running request, shared
            share, longest = prefill_share(snap, dec_s), p.admission == "demote-longest"
            aged = None
            if p.aged_share < 1.0 and p.demote_max_wait_ttft < math.inf:  # the aged get a lane of their own
                on_time, unjudged, demoted, aged = admission_lanes(snap, longest, p.demote_max_wait_ttft,
                                                                   p.admission_window_reqs, share, p.aged_share)
                aged = aged or None
            else:
                on_time, unjudged, demoted = admission_split(snap, longest, p.demote_max_wait_ttft,
                                                             p.admission_window_reqs, share)
            if demoted or aged:  # the judged on-time requests (EDF), then those beyond the judging window, then the demoted
                plan = self._plan(snap, unjudged, demoted, on_time, dec_s, aged) if unjudged else \
                    self._plan(snap, on_time, demoted, (), dec_s, aged)
                return replace(plan, demoted=tuple([r.rid for r in demoted]))
        return self._plan(snap, snap.waiting, ())

    def _plan(self, snap: Snapshot, waiting, demoted, edf_head=(), decode_all_s: float | None = None,
              aged: list | None = None) -> Plan:
        """The FairBatching plan with `edf_head` served first (in its order, already EDF), then `waiting` EDF and then
        `demoted` (in its order). `decode_all_s`: `decode_time_s` of every running request, when known. `aged`: the
        aged lane (admission.admission_lanes), which then gets `aged_share` of the prefill time ahead of on-time work, the demoted
        after it."""
        p = self.params
        now, cost, running = snap.now, snap.cost, snap.running
        if not running and not snap.prefilling and not snap.waiting:
            return Plan(budget_s=p.min_budget_ms / 1000.0, note="fair idle")
        lo, hi = p.min_budget_ms / 1000.0, p.max_budget_ms / 1000.0
        head = prefills = None
        lane, prefilling = None, snap.prefilling
        if aged:  # the aged lane, then the demoted, share the time on-time prefill leaves them
            lane = aged + [(r, True) for r in demoted] if demoted else aged
            demoted = ()
            in_lane = frozenset([r.rid for r, w in aged if not w])
            if in_lane:
                prefilling = tuple([r for r in prefilling if r.rid not in in_lane])

        # ---- 1. budget and urgency ----------------------------------------------------------------------------------
        if running:
            keep = 1.0 - p.tpot_margin
            slacks = self._decode_slacks(running, now, keep)
            if p.catchup_tokens and p.decode_anchor == "first_token":
                step = cost.base_s + (decode_time_s(cost, running) if decode_all_s is None else decode_all_s)
                k = p.catchup_tokens
                slacks = [s + min(k, max(0, r.max_new_tokens - r.output_tokens - 1))
                          * max(0.0, r.tpot_slo_s * keep - step) for s, r in zip(slacks, running)]
            min_slack = min(slacks)
            tpots = [r.tpot_slo_s * keep for r in running]
            tpot_min = min(tpots)
            # progress floor: one decode of the most urgent request always fits
            floor_s = cost.base_s + cost.decode_s(running[slacks.index(min_slack)].context_tokens)
            budget = max(min_slack, tpot_min)
            if p.recover_tpot and min_slack < tpot_min:
                budget = self._recovery_budget(running, tpots, slacks, floor_s, budget)
            gap_slacks = self._gap_slacks(running, tpots, tpot_min, now)
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
                if max(tpots) == tpot_min:
                    urgent_mask = [s < thr or gs < thr for s, gs in zip(slacks, gap_slacks)]
                else:
                    urgent_mask = [s < thr or gs < budget + tp for s, gs, tp in zip(slacks, gap_slacks, tpots)]
            else:  # the old guard: urgent only when this iteration alone would pass the gap deadline
                urgent_mask = [s < thr or gs < budget for s, gs in zip(slacks, gap_slacks)]
            urgent = [r for r, u in zip(running, urgent_mask) if u]
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
            h = (head if head is not None else lane[0])[0]
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
        t = cost.base_s + decode_time_s(cost, urgent)
        if urgent and t > budget:
            return make_plan(cost, [], urgent, preempt, budget, predicted=t,
                             note="fair decode-only: urgent decodes exceed budget")
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
                                         strict=bool(urgent), mix_s=mix_urgent, lane=lane)

        # ---- 3b. where mixing is slow: prefill alone while every decode sits the step out, or decodes alone ----------
        if (running and not preempt and (cost.per_mixed_decode_req_s > 0 or no_mix)
                and (snap.prefilling or snap.waiting)):
            t_dec = cost.base_s + (decode_time_s(cost, running) if decode_all_s is None else decode_all_s)  # next step
            b_budget = min_slack_3b - t_dec
            alt_kv = free - len(running)
            if b_budget > 2.0 * cost.base_s and alt_kv > 0:
                order = self._prefill_order(snap, cost.max_chunk(b_budget - cost.base_s), alt_kv, waiting, demoted,
                                           edf_head, prefilling)
                alt, t_alt, _ = self._fill(snap, next(order, None), order, b_budget, cost.base_s, alt_kv, gone,
                                           floor=False, strict=True, mix_s=0.0, lane=lane)
                # a step of its own must carry at least its fixed cost in prefill work (live: 19-token steps at
                # ~45 ms base each halved prefill throughput); otherwise decode now and prefill with the slack won,
                # unless its head has been held for a TPOT already (nothing more came to share the step)
                if sum(c for _, c in alt) > sum(c for _, c in prefill) and (
                        t_alt >= 2.0 * cost.base_s or now - alt[0][0].arrival_s >= tpot_min):
                    return make_plan(cost, alt, [], preempt, b_budget, predicted=t_alt,
                                     note=f"fair prefill-only budget={b_budget * 1e3:.1f}ms: decodes sit out")
            if (prefill and urgent and now - prefill[0][0].arrival_s < tpot_min
                    and t - cost.base_s - decode_time_s(cost, urgent) - mix_urgent < mix_urgent):
                # the mixed penalty would cost more than the prefill it carries: decode now, prefill alone later,
                # for at most a TPOT (`tpot_min`) after the head's arrival: a prompt alone behind long decodes
                # would otherwise wait for them to finish (no later prompt comes to make a prefill step worth it)
                prefill, t, kv_left = [], cost.base_s + decode_time_s(cost, urgent), free - len(urgent) - n_lazy

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
              floor: bool, strict: bool, mix_s: float, lane: list | None = None) -> tuple[list, float, int]:
        """Prefill chunks EDF while time and KV remain (step 3). `floor`: the first chunk gets at least
        min_prefill_chunk_tokens (an otherwise idle engine); `strict`: not even the first chunk may be shorter than
        that (unless it finishes the prompt); `mix_s`: extra time charged when the first prefill joins decodes.
        `lane` (the aged lane, `aged_share`): `prefills` may use only 1 - aged_share of the prefill time; when its
        time is spent, or it has nothing left, the lane's requests fill the rest of the budget in order."""
        p, cost = self.params, snap.cost
        prefill: list[tuple[ReqView, int]] = []
        ratio = p.kv_reserve_output_ratio
        reserve = None
        limit = budget if lane is None else t + (1.0 - p.aged_share) * (budget - t)
        while True:
            if item is None:  # this order is done (or out of its time): the lane, if any, goes on to the budget
                if lane is None:
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
            if r.rid in gone:
                item = next(prefills, None)
                continue
            remaining = r.remaining_prompt_tokens
            if is_new:
                if reserve is None:  # partial chunks planned so far are already inside the reserve
                    reserve = outstanding_reserve_tokens(snap, ratio, gone) - sum([c for _, c in prefill])
                if kv_left - reserve < admission_tokens(r, ratio):
                    break  # head-of-line: a request that does not fit blocks later ones
            c = min(remaining, kv_left, cost.max_chunk(rem_t, r.prefilled_tokens))
            if floor and not prefill:  # the floor put in the budget for this chunk; absorbs float rounding
                c = max(c, min(remaining, kv_left, p.min_prefill_chunk_tokens))
            if c <= 0 or (c < remaining and c < p.min_prefill_chunk_tokens and (prefill or strict)):
                item = None  # out of time (kv_left > 0 here unless c is 0 for want of KV: the next pass stops)
                continue
            if not prefill:
                t += mix_s
            prefill.append((r, c))
            t += cost.prefill_s(c, r.prefilled_tokens)
            kv_left -= c
            if is_new:
                reserve += remaining - c + output_reserve_tokens(r, ratio)
            elif reserve is not None:
                reserve -= c
            item = None if c < remaining else next(prefills, None)
        return prefill, t, kv_left

    @staticmethod
    def _recovery_budget(running, tpots: list[float], slacks: list[float], floor_s: float, budget_s: float) -> float:
        """`recover_tpot`: the budget capped, for each decode behind its envelope, at `tpot + (slack - tpot) / m`
        (m: tokens it has left; tpot: the envelope's, `tpots`), the uniform iteration length that lands its last
        token by first_token + (outputs - 1) x tpot; rows for which that is below the progress floor `floor_s` are
        past saving and ignored."""
        for r, tp, s in zip(running, tpots, slacks):
            if s < tp and (m := r.max_new_tokens - r.output_tokens) >= 1:
                length = tp + (s - tp) / m
                if floor_s <= length < budget_s:
                    budget_s = length
        return budget_s

    def _gap_slacks(self, running, tpots: list[float], tpot_min: float, now: float) -> list[float] | None:
        """Time each running decode has left before its gap since its last token passes `max_token_gap_tpot` x its
        tpot_slo (inf without a last token time); None when the guard is off."""
        g = self.params.max_token_gap_tpot
        if g == math.inf:
            return None
        inf = math.inf
        if max(tpots) == tpot_min:  # one TPOT class (the common case, and cheaper)
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
