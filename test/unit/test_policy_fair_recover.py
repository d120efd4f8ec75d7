"""`fair`'s `recover_tpot` (on by default): a decode behind its envelope shrinks the budget to the uniform iteration length that
still lands its last token on time; rows past saving and rows on schedule leave the plan as it was."""

from __future__ import annotations

import numpy as np
import pytest
from factories import COST, make_req, make_running_with_slack, make_snapshot, make_trace

from sglang_fair.core.metrics import tpot_s
from sglang_fair.policies import make_policy
from sglang_fair.policies.fair import FairParams
from sglang_fair.sim.engine import EngineConfig, simulate

NOW = 50.0
TPOT = 0.1


def fair(**kw):
    """fair with the paper's envelope (no TPOT margin), whose arithmetic these tests do by hand."""
    return make_policy("fair", **{"tpot_margin": 0.0, **kw})


def snapshot_with(slack_s: float, tokens_left: int, *, output_tokens: int = 5):
    behind = make_running_with_slack("late", slack_s, now=NOW, output_tokens=output_tokens,
                                     max_new_tokens=output_tokens + tokens_left)
    on_time = make_running_with_slack("ok", 0.3, now=NOW)
    # a long prompt waiting: the budget is filled with prefill, so it shows in the plan
    return make_snapshot(now=NOW, running=[behind, on_time], waiting=[make_req("w", arrival_s=NOW, prompt_tokens=5000)])


def test_a_decode_behind_wins_its_lag_back_over_its_remaining_tokens():
    snap = snapshot_with(0.07, 3)  # 30 ms behind, 3 tokens to go: iterations of 100 - 30 / 3 = 90 ms land it on time
    plain = fair(recover_tpot=False).plan(snap)
    plan = fair().plan(snap)
    assert plain.budget_s == pytest.approx(TPOT)
    assert plan.budget_s == pytest.approx(TPOT - 0.03 / 3)
    assert "late" in plan.decode and plan.predicted_s <= plan.budget_s + 1e-12
    assert 0 < plan.prefill_tokens < plain.prefill_tokens  # the 10 ms went from prefill


def test_the_last_token_recovers_the_whole_lag():
    plan = fair().plan(snapshot_with(0.06, 1))
    assert plan.budget_s == pytest.approx(0.06)


def test_a_row_past_saving_does_not_shrink_the_budget():
    # one token left and its deadline passed: no iteration length can land it on time
    snap = snapshot_with(-0.02, 1)
    plan = fair().plan(snap)
    assert plan == fair(recover_tpot=False).plan(snap)
    assert plan.budget_s == pytest.approx(TPOT) and "late" in plan.decode


@pytest.mark.parametrize("slacks", [(0.1, 0.3), (0.25, 0.12, 0.5), (1.0,)])
def test_nothing_changes_while_every_decode_is_on_schedule(slacks):
    running = [make_running_with_slack(f"d{i}", s, now=NOW, max_new_tokens=9) for i, s in enumerate(slacks)]
    snap = make_snapshot(now=NOW, running=running, waiting=[make_req("w", arrival_s=NOW, prompt_tokens=3000)])
    assert fair().plan(snap) == fair(recover_tpot=False).plan(snap)


def test_recover_tpot_must_be_a_bool():
    with pytest.raises(ValueError, match="recover_tpot"):
        FairParams(recover_tpot=1)


def test_with_a_noisy_device_fewer_requests_end_over_their_tpot_slo():
    """Iterations 20% off the plan at random: without recovery an overrun leaves a row late for the rest of its
    output; with it the lag is won back, so fewer requests finish above the TPOT SLO."""
    rng = np.random.default_rng(3)
    rows = [(0.05 * i, int(rng.integers(200, 2000)), int(rng.integers(4, 30))) for i in range(300)]
    trace = make_trace(rows)
    cfg = EngineConfig(ttft_slo_ms=2000, tpot_slo_ms=100, noise_cv=0.2, seed=1, cost_headroom=False)

    def over(policy):
        res = simulate(trace, policy, COST, cfg)
        return sum(tpot_s(r) > 0.1 for r in res.records if r.n_outputs > 1)

    plain, recovered = over(fair(recover_tpot=False)), over(fair())
    assert plain > 10 and recovered < plain / 2
