"""SGLang scheduler state -> `core.types.Snapshot` (read only; never mutates SGLang objects).

Clock: `time.perf_counter()` in the scheduler process, the clock SGLang itself stamps `Req.time_stats` with, so
`Snapshot.now` and every per-request timestamp share one clock.

Mapping (SGLang 0.5.23):
- running    <- the running batch's unfinished requests (parked rows are merged back before the snapshot is taken);
                prefilled = prompt length, output = len(output_ids), last token = the latest of `TokenTimes` (when
                a processed result last added a token to the request, whichever forward produced it),
                time_stats.last_decode_finish_time and prefill_finished_time. SGLang stamps
                last_decode_finish_time only on the decode result path, not for decode rows of a mixed forward.
- prefilling <- `scheduler.chunked_req` (the one partially prefilled request); prefilled = req.prefix_len.
- waiting    <- `scheduler.waiting_queue` sorted by arrival (SGLang sorts that list in place by its own policy);
                prefilled = req.prefix_len, the radix-cache hit of the latest prefix match (0 without radix cache;
                the adapter matches the waiting view itself, see sglang_view.PrefixMatcher).
- arrival    <- the intake's estimate (engine/intake.py: the previous read of the socket when a forward ran since),
                else time_stats.scheduler_recv_time (when the scheduler read the request); first token <-
                time_stats.prefill_finished_time (a retracted request keeps its original first-token time).
- KV         <- capacity max_total_num_tokens; used = capacity - allocator.available_size() - evictable cache.
A retracted request waits again with its generated tokens as part of what must be prefilled, so for waiting and
prefilling requests `prompt_tokens` is the fill length (prompt + outputs so far).
In the overlap loop the result of the previous forward is processed after the next batch is scheduled, so output
counts of rows in the in-flight batch are one token behind (the same view stock SGLang schedules with).

Per-request SLOs come from `sampling_params.custom_params`, parsed by `config.slo.parse_request_slos`.

Views are reused across iterations (issue 14: building 1256 views was most of the adapter's per-step cost). A view
from the previous snapshot, for the same Req object in the same state, is reused when its key is unchanged:
- running, key = output count, last_decode_finish_time, prefill_finished_time and the TokenTimes entry; when only
  the key changed (a new token) the view is rebuilt from these and the previous view's fixed fields;
- prefilling: always built (one request);
- waiting: kept by `waiting_mirror.WaitingMirror`, which is told what changed (queue membership by identity, prefix
  hits the adapter caused) instead of reading every queued Req each step, and re-reads the whole queue periodically.
The other inputs are fixed while a request stays in one state: rid, prompt ids, sampling params (SLOs,
max_new_tokens) and scheduler_recv_time from intake on; wait_queue_entry_time and, for a retracted request, the
output ids change only as the request (re-)enters the queue, after a snapshot in which it was running, which
drops its waiting view. The caches hold exactly the views of the latest snapshot, so they never outgrow the queues.
SLOs are parsed when a view is built from the Req, so `recent_custom_slos` records requests as they first appear.
"""

from __future__ import annotations

import collections
from typing import Iterable

from ..config import SLO_KEYS, SloConfig, parse_request_slos
from ..core.cost_model import CostModel
from ..core.types import ReqView, Snapshot, fast_view
from .intake import ARRIVAL_ATTR
from .waiting_mirror import FULL_CHECK_EVERY, WaitingMirror


class SnapshotBuilder:
    """Builds one Snapshot per iteration; remembers between iterations only the views of the latest snapshot (reused
    while unchanged, see the module docstring), fault counts and the SLOs of the latest requests that carried their
    own (for the status endpoint)."""

    RECENT_CUSTOM = 32

    def __init__(self, slo: SloConfig, full_check_every: int = FULL_CHECK_EVERY) -> None:
        self.slo = slo
        self.token_times = TokenTimes()
        self.bad_slo_requests = 0
        self._bad_seen: set[str] = set()
        self.recent_custom_slos: collections.OrderedDict = collections.OrderedDict()
        """rid -> (ttft_slo_s, tpot_slo_s, strict) of the latest requests that carried their own SLOs (bounded)."""
        self._running: dict[str, tuple] = {}
        """rid -> (req, key, view) of the latest snapshot's running requests."""
        self.waiting = WaitingMirror(lambda req: self.view(req, "waiting"), full_check_every)
        """The waiting queue's views, kept in step by what changed (engine/waiting_mirror.py)."""
        self.views_reused = self.views_updated = self.views_built = 0
        """Views since start taken unchanged from the previous snapshot / rebuilt from the previous view's fixed
        fields (a running request's new token) / built from the Req."""

    def _slos(self, req) -> tuple[float, float, bool]:
        params = getattr(req.sampling_params, "custom_params", None)
        try:
            slos = parse_request_slos(params, self.slo)
        except ValueError:
            if req.rid not in self._bad_seen:  # rejected at the HTTP layer normally; count once per request
                self._bad_seen.add(req.rid)
                self.bad_slo_requests += 1
            return self.slo.ttft_slo_s, self.slo.tpot_slo_s, False
        if params and req.rid not in self.recent_custom_slos and any(k in params for k in SLO_KEYS):
            self.recent_custom_slos[req.rid] = slos
            if len(self.recent_custom_slos) > self.RECENT_CUSTOM:
                self.recent_custom_slos.popitem(last=False)
        return slos

    def view(self, req, state: str) -> ReqView:
        ts = req.time_stats
        arrival = getattr(req, ARRIVAL_ATTR, None) or ts.scheduler_recv_time or ts.wait_queue_entry_time
        ttft, tpot, strict = self._slos(req)
        n_out = len(req.output_ids)
        n_prompt = len(req.origin_input_ids)
        first = (ts.prefill_finished_time or None) if n_out else None  # set once; kept across retraction
        if state == "running":
            prompt, prefilled = n_prompt, n_prompt
            last = max(ts.last_decode_finish_time or 0.0, ts.prefill_finished_time or 0.0,
                       self.token_times.get(req.rid)) or None
        else:
            prompt = n_prompt + n_out
            prefilled = min(int(req.prefix_len), max(prompt - 1, 0))  # SGLang computes at least the last token
            last = None
        return fast_view(req.rid, float(arrival), prompt, ttft, tpot, prefilled, n_out,
                         int(req.sampling_params.max_new_tokens or 0), float(last) if last else None, strict,
                         float(first) if first else None)

    def _running_views(self, running_reqs: Iterable) -> list[ReqView]:
        old, new = self._running, {}
        seen = self.token_times._seen
        out = []
        built = updated = 0
        for r in running_reqs:
            if r.finished():
                continue
            rid, ts = r.rid, r.time_stats
            t = seen.get(rid)
            key = (len(r.output_ids), ts.last_decode_finish_time, ts.prefill_finished_time, t[1] if t else 0.0)
            hit = old.get(rid)
            if hit is None or hit[0] is not r:
                v = self.view(r, "running")
                built += 1
            elif hit[1] == key:
                v = hit[2]
            else:  # a new token: only the output count and the first / last token times can differ
                v = hit[2]
                n_out, last_decode, first, t_seen = key
                last = max(last_decode or 0.0, first or 0.0, t_seen) or None
                first = (first or None) if n_out else None
                v = fast_view(rid, v.arrival_s, v.prompt_tokens, v.ttft_slo_s, v.tpot_slo_s, v.prefilled_tokens, n_out,
                              v.max_new_tokens, float(last) if last else None, v.strict, float(first) if first else None)
                updated += 1
            new[rid] = (r, key, v)
            out.append(v)
        self._running = new
        self.views_built += built
        self.views_updated += updated
        self.views_reused += len(out) - built - updated
        return out

    def build(self, sched, running_reqs: Iterable, *, now: float, cost: CostModel,
              recent_iter_s: float = 0.0) -> Snapshot:
        running = self._running_views(running_reqs)
        chunked = sched.chunked_req
        prefilling = (self.view(chunked, "prefilling"),) if chunked is not None and not chunked.finished() else ()
        built = self.waiting.update(sched.waiting_queue)
        waiting = self.waiting.views(chunked.rid if chunked is not None else None)
        self.views_built += built
        self.views_reused += len(waiting) - built
        capacity, used = kv_usage(sched)
        return Snapshot(now=now, running=tuple(running), prefilling=prefilling, waiting=tuple(waiting),
                        kv_capacity_tokens=capacity, kv_used_tokens=used, cost=cost, recent_iter_s=recent_iter_s)


class TokenTimes:
    """When each request last received a token, from the results SGLang processed (perf_counter clock).

    `observe(reqs, t)` after a forward's result is processed: a request whose output count grew since the last
    observation gets time `t`. Finished requests are dropped; at most MAX requests are remembered (oldest update
    dropped first), so aborted requests cannot accumulate."""

    MAX = 65536

    def __init__(self) -> None:
        self._seen: dict[str, tuple[int, float]] = {}

    def observe(self, reqs: Iterable, t: float) -> float:
        """Record the new tokens; returns the longest gap (s) between a request's previous observed token and this
        one, among the unfinished requests that got one (0.0 when none had a previous token)."""
        seen = self._seen
        gap = 0.0
        for req in reqs:
            rid = req.rid
            if req.finished():
                seen.pop(rid, None)
                continue
            n = len(req.output_ids)
            old = seen.get(rid)
            if n and (old is None or old[0] != n):
                if old is not None and t - old[1] > gap:
                    gap = t - old[1]
                seen.pop(rid, None)
                seen[rid] = (n, t)
        while len(seen) > self.MAX:
            del seen[next(iter(seen))]
        return gap

    def get(self, rid: str) -> float:
        """The time of the request's latest observed token (0.0 when none was observed)."""
        v = self._seen.get(rid)
        return v[1] if v is not None else 0.0

    def __len__(self) -> int:
        return len(self._seen)


def kv_usage(sched) -> tuple[int, int]:
    """(capacity, used) KV tokens; evictable radix-cache entries count as free."""
    capacity = int(sched.max_total_num_tokens)
    free = int(sched.token_to_kv_pool_allocator.available_size())
    tree = sched.tree_cache
    if tree is not None and hasattr(tree, "evictable_size"):
        free += int(tree.evictable_size())
    return capacity, max(0, capacity - free)
