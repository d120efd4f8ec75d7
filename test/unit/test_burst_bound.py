"""The burst bound (sim/burst_bound.py): a lower bound on late first tokens that no schedule beats, and the rate scale
where it leaves the P99 TTFT criterion reachable."""

from __future__ import annotations

import math

import numpy as np
import pytest

from factories import make_trace
from sglang_fair.core.cost_model import CostModel
from sglang_fair.core.metrics import _pct
from sglang_fair.core.presets import load_preset
from sglang_fair.policies.registry import make_policy
from sglang_fair.sim.burst_bound import (burst_bound_scale, min_late_first_tokens, min_prefill_work_s,
                                         tail_misses_allowed)
from sglang_fair.sim.engine import EngineConfig, simulate
from sglang_fair.sim.traces import load_trace


def test_a_burst_that_cannot_all_fit_forces_the_excess_late():
    # three 1.5 s prefills at t=0 with a 2 s TTFT: one fits, two are late under any schedule
    assert min_late_first_tokens(np.zeros(3), np.full(3, 1.5), 2.0) == 2
    # the smallest ones are kept: 0.5 + 0.5 + 0.9 fit in 2 s, the 1.9 s one cannot join them
    assert min_late_first_tokens(np.zeros(4), np.array([1.9, 0.5, 0.9, 0.5]), 2.0) == 1
    # a later arrival widens the window: the last request's window ends at 3.0 s, so two 1.5 s prefills fit
    assert min_late_first_tokens(np.array([0.0, 0.0, 1.0]), np.full(3, 1.5), 2.0) == 1


def test_separate_bursts_add_up_and_spaced_requests_force_nothing():
    burst = [0.0, 0.0, 0.0]
    arrivals = np.array(burst + [100.0 + t for t in burst])
    assert min_late_first_tokens(arrivals, np.full(6, 1.5), 2.0) == 4
    assert min_late_first_tokens(np.arange(10) * 3.0, np.full(10, 1.9), 2.0) == 0
    with pytest.raises(ValueError, match="ascending"):
        min_late_first_tokens(np.array([1.0, 0.0]), np.ones(2), 2.0)


def test_the_cheapest_prefill_is_the_cost_models_in_infinitely_small_chunks():
    cost = CostModel(base_s=0.01, per_prefill_token_s=1e-4, per_attn_token2_s=1e-8)
    w = min_prefill_work_s(np.array([1000]), cost)[0]
    one_chunk = cost.prefill_s(1000, 0)
    by_tens = sum(cost.prefill_s(10, k) for k in range(0, 1000, 10))
    assert w < by_tens < one_chunk and w == pytest.approx(1000 * (1e-4 + 1e-8 * 500))


@pytest.mark.parametrize("n", [100, 1000, 1445])
def test_allowed_misses_are_what_p99_ttft_tolerates(n):
    m = tail_misses_allowed(n)
    x = np.zeros(n)
    x[n - m:] = math.inf
    assert _pct(x, 99) <= 2.0
    x[n - m - 1] = math.inf
    assert _pct(x, 99) > 2.0


@pytest.mark.parametrize("spec,scale", [("fair", 1.5), ("fair", 3.0), ("sarathi", 2.0), ("sglang-default", 2.5)])
def test_no_simulated_policy_has_fewer_late_first_tokens_than_the_bound(spec, scale):
    trace = load_trace("sharegpt", limit=400).scaled(scale)
    cost = load_preset("a100-llama3-8b")
    res = simulate(trace, make_policy(spec), cost, EngineConfig())
    late = sum(1 for r in res.records if r.first_token_s is None or r.first_token_s - r.arrival_s > 2.0)
    bound = min_late_first_tokens(trace.arrival_s, min_prefill_work_s(trace.prompt_tokens, cost), 2.0)
    assert bound > 0  # the window is loaded enough for the bound to say something
    assert late >= bound, (late, bound)


def test_the_bound_scale_is_where_the_forced_misses_cross_the_allowance():
    trace = make_trace([(t * 0.5, 4000 if t % 7 == 0 else 300, 50) for t in range(120)])
    cost = load_preset("a100-llama3-8b")
    allowed = tail_misses_allowed(len(trace))
    b = burst_bound_scale(trace, cost, 2.0, rel_tol=0.01)
    work = min_prefill_work_s(trace.prompt_tokens, cost)
    assert 0 < b < math.inf
    assert min_late_first_tokens(trace.arrival_s / b, work, 2.0) <= allowed
    assert min_late_first_tokens(trace.arrival_s / (b * 1.02), work, 2.0) > allowed
