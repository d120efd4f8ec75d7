"""SLO-aware admission (beyond FairBatching; `fair`'s `admission="demote"`): which waiting requests can no longer
meet their TTFT SLO. Inspired by SLOs-Serve's soft admission control (arXiv 2504.08784): a request whose deadline is
already lost is demoted to best effort instead of delaying requests that can still be on time. Pure: a function of
the snapshot, so a request is re-judged every step (the simulator keeps the flag once set and counts the request as
an SLO miss). `arrival_verdict` judges one arriving request the same way, for `--fair-admission reject` (HTTP 429
at arrival, engine/reject.py).
"""

from __future__ import annotations

import dataclasses
import math
from bisect import bisect_left
from heapq import heappop, heappush, heappushpop
from itertools import chain, islice
from operator import attrgetter, eq, le
from typing import Iterator, Sequence

import numpy as np

from ..core.types import ReqView, Snapshot
from .common import decode_time_s, edf_key, edf_sorted, lazy_edf, merge_edf


def prefill_share(snap: Snapshot, decode_s: float | None = None) -> float:
    """Fraction of device time left to prefill by the running decodes: 1 - (one decode step of all of them) / (their
    smallest TPOT SLO), at least 0.05; 1 without running requests. `decode_s`: `decode_time_s` of all running
    requests, when the caller has it."""
    if not snap.running:
        return 1.0
    cost = snap.cost
    step = cost.base_s + (decode_time_s(cost, snap.running) if decode_s is None else decode_s)
    return max(0.05, 1.0 - step / min([r.tpot_slo_s for r in snap.running]))


def _edf_walk(prefilling, waiting) -> tuple[list[ReqView], list[bool] | None, list[float], bool]:
    """The queue in EDF order as `common.merge_edf(prefilling, waiting in EDF order)` walks it: (requests, whether each came
    from `waiting` (None: all did), TTFT deadlines, whether the walk may differ from `edf_key` order). `waiting`
    keeps its order when it is arrival-ordered with one TTFT SLO (equal arrivals then stay in list order, not by rid:
    the last flag), else it is sorted by `edf_key`; each partial prefill goes before the first waiting request whose
    `edf_key` is not smaller, found by bisection on the (non-decreasing) deadlines."""
    ttft0 = waiting[0].ttft_slo_s
    arrivals = [r.arrival_s for r in waiting]
    deadlines = None
    if all([r.ttft_slo_s == ttft0 for r in waiting]) and all(map(le, arrivals, islice(arrivals, 1, None))):
        list_ties = any(map(eq, arrivals, islice(arrivals, 1, None)))
    else:
        deadlines = [r.arrival_s + r.ttft_slo_s for r in waiting]
        order = sorted(range(len(waiting)), key=deadlines.__getitem__)
        deadlines = [deadlines[i] for i in order]
        if any(map(eq, deadlines, islice(deadlines, 1, None))):  # equal deadlines: the whole edf_key decides
            order = sorted(range(len(waiting)), key=lambda i: edf_key(waiting[i]))
            deadlines = None
        waiting = [waiting[i] for i in order]
        list_ties = False
    if deadlines is None:
        deadlines = [r.arrival_s + r.ttft_slo_s for r in waiting]
    if not prefilling:
        return waiting, None, deadlines, list_ties
    reqs: list[ReqView] = []
    from_queue: list[bool] = []
    limits: list[float] = []
    lo, n = 0, len(waiting)
    for p in sorted(prefilling, key=edf_key):
        key, deadline = edf_key(p), p.arrival_s + p.ttft_slo_s
        j = bisect_left(deadlines, deadline, lo)
        while j < n and deadlines[j] == deadline and not key <= edf_key(waiting[j]):
            j += 1
        reqs += waiting[lo:j]
        from_queue += [True] * (j - lo)
        limits += deadlines[lo:j]
        reqs.append(p)
        from_queue.append(False)
        limits.append(deadline)
        lo = j
    reqs += waiting[lo:]
    from_queue += [True] * (n - lo)
    limits += deadlines[lo:]
    return reqs, from_queue, limits, list_ties


def _prefill_seconds(cost, reqs) -> list[float]:
    """`prefill_s` of each request, computed in one numpy pass (the same formula, CostModel.fine_prefill_s, and the
    same float operations; below 128 requests in Python, where numpy's call overhead dominates)."""
    if len(reqs) < 128:  # fine_prefill_s inline: R (b + a (x + R / 2)), the same operations in the same order
        b, a = cost.per_prefill_token_s, cost.per_attn_token2_s
        return [rem * (b + a * (r.prefilled_tokens + 0.5 * rem)) if (rem := r.prompt_tokens - r.prefilled_tokens) > 0
                else 0.0 for r in reqs]
    prompt = np.fromiter([r.prompt_tokens for r in reqs], np.float64, len(reqs))
    prefix = np.fromiter([r.prefilled_tokens for r in reqs], np.float64, len(reqs))
    rem = prompt - prefix
    return np.where(rem > 0, cost.fine_prefill_s(rem, prefix), 0.0).tolist()


def prefill_s(cost, r: ReqView) -> float:
    """Seconds of the rest of r's prompt in infinitely fine chunks: R (b + a (x + R / 2)) after a prefix x."""
    rem = r.remaining_prompt_tokens
    return cost.fine_prefill_s(rem, r.prefilled_tokens) if rem > 0 else 0.0


def policy_arrival_verdict(params, snap: Snapshot, new: ReqView) -> tuple[bool, float]:
    """`arrival_verdict` judged as the policy with `params` (its `admission`, `demote_max_wait_ttft` and
    `aged_share`, when it has them) judges its queue."""
    mode = getattr(params, "admission", "off")
    return arrival_verdict(snap, new, demoting=mode != "off", longest=mode == "demote-longest",
                           aged_after_ttft=getattr(params, "demote_max_wait_ttft", math.inf),
                           aged_share=getattr(params, "aged_share", 1.0))


def arrival_verdict(snap: Snapshot, new: ReqView, *, demoting: bool = False, longest: bool = False,
                    aged_after_ttft: float = math.inf, aged_share: float = 1.0) -> tuple[bool, float]:
    """(would `new` miss its TTFT SLO, queued with the snapshot's work; seconds of prefill ahead of it at the share
    the decodes leave, a Retry-After hint), by `hopeless_split`'s optimistic estimate. Ahead of it: the partial
    prefills and the waiting requests before it in EDF order; with `demoting` (the policy serves hopeless requests
    after on-time work, `fair`'s admission="demote" or "demote-longest") only those `hopeless_split` keeps on time
    (`longest` and `aged_after_ttft` as there; every queued request judged; with `aged_share` < 1 as `admission_lanes`
    judges, the aged lane's prefill counted ahead)."""
    if demoting:
        queued = dataclasses.replace(snap, waiting=(*snap.waiting, new))
        if aged_share < 1.0 and aged_after_ttft < math.inf:
            on_time, unjudged, demoted, lane = admission_lanes(queued, longest, aged_after_ttft, 0, None, aged_share)
            on_time = [*on_time, *unjudged, *lane.waiting]
        else:
            on_time, demoted = hopeless_split(queued, longest=longest, aged_after_ttft=aged_after_ttft)
        late = any(r.rid == new.rid for r in demoted)
        ahead = (*snap.prefilling, *(r for r in on_time if r.rid != new.rid))
        return late, sum(prefill_s(snap.cost, r) for r in ahead) / prefill_share(snap)
    key = edf_key(new)
    ahead = (*snap.prefilling, *(r for r in snap.waiting if edf_key(r) <= key))
    wait = sum(prefill_s(snap.cost, r) for r in ahead) / prefill_share(snap)
    own = prefill_s(snap.cost, new) / prefill_share(snap)
    return snap.now + wait + own > new.arrival_s + new.ttft_slo_s, wait


def hopeless_split(snap: Snapshot, longest: bool = False, aged_after_ttft: float = math.inf,
                   window: int = 0) -> tuple[list[ReqView], list[ReqView]]:
    """(on-time, demoted) waiting requests, each in EDF order. Optimistic estimate of a waiting request's first token:
    now + (prefill seconds of the EDF queue ahead of it, demoted requests left out, plus its own) / share, where a
    remaining prompt R after prefix x costs R (b + a (x + R / 2)) (infinitely fine chunks, no per-iteration cost) and
    share = 1 - (one decode step of all running requests) / (their smallest TPOT SLO), at least 0.05 (1 without
    running requests). A request whose estimate passes arrival + TTFT SLO is demoted.

    `longest` (admission="demote-longest"): Moore-Hodgson's rule instead, which minimises the number of late jobs on
    one machine: when the request in hand would be late, the waiting request with the longest prefill among those
    kept so far (it included; of equally long ones the latest in EDF order) is demoted, so a burst loses its few
    longest prompts rather than whoever comes last, and equal prompts keep their order.
    Partial prefills are never demoted (they hold KV), and neither is a waiting request that has waited more than
    `aged_after_ttft` of its TTFT SLOs: it keeps its EDF place (its deadline is long past, so it goes first), which
    bounds how long demotion can postpone a request under sustained overload (math.inf: no bound).

    `window` > 0 bounds the work per step (the judgement is a Python walk, about a microsecond a request): the oldest
    requests whose TTFT deadline has passed (`waiting` is in arrival order, the Snapshot contract) are demoted unless
    aged, which is what the whole walk does with them (each is late whatever is ahead, and comes before every
    request whose deadline is still ahead); of the others only the oldest `window` are judged, and the rest,
    not judged this step, follow the on-time ones in arrival order (they are judged once they reach the window, as
    fair's prefill order is EDF only among its oldest few). With at most `window` waiting requests whose deadline is
    still ahead, the result is the whole walk's."""
    on_time, unjudged, demoted = admission_split(snap, longest, aged_after_ttft, window)
    return (on_time + list(unjudged) if unjudged else on_time), demoted


class AgedLane:
    """`fair`'s aged lane (`admission_lanes`): the aged partial prefills and the aged head of the waiting queue (its
    first requests, in arrival order), with `tail` (the demoted requests, in their order) after them. Iterating yields
    (request, is_waiting) in EDF order (`edf_key`), then the tail, lazily: the plan reads only the few it has time for,
    so a queue of 1000 aged requests is not sorted every step (`common.lazy_edf`). Iterable again (the plan's second
    pass)."""

    __slots__ = ("partials", "waiting", "tail")

    def __init__(self, partials: Sequence[ReqView] = (), waiting: Sequence[ReqView] = (),
                 tail: Sequence[ReqView] = ()) -> None:
        self.partials, self.waiting, self.tail = partials, waiting, tail

    def __len__(self) -> int:
        return len(self.partials) + len(self.waiting) + len(self.tail)

    def __iter__(self) -> Iterator[tuple[ReqView, bool]]:
        lane = merge_edf(self.partials, lazy_edf(self.waiting))
        return chain(lane, [(r, True) for r in self.tail]) if self.tail else lane

    def then(self, tail: Sequence[ReqView]) -> AgedLane:
        """The lane with `tail` (waiting requests, in their order) after it."""
        return AgedLane(self.partials, self.waiting, tail)

    def rids(self) -> tuple[str, ...]:
        """The lane's request ids (partial prefills, then waiting requests in arrival order; not the tail)."""
        return tuple(map(_RID, chain(self.partials, self.waiting)))


_RID = attrgetter("rid")
_ARRIVAL = attrgetter("arrival_s")
_TTFT = attrgetter("ttft_slo_s")


def aged_head(waiting: Sequence[ReqView], now: float, aged_after_ttft: float) -> int:
    """How many of the oldest waiting requests (`waiting` in arrival order) are aged: the longest prefix whose every
    request has waited more than `aged_after_ttft` of its TTFT SLO. Everything that arrived before
    now - aged_after_ttft x (the largest TTFT SLO) is aged whatever its SLO, found by bisection (1 us of margin for
    float rounding); the scan from there applies the exact test."""
    if not waiting or not now - waiting[0].arrival_s > aged_after_ttft * waiting[0].ttft_slo_s:
        return 0
    n = bisect_left(waiting, now - aged_after_ttft * max(map(_TTFT, waiting)) - 1e-6, key=_ARRIVAL)
    for r in islice(waiting, n, None):
        if not now - r.arrival_s > aged_after_ttft * r.ttft_slo_s:
            break
        n += 1
    return n


def aged_lane(snap: Snapshot, aged_after_ttft: float) -> AgedLane:
    """The aged requests as an `AgedLane` (empty when none): the partial prefills, and the head of the waiting
    queue (`aged_head`), that have waited more than `aged_after_ttft` of their TTFT SLOs."""
    now = snap.now
    partials = [r for r in snap.prefilling if now - r.arrival_s > aged_after_ttft * r.ttft_slo_s]
    return AgedLane(partials, snap.waiting[:aged_head(snap.waiting, now, aged_after_ttft)])


def admission_lanes(snap: Snapshot, longest: bool, aged_after_ttft: float, window: int, share: float | None,
                    aged_share: float) -> tuple[list[ReqView], Sequence[ReqView], list[ReqView], AgedLane]:
    """`admission_split` for `fair`'s `aged_share` < 1: the aged requests (the oldest waiting ones, while they have
    waited more than `aged_after_ttft` of their TTFT SLOs, and the partial prefills that have) leave the walk for a
    lane of their own, which the plan gives `aged_share` of each iteration's prefill time. The walk then judges the
    others knowing that: on-time work W (seconds of prefill) is done by min(W / (1 - aged_share), W + A), A the aged
    requests' prefill seconds (the on-time requests get 1 - aged_share of the time until the aged are done, all of it
    after). Returns (on time, not judged, demoted, as admission_split; the aged lane, an `AgedLane`: empty when no
    request is aged)."""
    lane = aged_lane(snap, aged_after_ttft)
    if not lane:
        return (*admission_split(snap, longest, math.inf, window, share), lane)
    partials, n = lane.partials, len(lane.waiting)
    if n == len(snap.waiting):  # every waiting request is aged: nothing left for the walk to judge
        return [], (), [], lane
    if share is None:
        share = prefill_share(snap)
    prefilling = snap.prefilling
    if partials:
        in_lane = frozenset([r.rid for r in partials])
        prefilling = tuple([r for r in prefilling if r.rid not in in_lane])
    rest = dataclasses.replace(snap, waiting=snap.waiting[n:], prefilling=prefilling)
    aged_s = sum(_prefill_seconds(snap.cost, [*partials, *lane.waiting]))
    return (*admission_split(rest, longest, math.inf, window, share, (aged_s, aged_share)), lane)


def admission_split(snap: Snapshot, longest: bool = False, aged_after_ttft: float = math.inf, window: int = 0,
                    share: float | None = None,
                    aged: tuple[float, float] = (0.0, 1.0)) -> tuple[list[ReqView], Sequence[ReqView], list[ReqView]]:
    """`hopeless_split` with the on-time part in two: (judged on time, in EDF order; not judged (beyond the window),
    in arrival order; demoted, in EDF order). `share`: `prefill_share(snap)`, when the caller has it. `aged`: (prefill
    seconds of an aged lane outside the walk, its share of the time), from `admission_lanes`."""
    waiting = snap.waiting
    if share is None:
        share = prefill_share(snap)
    if window <= 0 or len(waiting) <= window:
        on_time, demoted = _split(snap, share, waiting, longest, aged_after_ttft, aged)
        return on_time, (), demoted
    now = snap.now
    past: list[ReqView] = []  # deadline passed, not aged: late whatever is ahead, so demoted
    judged: list[ReqView] = []  # aged ones (they keep their EDF place), then the window: judged by the walk
    s = 0
    for r in waiting:  # the oldest, while their deadline has passed (arrival order: the rest is younger)
        if not r.arrival_s + r.ttft_slo_s < now:
            break
        (judged if now - r.arrival_s > aged_after_ttft * r.ttft_slo_s else past).append(r)
        s += 1
    judged += waiting[s:s + window]
    on_time, demoted = _split(snap, share, judged, longest, aged_after_ttft, aged)
    if past:  # in EDF order (arrival order when they share one TTFT SLO), then before the judged demoted ones
        if len({r.ttft_slo_s for r in past}) > 1:
            past = edf_sorted(past)
        demoted = past + demoted if not demoted or edf_key(past[-1]) <= edf_key(demoted[0]) else \
            edf_sorted(past + demoted)
    return on_time, waiting[s + window:], demoted


def _split(snap: Snapshot, share: float, waiting, longest: bool, aged_after_ttft: float,
           aged: tuple[float, float] = (0.0, 1.0)) -> tuple[list[ReqView], list[ReqView]]:
    """`hopeless_split` over the whole of `waiting` (every request judged) at prefill share `share` (`aged`: as in
    admission_split)."""
    if not waiting:
        return [], []
    now = snap.now
    reqs, from_queue, limits, list_ties = _edf_walk(snap.prefilling, waiting)
    # Per-request inputs in bulk (the loop below runs once per queued request every step, so it touches only floats)
    secs = _prefill_seconds(snap.cost, reqs)
    if from_queue is None:
        from_queue = [True] * len(reqs)
    # poppable: a waiting request not aged (partial prefills and aged requests are never demoted)
    poppable = from_queue if aged_after_ttft == math.inf else \
        [w and not now - r.arrival_s > aged_after_ttft * r.ttft_slo_s for r, w in zip(reqs, from_queue)]
    on_time: list[int] = []  # positions in `reqs` (EDF order)
    demoted: list[int] = []
    # (-prefill seconds, -index in on_time): the longest kept request on top, the latest of equally long ones
    kept: list[tuple[float, int]] = []
    ahead = 0.0
    aged_s, aged_share = aged
    slow = 1.0 / (1.0 - aged_share) if aged_s else 1.0
    for i, (t, limit, is_waiting, p) in enumerate(zip(secs, limits, from_queue, poppable)):
        w = ahead + t
        if aged_s:  # on-time work runs at 1 - aged_share of the time until the aged lane is done
            w = min(w * slow, w + aged_s)
        if not now + w / share > limit:  # on time
            ahead += t
            if p:
                heappush(kept, (-t, -len(on_time)))
            if is_waiting:
                on_time.append(i)
            continue
        if not longest:  # demote: the late request itself goes, unless it cannot
            if p:
                demoted.append(i)
                continue
            ahead += t
            if is_waiting:
                on_time.append(i)
            continue
        ahead += t  # demote-longest: the longest kept request goes (it may be this one)
        if p:
            neg_t, j = heappushpop(kept, (-t, -len(on_time)))
            on_time.append(i)
        else:
            if is_waiting:
                on_time.append(i)
            if not kept:  # a partial prefill or an aged request is late and nothing can make room
                continue
            neg_t, j = heappop(kept)
        ahead += neg_t
        demoted.append(on_time[-j])
        on_time[-j] = -1
    if longest and demoted:  # popped ones came out of order: EDF order again
        demoted.sort(key=(lambda i: edf_key(reqs[i])) if list_ties else None)
    return [reqs[i] for i in on_time if i >= 0], [reqs[i] for i in demoted]
