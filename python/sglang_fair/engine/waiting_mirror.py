"""The waiting queue's views, kept in step with SGLang's `waiting_queue` by what changed instead of re-reading every
queued request each step (issue 14: with 1000 queued requests, reading each Req's fields cost about a millisecond a
step, most of it memory traffic over the scattered Req objects rather than Python work; see docs/results.md).

What can change a waiting request's view, and how the mirror learns it:
- joining or leaving the queue (arrival, admission, abort, retraction, grammar ready): the queue's identities
  (`map(id, queue)`, which reads no Req) differ from the last step's; new members get a view, gone ones are dropped.
  Each entry holds its Req, so an id cannot be reused while its entry lives;
- its radix-cache hit (`prefix_len`): set by `sglang_view.PrefixMatcher` and inside SGLang's batch-forming call for
  the requests the adapter handed it; both `touch()` those requests, which are then re-read;
- anything else (a stock step on the whole queue: `invalidate()`): the next update re-reads the whole queue.
The output count and the `finished()` state of a waiting request do not change while it waits (an abort removes it
from the queue; a retracted request comes back as a new member).
To bound what an unforeseen SGLang path could leave stale, every `full_check_every`-th update re-reads the whole
queue anyway and counts the views it had to correct (`stale_fixed`, reported in the status; zero is expected).
"""

from __future__ import annotations

from bisect import insort
from itertools import compress
from operator import attrgetter, not_
from typing import Callable, Iterable

from ..core.types import ReqView
from .sglang_view import blocks_mixing

_BY_ARRIVAL = attrgetter("arrival_s")

FULL_CHECK_EVERY = 16
"""Updates between two full re-reads of the queue."""


class WaitingMirror:
    """Views of SGLang's waiting queue, sorted by arrival; `build(req)` makes the view of a waiting Req."""

    def __init__(self, build: Callable[[object], ReqView], full_check_every: int = FULL_CHECK_EVERY) -> None:
        if full_check_every < 1:
            raise ValueError(f"full_check_every must be >= 1, got {full_check_every}")
        self._build = build
        self.full_check_every = full_check_every
        self._entries: dict[int, tuple] = {}
        """id(req) -> (req, output count, prefix_len, view or None when finished, blocks mixing)."""
        self._ids: list[int] = []
        self._touched: dict[int, object] = {}
        self._sorted: list[ReqView] = []
        self._by_rid: dict[str, tuple] = {}
        """rid -> entry of the members with a view."""
        self._mix_blockers = 0
        self._since_full = full_check_every
        self._expect_changes = True
        self.stale_fixed = 0
        """Views a full re-read found changed without the mirror having been told (see the module docstring)."""
        self.full_reads = 0
        self.built = 0
        """Views built (new members, touched requests whose prefix hit changed, corrections)."""

    # ---- what the adapter tells it ------------------------------------------------------------------------------
    def touch(self, reqs: Iterable) -> None:
        """These requests' prefix hits may have changed: re-read them at the next update if still queued."""
        for r in reqs:
            self._touched[id(r)] = r

    def invalidate(self) -> None:
        """Re-read the whole queue at the next update (SGLang worked on all of it)."""
        self._since_full = self.full_check_every
        self._expect_changes = True

    # ---- reading --------------------------------------------------------------------------------------------------
    def update(self, queue) -> int:
        """Bring the mirror in step with `queue` (SGLang's waiting queue); returns the views built."""
        queue = queue if isinstance(queue, list) else list(queue)
        ids = list(map(id, queue))
        built = self.built
        if self._since_full >= self.full_check_every:
            self._full(queue, ids)
        elif self._touched or ids != self._ids:
            self._delta(queue, ids)
        else:
            self._since_full += 1
        self._ids = ids
        self._touched.clear()
        return self.built - built

    def views(self, skip_rid: str | None = None) -> list[ReqView]:
        """The waiting views sorted by arrival (stable), without `skip_rid`'s (SGLang's chunked request)."""
        if skip_rid is not None and skip_rid in self._by_rid:
            return [v for v in self._sorted if v.rid != skip_rid]
        return self._sorted

    def req(self, rid: str):
        """The queued Req with this rid (None when not queued or finished)."""
        e = self._by_rid.get(rid)
        return e[0] if e is not None else None

    def view(self, rid: str) -> ReqView | None:
        """The current view of the queued request with this rid (None when not queued or finished)."""
        e = self._by_rid.get(rid)
        return e[3] if e is not None else None

    @property
    def blocks_mixing(self) -> bool:
        """Whether a queued request keeps SGLang from mixing prefill and decode."""
        return self._mix_blockers > 0

    def __len__(self) -> int:
        return len(self._sorted)

    # ---- internals ------------------------------------------------------------------------------------------------
    def _entry(self, req) -> tuple:
        view = None if req.finished() else self._build(req)
        self.built += view is not None
        return req, len(req.output_ids), req.prefix_len, view, blocks_mixing(req)

    @staticmethod
    def _current(entry: tuple) -> bool:
        req = entry[0]
        return (len(req.output_ids) == entry[1] and req.prefix_len == entry[2]
                and (entry[3] is None) == req.finished())

    def _full(self, queue: list, ids: list[int]) -> None:
        old, new = self._entries, {}
        for r, i in zip(queue, ids):
            e = old.get(i)
            if e is None:
                e = self._entry(r)
            elif not self._current(e):
                if not self._expect_changes and i not in self._touched:
                    self.stale_fixed += 1
                e = self._entry(r)
            new[i] = e
        self._entries = new
        self._since_full = 1
        self._expect_changes = False
        self.full_reads += 1
        self._reindex()

    def _delta(self, queue: list, ids: list[int]) -> None:
        entries = self._entries
        present, before = set(ids), set(self._ids)  # sets of the queues' ids: no Req and no old entry is read
        out = [entries.pop(i) for i in before - present]
        fresh_ids = present - before
        add = [self._entry(r) for r in compress(queue, map(fresh_ids.__contains__, ids))] if fresh_ids else []
        for i, r in self._touched.items():
            e = entries.get(i)
            if e is not None and not self._current(e):
                out.append(e)
                add.append(self._entry(r))
        for e in add:
            entries[id(e[0])] = e
        self._since_full += 1
        if out or add:
            self._apply(out, add)

    def _apply(self, out: list[tuple], add: list[tuple]) -> None:
        """Drop the views of `out` and insert those of `add` into the sorted list and the indexes."""
        by_rid = self._by_rid
        dropped = set()
        for e in out:
            if e[3] is not None:
                dropped.add(id(e[3]))
                by_rid.pop(e[3].rid, None)
        views = self._sorted
        if dropped:  # C-level filter by identity (ReqView's == compares fields)
            views = list(compress(views, map(not_, map(dropped.__contains__, map(id, views)))))
        else:
            views = list(views)
        for e in add:
            if e[3] is not None:
                insort(views, e[3], key=_BY_ARRIVAL)
                by_rid[e[3].rid] = e
        self._sorted = views
        self._mix_blockers += sum(e[4] for e in add) - sum(e[4] for e in out)

    def _reindex(self) -> None:
        live = [e for e in self._entries.values() if e[3] is not None]
        self._sorted = sorted([e[3] for e in live], key=_BY_ARRIVAL)
        self._by_rid = {e[3].rid: e for e in live}
        self._mix_blockers = sum(e[4] for e in self._entries.values())
