"""How SGLang 0.5.23 forms a plan's prefill, as a pure function both engines share: the live adapter hands SGLang
what `chunked_plan` says, and the simulator runs what `realised_chunks` says SGLang runs, so a plan SGLang cannot
run as written costs the same in both.

SGLang's prefill step (`Scheduler._get_new_batch_prefill_raw` and `PrefillAdder`):
- it holds at most one partially prefilled request (`scheduler.chunked_req`) and continues it first in every step
  that runs a prefill, with the step's whole token budget unless `PrefillAdder.chunked_req_limit` caps it;
- it then takes waiting requests in order, each whole while the budget lasts; the one at the budget's end is cut
  and becomes the next chunked request, and no other request follows it (a second cut fails its assertion).
"""

from __future__ import annotations


def chunked_plan(chunks: list[tuple[int, int]], chunked_index: int | None, page_size: int = 1
                 ) -> tuple[int | None, list[int]]:
    """How SGLang runs a plan's prefill items `chunks` ([(planned tokens, remaining prompt tokens)], plan order) when
    item `chunked_index` is its chunked request (None: no chunked request in the plan; -1: one exists but the plan
    leaves it out). SGLang continues its chunked request first, with the whole token budget unless limited, and may
    cut only one request per step (a second cut while the chunked request stays partial fails its assertion).
    Returns (the chunked request's limit, or None for no limit; the indices of the other items to hand SGLang):
    - a chunked request the plan finishes needs no limit; the others keep their chunks (the last may be cut);
    - one the plan leaves partial is limited to its planned chunk (floored to whole pages, at least one page; one page
      when the plan leaves it out), and the other items are handed over only while whole: a planned cut of another
      request is dropped this step (SGLang cannot hold two partial prefills)."""
    if chunked_index is None:
        return None, list(range(len(chunks)))
    others = [i for i in range(len(chunks)) if i != chunked_index]
    if chunked_index >= 0:
        planned, remaining = chunks[chunked_index]
        if planned >= remaining:
            return None, others
    else:
        planned = 0
    page = max(1, int(page_size))
    limit = max(page, planned // page * page)
    return limit, [i for i in others if chunks[i][0] >= chunks[i][1]]


def realised_chunks(chunks: list[tuple[int, int]], chunked_index: int | None, page_size: int = 1
                    ) -> tuple[list[int], int]:
    """What SGLang runs of a plan's prefill (`chunks`: [(planned tokens, remaining prompt tokens)], plan order) from
    what `chunked_plan` hands it: (the tokens each item gets, 0 when it does not run this step; the tokens of
    SGLang's chunked request when the plan leaves it out, `chunked_index` -1, else 0). `chunked_index` as there. The
    total never exceeds the plan's, but for that one page.

    - no limit: SGLang's chunked request (if any) finishes, then the others take the rest of the plan's tokens in
      order, each whole until the budget ends inside one, which is cut, and nothing after it runs (a plan that cuts a
      request before its last item runs that request further, and its later items less);
    - a limit: the chunked request gets it (at most its remaining tokens), the others handed over run whole, and
      the rest run nothing (their cut dropped)."""
    limit, keep = chunked_plan(chunks, chunked_index, page_size)
    got = [0] * len(chunks)
    has_chunked = chunked_index is not None and chunked_index >= 0
    if limit is not None:
        for i in keep:
            got[i] = chunks[i][0]
        if not has_chunked:
            return got, limit
        got[chunked_index] = min(limit, chunks[chunked_index][1])
        return got, 0
    budget = sum(c for c, _ in chunks)
    if has_chunked:
        got[chunked_index] = chunks[chunked_index][1]
        budget -= got[chunked_index]
    for i in keep:
        if budget <= 0:
            break
        got[i] = min(chunks[i][1], budget)
        budget -= got[i]
        if got[i] < chunks[i][1]:
            break
    return got, 0
