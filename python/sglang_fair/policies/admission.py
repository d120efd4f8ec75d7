"""SLO-aware admission (beyond FairBatching; `fair`'s `admission="demote"`): which waiting requests can no longer
meet their TTFT SLO. Inspired by SLOs-Serve's soft admission control (arXiv 2504.08784): a request whose deadline is
already lost is demoted to best effort instead of delaying requests that can still be on time. Pure: a function of
the snapshot, so a request is re-judged every step (the simulator keeps the flag once set and counts the request as
an SLO miss). Rejection with HTTP 429 is not implemented.
"""

from __future__ import annotations

from heapq import heappop, heappush

from ..core.types import ReqView, Snapshot
from .common import decode_time_s, edf_key, is_arrival_ordered, merge_edf


def hopeless_split(snap: Snapshot, longest: bool = False) -> tuple[list[ReqView], list[ReqView]]:
    """(on-time, demoted) waiting requests, each in EDF order. Optimistic estimate of a waiting request's first token:
    now + (prefill seconds of the EDF queue ahead of it, demoted requests left out, plus its own) / share, where a
    remaining prompt R after prefix x costs R (b + a (x + R / 2)) (infinitely fine chunks, no per-iteration cost) and
    share = 1 - (one decode step of all running requests) / (their smallest TPOT SLO), at least 0.05 (1 without
    running requests). A request whose estimate passes arrival + TTFT SLO is demoted.

    `longest` (admission="demote-longest"): Moore-Hodgson's rule instead, which minimises the number of late jobs on
    one machine: when the request in hand would be late, the waiting request with the longest prefill among those
    kept so far (it included) is demoted, so a burst loses its few longest prompts rather than whoever comes last.
    Partial prefills are never demoted (they hold KV)."""
    cost, now = snap.cost, snap.now
    b, a = cost.per_prefill_token_s, cost.per_attn_token2_s
    share = 1.0
    if snap.running:
        step = cost.base_s + decode_time_s(cost, snap.running)
        tpot = min([r.tpot_slo_s for r in snap.running])
        share = max(0.05, 1.0 - step / tpot)
    waiting = snap.waiting
    ttft0 = waiting[0].ttft_slo_s
    if not (all([r.ttft_slo_s == ttft0 for r in waiting]) and is_arrival_ordered(waiting)):
        waiting = sorted(waiting, key=edf_key)
    on_time: list[ReqView] = []
    demoted: list[ReqView] = []
    kept: list[tuple[float, int]] = []  # (-prefill seconds, index in on_time): the longest kept request on top
    ahead = 0.0
    for r, is_waiting in merge_edf(snap.prefilling, iter(waiting)):
        rem, x = r.remaining_prompt_tokens, r.prefilled_tokens
        t = rem * (b + a * (x + 0.5 * rem)) if rem > 0 else 0.0
        late = now + (ahead + t) / share > r.arrival_s + r.ttft_slo_s
        if is_waiting and late and not longest:
            demoted.append(r)
            continue
        ahead += t
        if is_waiting:
            heappush(kept, (-t, len(on_time)))
            on_time.append(r)
        if late and longest and kept:  # a partial prefill can be late too: drop the longest waiting one
            neg_t, i = heappop(kept)
            ahead += neg_t
            demoted.append(on_time[i])
            on_time[i] = None
    if longest and demoted:
        on_time = [r for r in on_time if r is not None]
        demoted.sort(key=edf_key)
    return on_time, demoted
