"""`slai`: SLO-aware scheduling as in SLAI's public code (arXiv 2508.01002, `slai_scheduler.py`, a Sarathi fork).

Each running request has a last schedulable time
    LST = last_token_s + tpot_slo_s - offset * recent_iter_s,
offset = 5 iterations (10 when KV usage >= 96 %). Per iteration, under a token budget (512) and a cap on decodes (128):
1. critical decodes (now >= LST) in LST order;
2. partial prefills FCFS, each chunk = min(remaining, tokens left);
3. new prefills shortest prompt first, strict-SLO users first when `user_priority`; admission stops at the first
   request whose prompt does not fit in KV;
4. non-critical decodes in LST order fill what is left.
Decodes that do not make it are deferred (where the engine cannot defer, `Snapshot.deferral_allowed` false, a step
that decodes takes them all). Where the engine cannot mix (`Snapshot.mixing_allowed` false), a step
with critical decodes is decode-only and otherwise prefill-only when there is prefill work. When a decode needs KV
and none is free, unscheduled partial prefills are preempted latest first, and failing that the decode itself.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from heapq import heapify, heappop

from ..core.checks import check_int_at_least, check_non_negative, check_ratio
from ..core.kv import DEFAULT_OUTPUT_RESERVE_RATIO
from ..core.types import Plan, ReqView, Snapshot
from .common import (admission_tokens, make_plan,
                     outstanding_reserve_tokens, output_reserve_tokens)
from .registry import register_policy


@dataclass(frozen=True, slots=True)
class SlaiParams:
    token_budget: int = 512
    """Tokens per iteration, decodes included."""
    max_decodes: int = 128
    """At most this many decodes per iteration (SLAI's `limit_total_decodes`)."""
    offset_iters: float = 5.0
    """LST offset, in mean iterations, while KV usage is below `memory_limit_fraction`."""
    high_memory_offset_iters: float = 10.0
    """LST offset, in mean iterations, at or above `memory_limit_fraction` KV usage."""
    memory_limit_fraction: float = 0.96
    user_priority: bool = True
    """Strict-SLO (paying) users' prompts before relaxed users' prompts."""
    kv_reserve_output_ratio: float = DEFAULT_OUTPUT_RESERVE_RATIO
    """Fraction of admitted requests' outstanding max_new_tokens held back in KV before admitting another."""

    def __post_init__(self) -> None:
        check_int_at_least("token_budget", self.token_budget, 1)
        check_int_at_least("max_decodes", self.max_decodes, 1)
        for name in ("offset_iters", "high_memory_offset_iters"):
            check_non_negative(name, getattr(self, name))
        check_ratio("memory_limit_fraction", self.memory_limit_fraction)
        check_ratio("kv_reserve_output_ratio", self.kv_reserve_output_ratio)
        if not isinstance(self.user_priority, bool):
            raise ValueError(f"user_priority must be a bool, got {self.user_priority!r}")


def last_schedulable_s(req: ReqView, offset_s: float) -> float:
    """SLAI's LST. A running request without a token time yet counts as critical (-inf)."""
    if req.last_token_s is None:
        return -math.inf
    return req.last_token_s + req.tpot_slo_s - offset_s


@register_policy("slai")
class SlaiPolicy:
    name = "slai"

    def __init__(self, params: SlaiParams | None = None, **kw) -> None:
        self.params = params if params is not None else SlaiParams(**kw)

    def offset_s(self, snap: Snapshot) -> float:
        """offset x mean iteration time; 0 while the mean iteration time is unknown (recent_iter_s == 0)."""
        p = self.params
        cap = snap.kv_capacity_tokens
        high = cap > 0 and snap.kv_used_tokens / cap >= p.memory_limit_fraction
        return (p.high_memory_offset_iters if high else p.offset_iters) * max(0.0, snap.recent_iter_s)

    def plan(self, snap: Snapshot) -> Plan:
        p = self.params
        now = snap.now
        off = self.offset_s(snap)
        keyed = sorted((last_schedulable_s(r, off), r.arrival_s, r.rid, i) for i, r in enumerate(snap.running))
        queue = [snap.running[i] for *_, i in keyed]
        lsts = [k[0] for k in keyed]
        free = snap.kv_free_tokens
        used = 0  # tokens in the batch
        decodes: list[ReqView] = []
        prefill: list[tuple[ReqView, int]] = []
        preempt: list[str] = []
        paused = list(snap.prefilling)  # unscheduled partial prefills, oldest first (SLAI's paused_prefills)
        pos = 0

        def take_decodes(critical_only: bool, every: bool = False) -> None:
            nonlocal pos, free, used
            while pos < len(queue) and (every or (used < p.token_budget and len(decodes) < p.max_decodes)):
                if critical_only and now < lsts[pos]:
                    return
                r = queue[pos]
                pos += 1
                while free < 1 and paused:  # SLAI: preempt the latest paused prefill, then the decode itself
                    victim = paused.pop()
                    preempt.append(victim.rid)
                    free += victim.context_tokens
                if free < 1:
                    preempt.append(r.rid)
                    free += r.context_tokens
                    continue
                decodes.append(r)
                free -= 1
                used += 1

        take_decodes(critical_only=True)
        no_mix = not snap.mixing_allowed  # then critical decodes run alone, or prefill runs alone
        while paused and used < p.token_budget and free > 0 and not (no_mix and decodes):
            r = paused.pop(0)
            c = min(r.remaining_prompt_tokens, p.token_budget - used, free)
            if c > 0:
                prefill.append((r, c))
                used += c
                free -= c
        if used < p.token_budget and snap.waiting and not (no_mix and decodes):
            gone = frozenset(preempt)
            ratio = p.kv_reserve_output_ratio
            reserve = outstanding_reserve_tokens(snap, ratio, gone) - sum(c for _, c in prefill)
            # Only the first rejected request stops admission, so a heap (O(n) build, O(log n) per pop) replaces
            # SLAI's full sort; ties keep arrival order.
            prompts = [r.prompt_tokens for r in snap.waiting]
            if p.user_priority:
                big = max(prompts) + 1
                keys = [(0 if r.strict else big) + n for r, n in zip(snap.waiting, prompts)]
            else:
                keys = prompts
            heap = list(zip(keys, range(len(keys))))
            heapify(heap)
            while heap and used < p.token_budget:
                r = snap.waiting[heappop(heap)[1]]
                if r.remaining_prompt_tokens <= 0:
                    continue
                if free - reserve < admission_tokens(r, ratio):
                    break
                c = min(r.remaining_prompt_tokens, p.token_budget - used)
                prefill.append((r, c))
                used += c
                free -= c
                reserve += r.remaining_prompt_tokens - c + output_reserve_tokens(r, ratio)
        if not (no_mix and prefill):
            take_decodes(critical_only=False)
        if decodes and not snap.deferral_allowed:  # a step that decodes decodes every running row (SGLang with LoRA)
            take_decodes(critical_only=False, every=True)
        return make_plan(snap.cost, prefill, decodes, preempt, math.inf,
                         note=f"slai offset={off * 1e3:.1f}ms decodes={len(decodes)} tokens={used}")
