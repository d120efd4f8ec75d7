"""Helpers shared by the built-in policies: KV accounting, preemption, the lazy EDF order, plan assembly.

Everything here is pure and cheap: policies run once per engine iteration. Per-request loops are list
comprehensions with plain attribute access (on CPython 3.11 they beat `map(attrgetter(...))` by about 2x).
"""

from __future__ import annotations

from heapq import heappop, heappush
from itertools import islice
from operator import eq, le
from typing import Iterable, Iterator, Sequence

from ..core.cost_model import CostModel
from ..core.kv import output_reserve_tokens as reserve_for
from ..core.types import Plan, ReqView, Snapshot



# ---- KV accounting ----------------------------------------------------------------------------------------------
def output_reserve_tokens(req: ReqView, ratio: float) -> int:
    """KV tokens held back for a request's future outputs: ceil(ratio * outputs still to come)."""
    return reserve_for(req.max_new_tokens - req.output_tokens, ratio)


def outstanding_reserve_tokens(snap: Snapshot, ratio: float, exclude: frozenset[str] = frozenset()) -> int:
    """KV the requests already admitted will still need: partial prefills' remaining prompts plus
    ratio * outstanding outputs of running and prefilling requests (SGLang's `new_token_ratio` reservation).
    Requests in `exclude` (preempted this step) are left out."""
    running, prefilling = snap.running, snap.prefilling
    if exclude:
        running = [r for r in running if r.rid not in exclude]
        prefilling = [r for r in prefilling if r.rid not in exclude]
    tokens = sum([r.prompt_tokens - r.prefilled_tokens for r in prefilling])
    if ratio > 0.0:
        outputs = (sum([r.max_new_tokens - r.output_tokens for r in running])
                   + sum([r.max_new_tokens - r.output_tokens for r in prefilling]))
        tokens += reserve_for(outputs, ratio)
    return max(0, tokens)


def admission_tokens(req: ReqView, ratio: float) -> int:
    """KV a waiting request must find free (beyond the reserve) to be admitted: its whole remaining prompt plus
    its output reservation, so an admitted prompt can always be completed."""
    return req.remaining_prompt_tokens + output_reserve_tokens(req, ratio)


def keep_every_decode(snap: Snapshot) -> tuple[list[str], list[ReqView], int]:
    """(preempted rids, running requests that decode, free KV after preemption) for a policy that decodes every
    running request: when KV cannot hold one token per decode, requests are preempted latest arrival first (vLLM's
    choice), partial prefills before decodes because they hold the least finished work."""
    running = snap.running
    free = snap.kv_free_tokens
    preempt: list[str] = []
    if free < len(running):
        latest_first = lambda reqs: sorted(reqs, key=lambda r: (r.arrival_s, r.rid), reverse=True)  # noqa: E731
        victims = [(r, False) for r in latest_first(snap.prefilling)] + [(r, True) for r in latest_first(running)]
        preempt, free, _ = preempt_until(free, len(running), victims)
    gone = frozenset(preempt)
    return preempt, ([r for r in running if r.rid not in gone] if gone else list(running)), free


def admit_fcfs(snap: Snapshot, prefill: list, gone: frozenset[str], ratio: float, tokens_left: int,
               kv_left: int) -> None:
    """Append waiting requests to `prefill` FCFS, each chunk min(remaining, tokens left), while the token budget
    lasts and each request's whole prompt plus output reservation fits beside what admitted requests (and the
    partial prefills already in `prefill`) still need; the first that does not fit blocks the rest, as in SGLang."""
    reserve = outstanding_reserve_tokens(snap, ratio, gone) - sum(c for _, c in prefill)
    for r in snap.waiting:
        if tokens_left <= 0 or r.remaining_prompt_tokens <= 0:
            break
        if kv_left - reserve < admission_tokens(r, ratio):
            break
        c = min(r.remaining_prompt_tokens, tokens_left)
        prefill.append((r, c))
        tokens_left -= c
        kv_left -= c
        reserve += r.remaining_prompt_tokens - c + output_reserve_tokens(r, ratio)


def preempt_until(free: int, need: int, victims: Iterable[tuple[ReqView, bool]]) -> tuple[list[str], int, int]:
    """Release victims, in the given order, until `free >= need`.

    Each victim is (request, counts_in_need): preempting a request frees its `context_tokens`; when the victim was one
    of the decodes that `need` counted, `need` also drops by one. Returns (preempted rids, free, need).
    """
    out: list[str] = []
    if free >= need:
        return out, free, need
    for req, counted in victims:
        out.append(req.rid)
        free += req.context_tokens
        if counted:
            need -= 1
        if free >= need:
            break
    return out, free, need


# ---- ordering ---------------------------------------------------------------------------------------------------
def edf_key(req: ReqView) -> tuple[float, float, str]:
    """Earliest-deadline-first key of a prefill (its first token's deadline), ties by arrival then rid."""
    return (req.arrival_s + req.ttft_slo_s, req.arrival_s, req.rid)


def edf_sorted(reqs: Sequence[ReqView]) -> list[ReqView]:
    """`sorted(reqs, key=edf_key)`, sorting on float deadlines (a tuple key per request costs about 3x as much on a
    long queue); where two deadlines are equal the whole key decides, as there."""
    deadlines = [r.arrival_s + r.ttft_slo_s for r in reqs]
    order = sorted(range(len(deadlines)), key=deadlines.__getitem__)
    if any(map(eq, (ds := [deadlines[i] for i in order]), islice(ds, 1, None))):
        return sorted(reqs, key=edf_key)
    return [reqs[i] for i in order]


def is_arrival_ordered(reqs: Sequence[ReqView]) -> bool:
    arr = [r.arrival_s for r in reqs]
    return all(map(le, arr, islice(arr, 1, None)))


def lazy_edf(reqs: Sequence[ReqView], window: int = 0) -> Iterator[ReqView]:
    """Yield the first `window` of `reqs` (all if window <= 0) in EDF order (`edf_key`), then the rest in list order.

    `reqs` is expected in arrival order (the Snapshot contract for `waiting`); then request j's deadline is at least
    arrival_j + (min TTFT in the window), so the heap top is released as soon as it beats that bound for the next
    unscanned request: a consumer that stops after k requests touches only k requests plus those that arrived within
    one TTFT spread of them (k when all share one TTFT). A window out of arrival order is fully sorted instead.
    Cost is O(k log k), never more than O(window log window); the list beyond the window is not looked at unless
    the consumer gets that far.
    """
    n = len(reqs)
    w = n if window <= 0 else min(n, window)
    if w <= 1:
        yield from reqs
        return
    head = reqs[:w] if w < n else reqs
    if not is_arrival_ordered(head):
        yield from sorted(head, key=edf_key)
    else:
        ttft_min = min([r.ttft_slo_s for r in head])
        heap: list[tuple[float, float, str, int]] = []
        i = 0
        while True:
            while i < w and (not heap or heap[0][0] >= head[i].arrival_s + ttft_min):
                r = head[i]
                heappush(heap, (r.arrival_s + r.ttft_slo_s, r.arrival_s, r.rid, i))
                i += 1
            if not heap:
                break
            yield head[heappop(heap)[3]]
    for i in range(w, n):
        yield reqs[i]


def merge_edf(first: Sequence[ReqView], rest: Iterator[ReqView]) -> Iterator[tuple[ReqView, bool]]:
    """Merge the (small) `first` list, sorted here, with the EDF stream `rest`; yields (request, came_from_rest)."""
    if not first:
        for r in rest:
            yield r, True
        return
    a = sorted(first, key=edf_key)
    ia = 0
    nxt = next(rest, None)
    while ia < len(a) or nxt is not None:
        if nxt is None or (ia < len(a) and edf_key(a[ia]) <= edf_key(nxt)):
            yield a[ia], False
            ia += 1
        else:
            yield nxt, True
            nxt = next(rest, None)


# ---- plan assembly ----------------------------------------------------------------------------------------------
def decode_time_s(cost: CostModel, reqs: Sequence[ReqView]) -> float:
    """Marginal time of decoding all of `reqs` (no base cost)."""
    if not reqs:
        return 0.0
    return decode_rows_s(cost, len(reqs), sum([r.prefilled_tokens + r.output_tokens for r in reqs]))


def decode_rows_s(cost: CostModel, rows: int, context_tokens: int) -> float:
    """`decode_time_s` of `rows` decode rows reading `context_tokens` in all (the same float operations)."""
    return cost.per_decode_req_s * rows + cost.per_context_token_s * context_tokens


def predicted_s(cost: CostModel, prefill: Sequence[tuple[int, int]], decodes: Sequence[ReqView]) -> float:
    """Predicted iteration time of prefill chunks [(chunk, prefix)] plus decode rows; 0 for an empty batch."""
    if not prefill and not decodes:
        return 0.0
    t = cost.base_s + sum(cost.prefill_s(c, p) for c, p in prefill) + decode_time_s(cost, decodes)
    if prefill and decodes:
        t += cost.mixed_s(len(decodes))
    return t


def make_plan(cost: CostModel, prefill: list[tuple[ReqView, int]], decodes: Sequence[ReqView],
              preempt: Sequence[str], budget_s: float, note: str = "", predicted: float | None = None) -> Plan:
    """Assemble a Plan; `predicted` (the policy's own running total) saves recomputing the batch cost."""
    if predicted is None:
        predicted = predicted_s(cost, [(c, r.prefilled_tokens) for r, c in prefill], decodes)
    return Plan(
        prefill=tuple([(r.rid, c) for r, c in prefill]),
        decode=tuple([r.rid for r in decodes]),
        preempt=tuple(preempt),
        budget_s=budget_s,
        predicted_s=predicted if (prefill or decodes) else 0.0,
        note=note,
    )
