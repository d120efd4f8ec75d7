"""Which of a live probe's requests the servers demoted (fair's SLO-aware admission), so that the bench counts them
as the simulator does: an SLO miss in attainment, and in the tail at the TTFT they got but never under just over
the TTFT SLO (`core.metrics.tail_ttft_s`).

bench_serving cannot see a demotion and the server never learns the client's request index, so each demotion the
servers list (`demoted_recent` in the plugin's status: the prompt's length in tokens and the arrival's wall time)
is matched to a request of the probe by its prompt length (bench_serving counts the prompt it sends with the
server's tokenizer: the same count), and among requests of that length by arrival time. Arrival times are compared
after removing the probe's start-up offset (bench_serving builds its prompts before the first send), estimated as
the median offset of the demotions whose length only one request has.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np

from ..core.metrics import RequestTimes

LENGTH_TOLERANCE_TOKENS = 2
"""How far a demotion's prompt length may be from the request's (tokens): the server's count and bench_serving's
agree on the embedded model; the slack absorbs a template token either side."""
BEFORE_START_S = 1.0
"""Demotions listed with an arrival this long before the probe began are an earlier probe's."""


@dataclass(frozen=True)
class Matched:
    records: list[RequestTimes]
    """The probe's records, the demoted ones marked (`RequestTimes.demoted`)."""
    demoted: int
    """Distinct requests of the probe found demoted."""
    unmatched: int
    """Demotions of the probe's time that no request of its length took (none expected)."""


def mark_demoted(records: list[RequestTimes], input_lens: list[int], started_wall_s: float,
                 entries: list[dict]) -> Matched:
    """`records`, `input_lens`: the probe's, in trace order (`arrival_s` from the replay's start); `entries`: the
    servers' `demoted_recent` lists, concatenated."""
    lens = np.asarray(input_lens, dtype=np.int64)
    due = np.asarray([r.arrival_s for r in records], dtype=np.float64)
    mine = {}
    for e in entries:  # a request demoted twice is one demoted request
        if e["arrival_wall_s"] >= started_wall_s - BEFORE_START_S:
            mine.setdefault(e["rid"], e)
    if not mine or len(lens) != len(records):  # nothing to match, or no lengths to match by
        return Matched(list(records), 0, len(mine))
    cands = {rid: np.flatnonzero(np.abs(lens - e["prompt_tokens"]) <= LENGTH_TOLERANCE_TOKENS)
             for rid, e in mine.items()}
    offsets = [mine[rid]["arrival_wall_s"] - started_wall_s - due[c[0]] for rid, c in cands.items() if len(c) == 1]
    offset = float(np.median(offsets)) if offsets else 0.0
    taken: set[int] = set()
    unmatched = 0
    for rid in sorted(mine, key=lambda r: mine[r]["arrival_wall_s"]):
        c = [i for i in cands[rid] if i not in taken]
        if not c:
            unmatched += 1
            continue
        t = mine[rid]["arrival_wall_s"] - started_wall_s - offset
        taken.add(min(c, key=lambda i: (abs(due[i] - t), abs(int(lens[i]) - mine[rid]["prompt_tokens"]))))
    out = [dataclasses.replace(r, demoted=True) if i in taken else r for i, r in enumerate(records)]
    return Matched(out, len(taken), unmatched)
