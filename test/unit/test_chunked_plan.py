"""engine/deferral.chunked_plan: what SGLang is handed when it has a chunked request (it continues that request first
with the whole token budget unless limited, and holds one partial prefill)."""

from __future__ import annotations

from sglang_fair.engine.deferral import chunked_plan


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
