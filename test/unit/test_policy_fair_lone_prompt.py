"""fair where a decode row costs extra in a prefill forward (cost model `m > 0`, or mixing banned): a short prompt
alone behind running decodes is held back for batching for at most one TPOT, then served, mixed or in a step of its
own. Before, the two batching rules (no mixed step whose prefill is worth less than its mixed penalty; no
prefill-only step carrying less than its fixed cost) held it until the decodes finished (seen in the simulator on
the emulated device's model with the online fit: a 38-token prompt waited 9.8 s behind one decode)."""

from __future__ import annotations

import dataclasses

import pytest
from factories import MIXED_COST as MIXED, make_req, make_running_with_slack, make_snapshot, make_trace

from sglang_fair.core.metrics import ttft_s
from sglang_fair.policies import make_policy
from sglang_fair.sim.engine import EngineConfig, simulate

# MIXED: a decode row in a prefill forward costs 4 ms more, more than the 38-token prompt's 2.9 ms
TPOT_S = 0.1
HELD_S = TPOT_S * (1 - 0.02)  # one TPOT of fair's envelope (tpot_margin 0.02)


def lone_prompt(now: float, *, mixing: bool = True):
    snap = make_snapshot(now=now, running=[make_running_with_slack("d", 0.49, now=now, output_tokens=50)],
                         waiting=[make_req("w", arrival_s=0.0, prompt_tokens=38, ttft_slo_s=2.0)], cost=MIXED)
    return snap if mixing else dataclasses.replace(snap, mixing_allowed=False)


@pytest.mark.parametrize("mixing", [True, False])
def test_a_lone_short_prompt_is_held_for_one_tpot_at_most(mixing):
    fair = make_policy("fair")
    for now in (0.0, HELD_S - 0.001):  # held: the decode runs alone, the prompt may yet share a step
        plan = fair.plan(lone_prompt(now, mixing=mixing))
        assert plan.prefill == () and plan.decode == ("d",)
    for now in (HELD_S, 0.5, 2.5):  # then served, past its TTFT deadline too
        plan = fair.plan(lone_prompt(now, mixing=mixing))
        assert plan.prefill == (("w", 38),)
        # mixed where allowed (4 ms of mixed penalty against a 10 ms step of its own); alone otherwise, the decode
        # sitting out (it has 490 ms of slack)
        assert plan.decode == (("d",) if mixing else ())


def test_closed_loop_a_lone_prompt_behind_a_long_decode_is_served_within_a_tpot():
    # one request decoding 2000 tokens (its steps run back to back, about 11 ms each, while nothing else waits),
    # a 38-token prompt arriving 5 s in
    trace = make_trace([(0.0, 100, 2000), (5.0, 38, 4)])
    res = simulate(trace, make_policy("fair"), MIXED, EngineConfig(tpot_slo_ms=TPOT_S * 1e3))
    late = res.records[1]
    assert late.finished and not late.demoted
    assert ttft_s(late) < HELD_S + 0.05  # held for a TPOT, then one step (was: until the decode finished)
