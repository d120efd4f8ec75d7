"""Helpers shared by the built-in policies: KV accounting, preemption, the lazy EDF order, plan assembly.

Everything here is pure and cheap: policies run once per engine iteration, so per-request work is kept to C-level
`map`/`sum` over the snapshot's tuples where possible.
"""

from __future__ import annotations

import math
from heapq import heappop, heappush
from itertools import islice
from operator import attrgetter, le
from typing import Iterable, Iterator, Sequence

from ..core.cost_model import CostModel
from ..core.types import Plan, ReqView, Snapshot

get_rid = attrgetter("rid")
get_arrival = attrgetter("arrival_s")
get_ttft = attrgetter("ttft_slo_s")
get_tpot = attrgetter("tpot_slo_s")
get_prompt = attrgetter("prompt_tokens")
get_prefilled = attrgetter("prefilled_tokens")
get_output = attrgetter("output_tokens")
get_max_new = attrgetter("max_new_tokens")


def check_ratio(name: str, value: float) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value <= 1.0:
        raise ValueError(f"{name} must be a number in [0, 1], got {value!r}")


def check_int_at_least(name: str, value: int, low: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ValueError(f"{name} must be an int >= {low}, got {value!r}")


# ---- KV accounting ----------------------------------------------------------------------------------------------
def output_reserve_tokens(req: ReqView, ratio: float) -> int:
    """KV tokens held back for a request's future outputs: ceil(ratio * outputs still to come)."""
    if ratio <= 0.0:
        return 0
    return math.ceil(ratio * max(0, req.max_new_tokens - req.output_tokens))


def outstanding_reserve_tokens(snap: Snapshot, ratio: float, exclude: frozenset[str] = frozenset()) -> int:
    """KV the requests already admitted will still need: partial prefills' remaining prompts plus
    ratio * outstanding outputs of running and prefilling requests (SGLang's `new_token_ratio` reservation).
    Requests in `exclude` (preempted this step) are left out."""
    running = [r for r in snap.running if r.rid not in exclude] if exclude else snap.running
    prefilling = [r for r in snap.prefilling if r.rid not in exclude] if exclude else snap.prefilling
    tokens = sum(map(get_prompt, prefilling)) - sum(map(get_prefilled, prefilling))
    if ratio > 0.0:
        outputs = (sum(map(get_max_new, running)) - sum(map(get_output, running))
                   + sum(map(get_max_new, prefilling)) - sum(map(get_output, prefilling)))
        tokens += math.ceil(ratio * max(0, outputs))
    return max(0, tokens)


def admission_tokens(req: ReqView, ratio: float) -> int:
    """KV a waiting request must find free (beyond the reserve) to be admitted: its whole remaining prompt plus
    its output reservation, so an admitted prompt can always be completed."""
    return req.remaining_prompt_tokens + output_reserve_tokens(req, ratio)


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
def ttft_deadline(req: ReqView) -> float:
    return req.arrival_s + req.ttft_slo_s


def edf_key(req: ReqView) -> tuple[float, float, str]:
    """Earliest-deadline-first key of a prefill (its first token's deadline), ties by arrival then rid."""
    return (req.arrival_s + req.ttft_slo_s, req.arrival_s, req.rid)


def is_arrival_ordered(reqs: Sequence[ReqView]) -> bool:
    arr = list(map(get_arrival, reqs))
    return all(map(le, arr, islice(arr, 1, None)))


def lazy_edf(reqs: Sequence[ReqView]) -> Iterator[ReqView]:
    """Yield `reqs` in EDF order (`edf_key`), looking only as far into the list as the consumer pulls.

    If `reqs` is in arrival order (the Snapshot contract for `waiting`), request j's deadline is at least
    arrival_j + min TTFT, so the heap top can be released as soon as it beats that bound for the next unscanned request:
    a consumer that stops after k requests touches O(k + the requests that arrived within one TTFT spread). Otherwise
    it falls back to a full sort.
    """
    n = len(reqs)
    if n == 0:
        return
    if n == 1:
        yield reqs[0]
        return
    if not is_arrival_ordered(reqs):
        yield from sorted(reqs, key=edf_key)
        return
    ttft_min = min(map(get_ttft, reqs))
    heap: list[tuple[float, float, str, int]] = []
    i = 0
    while True:
        while i < n and (not heap or heap[0][0] >= reqs[i].arrival_s + ttft_min):
            r = reqs[i]
            heappush(heap, (r.arrival_s + r.ttft_slo_s, r.arrival_s, r.rid, i))
            i += 1
        if not heap:
            return
        yield reqs[heappop(heap)[3]]


def merge_edf(first: Sequence[ReqView], rest: Iterator[ReqView]) -> Iterator[tuple[ReqView, bool]]:
    """Merge the (small) `first` list, sorted here, with the EDF stream `rest`; yields (request, came_from_rest)."""
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
    """Marginal time of decoding all of `reqs` (no base cost), summed with C-level maps."""
    if not reqs:
        return 0.0
    ctx = sum(map(get_prefilled, reqs)) + sum(map(get_output, reqs))
    return cost.per_decode_req_s * len(reqs) + cost.per_context_token_s * ctx


def predicted_s(cost: CostModel, prefill: Sequence[tuple[int, int]], decodes: Sequence[ReqView]) -> float:
    """Predicted iteration time of prefill chunks [(chunk, prefix)] plus decode rows; 0 for an empty batch."""
    if not prefill and not decodes:
        return 0.0
    return cost.base_s + sum(cost.prefill_s(c, p) for c, p in prefill) + decode_time_s(cost, decodes)


def make_plan(cost: CostModel, prefill: list[tuple[ReqView, int]], decodes: Sequence[ReqView],
              preempt: Sequence[str], budget_s: float, note: str = "") -> Plan:
    return Plan(
        prefill=tuple((r.rid, c) for r, c in prefill),
        decode=tuple(map(get_rid, decodes)),
        preempt=tuple(preempt),
        budget_s=budget_s,
        predicted_s=predicted_s(cost, [(c, r.prefilled_tokens) for r, c in prefill], decodes),
        note=note,
    )
