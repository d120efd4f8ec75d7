"""fair with a decode past saving: its TPOT SLO is below what the device's decode step costs, so it is behind its
envelope every step and no iteration length above the progress floor lands its last token on time. Its envelope
would keep the budget at one TPOT, below any step that carries a prefill chunk, and a prompt sent meanwhile would
wait for the whole decode (seen live on a slow CPU host: docs/design.md, "Policies"). `lost_decode="gap"` (the
default) paces such a decode by its token-gap bound instead where the plan would carry no prefill while prompts
wait."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from factories import MIXED_COST as MIXED, load_benchmark, make_req, make_running, make_snapshot, make_trace

from sglang_fair.core.metrics import tbt_s, ttft_s
from sglang_fair.policies import make_policy
from sglang_fair.sim.engine import EngineConfig, simulate

# MIXED: a decode step costs 10.05 ms; a decode row in a prefill forward 4 ms more
TPOT_S = 0.008  # below the decode step: a decode with this SLO cannot keep its envelope
GAP_TPOT = 5.0  # FairParams.max_token_gap_tpot
KEEP = 1 - 0.02  # FairParams.tpot_margin


def behind_decode(now: float, *, tpot_slo_s: float = TPOT_S, outputs: int = 200, max_new: int = 2000):
    """A decode that has produced `outputs` tokens at one per decode step (10.05 ms), its last just now."""
    first = now - (outputs - 1) * 0.01005
    return make_running("d", arrival_s=first - 0.05, output_tokens=outputs, tpot_slo_s=tpot_slo_s,
                        last_token_s=now, first_token_s=first, max_new_tokens=max_new)


def snapshot(now: float, prompt_tokens: int = 38, arrival_s: float | None = None, **kw):
    arrival = now - 0.05 if arrival_s is None else arrival_s
    return make_snapshot(now=now, running=[behind_decode(now, **kw)],
                         waiting=[make_req("w", arrival_s=arrival, prompt_tokens=prompt_tokens, ttft_slo_s=2.0)],
                         cost=MIXED)


def test_a_prompt_behind_a_decode_past_saving_is_planned_with_it():
    snap = snapshot(10.0)
    plan = make_policy("fair").plan(snap)
    assert plan.prefill == (("w", 38),) and plan.decode == ("d",)
    assert "paced by their gap bound" in plan.note  # shows in the live status's recent plans
    # within the decode's gap bound: its next token comes before 5 TPOTs after its last
    assert plan.predicted_s <= GAP_TPOT * TPOT_S * KEEP
    # by its envelope alone the step stays decode-only, and the prompt waits
    old = make_policy("fair", lost_decode="envelope").plan(snap)
    assert old.prefill == () and old.decode == ("d",)


def test_a_decode_that_recovery_can_still_save_keeps_its_envelope():
    # a 100 ms TPOT SLO, a little behind: recovery caps the budget, and the gap pacing does not apply
    now = 10.0
    d = make_running("d", arrival_s=0.0, output_tokens=50, tpot_slo_s=0.1, first_token_s=now - 49 * 0.1 * KEEP - 0.03,
                     last_token_s=now, max_new_tokens=400)
    snap = make_snapshot(now=now, running=[d], waiting=[make_req("w", arrival_s=now - 0.05, prompt_tokens=3000)],
                         cost=MIXED)
    assert make_policy("fair").plan(snap) == make_policy("fair", lost_decode="envelope").plan(snap)


def test_no_prompt_waiting_the_decode_runs_every_step():
    snap = make_snapshot(now=10.0, running=[behind_decode(10.0)], cost=MIXED)
    plan = make_policy("fair").plan(snap)
    assert plan.decode == ("d",) and plan.prefill == ()
    assert plan == make_policy("fair", lost_decode="envelope").plan(snap)


@pytest.mark.parametrize("prompt_tokens", [38, 2000])
def test_closed_loop_a_prompt_is_served_while_a_lost_decode_runs_and_its_gaps_stay_bounded(prompt_tokens):
    # one request decoding 2000 tokens at a TPOT SLO below the device's decode step, a prompt arriving 5 s in
    trace = make_trace([(0.0, 100, 2000), (5.0, prompt_tokens, 4)])
    cfg = EngineConfig(tpot_slo_ms=TPOT_S * 1e3, record_token_times=True)
    res = simulate(trace, make_policy("fair"), MIXED, cfg)
    long, late = res.records
    assert long.finished and late.finished
    assert ttft_s(late) < 0.5  # was: until the decode finished, 15 s later
    assert late.first_token_s < long.last_token_s
    gaps = tbt_s(long)
    assert gaps.max() <= GAP_TPOT * TPOT_S * KEEP + 1e-9
    # paced by its gap bound only while the prompt was there: most of its tokens came a decode step apart
    assert np.median(gaps) == pytest.approx(0.01005, rel=0.01)
    old_long, old_late = simulate(trace, make_policy("fair", lost_decode="envelope"), MIXED, cfg).records
    assert old_late.first_token_s > old_long.last_token_s - 0.1  # the old rule: after the whole decode


def test_where_mixing_is_banned_the_prompt_runs_alone_and_the_decode_sits_out_within_its_gap_bound():
    snap = dataclasses.replace(snapshot(10.0), mixing_allowed=False)
    plan = make_policy("fair").plan(snap)
    assert plan.prefill == (("w", 38),) and plan.decode == ()
    # the decode step after it still lands inside the gap bound (its last token came just now)
    assert plan.predicted_s + MIXED.predict((), [snap.running[0].context_tokens]) <= GAP_TPOT * TPOT_S * KEEP
    assert make_policy("fair", lost_decode="envelope").plan(snap).prefill == ()


def test_no_second_pass_without_kv_for_a_chunk():
    # KV holds the decode's next token and nothing more: no prompt could join, so the envelope's plan stands
    snap = snapshot(10.0)
    full = make_snapshot(now=snap.now, running=snap.running, waiting=snap.waiting, cost=MIXED,
                         kv_capacity_tokens=snap.kv_used_tokens + 1)
    plan = make_policy("fair").plan(full)
    assert plan == make_policy("fair", lost_decode="envelope").plan(full)
    assert plan.prefill == () and "paced by their gap bound" not in plan.note


def test_the_benchmarks_simulated_scenario_is_this_closed_loop():
    # `python benchmark/lone_prompt.py --sim` prints docs/results.md's figures for the closed loop above
    bench = load_benchmark("lone_prompt")
    assert bench.SIM_COST == MIXED and bench.SIM_TPOT_SLO_MS == TPOT_S * 1e3
    rows = {(r["prompt_tokens"], r["lost_decode"]): r for r in bench.simulated()}
    for prompt in (38, 2000):
        assert rows[prompt, "gap"]["prompt_ttft_s"] < 0.5 < rows[prompt, "envelope"]["prompt_ttft_s"]
        assert rows[prompt, "gap"]["long_max_token_gap_ms"] <= round(GAP_TPOT * TPOT_S * KEEP * 1e3, 1)
    # `--sim --sim-tpot-slo-ms 2`: the scenario of the test below (its gap bound below the step with a chunk)
    low = {r["prompt_tokens"]: r for r in bench.simulated(2.0) if r["lost_decode"] == "gap"}
    assert low[38]["prompt_ttft_s"] < 0.1 and low[2000]["long_last_token_s"] > low[2000]["prompt_ttft_s"] + 5.0


@pytest.mark.parametrize("prompt_tokens", [38, 2000])
def test_closed_loop_below_even_the_gap_bound_the_prompt_gets_the_smallest_chunk_each_step(prompt_tokens):
    # a 2 ms TPOT SLO: its gap bound (5 x 2 ms x 0.98 = 9.8 ms) is below even the decode step (10.05 ms), let alone a
    # step that carries a chunk; the second pass floors the decode's deadline at the step with the smallest chunk
    tpot_s = 0.002
    chunk_step_s = MIXED.predict([(make_policy("fair").params.min_prefill_chunk_tokens, 0)], [100])  # 15.3 ms
    assert GAP_TPOT * tpot_s * KEEP < MIXED.predict((), [100]) < chunk_step_s
    trace = make_trace([(0.0, 100, 2000), (5.0, prompt_tokens, 4)])
    res = simulate(trace, make_policy("fair"), MIXED, EngineConfig(tpot_slo_ms=tpot_s * 1e3, record_token_times=True))
    long, late = res.records
    assert long.finished and late.finished
    # served beside the decode (a 16-token chunk per step at the least: 125 steps of 15.3 ms for 2000 tokens), not
    # after it (15 s later)
    assert ttft_s(late) < 0.1 if prompt_tokens == 38 else ttft_s(late) < 125 * chunk_step_s + 0.1
    assert late.first_token_s < long.last_token_s - 5.0
    # the decode keeps a token every step: no gap longer than the step with the smallest chunk
    assert tbt_s(long).max() <= chunk_step_s + 1e-9
