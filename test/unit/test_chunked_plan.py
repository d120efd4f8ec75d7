"""core/prefill_shape.chunked_plan: what SGLang is handed when it has a chunked request (it continues that request first
with the whole token budget unless limited, and holds one partial prefill), and the KV a capped chunked request
keeps reserved (deferral._adder_reserving)."""

from __future__ import annotations

import types

from sglang.srt.managers.schedule_policy import CLIP_MAX_NEW_TOKENS

from sglang_fair.core.prefill_shape import chunked_plan
from sglang_fair.engine.deferral import _adder_reserving


def test_without_a_chunked_request_every_item_is_handed_over_unlimited():
    assert chunked_plan([(300, 300), (500, 2000)], None) == (None, [0, 1])


def test_a_chunked_request_the_plan_finishes_needs_no_limit_and_the_last_item_may_still_be_cut():
    assert chunked_plan([(300, 300), (200, 200), (500, 2000)], 0) == (None, [1, 2])


def test_a_chunked_request_left_partial_gets_its_chunk_and_a_second_cut_is_dropped():
    # fair's aged lane: on-time A and B whole, the aged chunked prompt a share, C cut last
    chunks = [(800, 800), (200, 200), (120, 4000), (400, 3000)]
    assert chunked_plan(chunks, 2) == (120, [0, 1])
    assert chunked_plan(chunks, 2, page_size=64) == (64, [0, 1])  # whole pages, floored
    assert chunked_plan([(20, 4000), (100, 100)], 0, page_size=64) == (64, [1])  # at least one page


def test_a_chunked_request_the_plan_leaves_out_gets_one_page():
    assert chunked_plan([(800, 800), (300, 900)], -1) == (1, [0])
    assert chunked_plan([(800, 800)], -1, page_size=16) == (16, [0])


class _Budget:
    def __init__(self, page_size: int) -> None:
        self.page_size, self.total_offset = page_size, 0

    def ceil_paged_tokens(self, tokens: int) -> int:
        return -(-tokens // self.page_size) * self.page_size


class _Adder:
    """The part of SGLang's PrefillAdder the wrapper touches: a chunked continuation capped to `limit` tokens."""

    def __init__(self, page_size: int, limit: int) -> None:
        self.memory_budget, self.limit = _Budget(page_size), limit

    def _get_running_request_total_token_offset(self, req) -> int:
        return req.future_tokens

    def add_chunked_req(self, req):
        req.extend_end = min(len(req.full_untruncated_fill_ids), req.prefix_len + self.limit)
        self.memory_budget.total_offset += req.extend_end - req.prefix_len
        return req if req.extend_end < len(req.full_untruncated_fill_ids) else None


def _chunked(prompt: int, done: int, max_new: int):
    return types.SimpleNamespace(full_untruncated_fill_ids=[0] * prompt, prefix_len=done, extend_end=None,
                                 sampling_params=types.SimpleNamespace(max_new_tokens=max_new))


def test_a_capped_chunked_request_keeps_the_kv_of_its_later_chunks_and_first_outputs_reserved():
    # 4000-token prompt, 1000 done, capped to 256 this step: 2744 prompt tokens (paged up to 2752) and its clipped
    # outputs stay reserved, so what is admitted beside it cannot take the KV its next chunk allocates unchecked.
    parked = [types.SimpleNamespace(future_tokens=30)]
    adder = _adder_reserving(lambda: _Adder(page_size=16, limit=256), parked, True)
    req = _chunked(4000, 1000, max_new=64)
    assert adder.add_chunked_req(req) is req
    assert adder.memory_budget.total_offset == 30 + 256 + 2752 + min(64, CLIP_MAX_NEW_TOKENS)
    uncapped = _adder_reserving(lambda: _Adder(page_size=16, limit=256), parked, False)  # no cap: stock's own rule
    assert uncapped.add_chunked_req(_chunked(4000, 1000, max_new=64)) is not None
    assert uncapped.memory_budget.total_offset == 30 + 256


def test_a_chunked_request_that_finishes_this_step_reserves_nothing_more():
    adder = _adder_reserving(lambda: _Adder(page_size=1, limit=512), [], True)
    assert adder.add_chunked_req(_chunked(1200, 1000, max_new=64)) is None
    assert adder.memory_budget.total_offset == 200
