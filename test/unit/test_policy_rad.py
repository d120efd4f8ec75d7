"""`rad`: iterations in whole 128-token tiles at the cost model's efficient size, the prefill share following the
backlogs, and throughput at the stability bound on a steady trace without SLOs."""

from __future__ import annotations

import numpy as np
import pytest
from factories import make_req, make_running, make_snapshot, make_trace

from sglang_fair.core.cost_model import CostModel
from sglang_fair.core.presets import load_preset
from sglang_fair.policies import make_policy
from sglang_fair.policies.rad import RadParams, efficient_tokens
from sglang_fair.sim.capacity import stability_bound_rps
from sglang_fair.sim.engine import EngineConfig, simulate

A100 = load_preset("a100-llama3-8b")


def test_efficient_size_from_the_cost_model():
    assert efficient_tokens(A100, 128, 8192) == 2048  # sqrt(base / a) = 2059 tokens
    linear = CostModel(base_s=0.01, per_prefill_token_s=1e-4)
    assert efficient_tokens(linear, 128, 8192) == 8192  # no attention term: the bigger the cheaper
    assert efficient_tokens(CostModel(base_s=1e-9, per_prefill_token_s=1e-4, per_attn_token2_s=1e-6), 128, 8192) == 128


@pytest.mark.parametrize("n_dec", [0, 1, 37, 300])
def test_iterations_are_whole_tiles(n_dec):
    running = [make_running(f"d{i}", output_tokens=5, max_new_tokens=400) for i in range(n_dec)]
    waiting = [make_req(f"w{i}", prompt_tokens=700) for i in range(20)]
    plan = make_policy("rad").plan(make_snapshot(running=running, waiting=waiting, cost=A100))
    total = plan.prefill_tokens + len(plan.decode)
    assert len(plan.decode) == n_dec  # decodes are never deferred
    assert total % 128 == 0
    # 14k queued tokens over the decode set's ~395 remaining steps: the efficient size (no decode set: the cap)
    assert total == (8192 if n_dec == 0 else max(2048, -(-(n_dec + 128) // 128) * 128))


def test_prefill_share_follows_the_backlogs():
    waiting = [make_req(f"w{i}", prompt_tokens=1000) for i in range(100)]  # 100k queued prompt tokens
    long = [make_running(f"d{i}", output_tokens=5, max_new_tokens=2005) for i in range(40)]  # ~2000 steps left
    short = [make_running(f"d{i}", output_tokens=5, max_new_tokens=25) for i in range(40)]  # ~20 steps left
    p_long = make_policy("rad").plan(make_snapshot(running=long, waiting=waiting, cost=A100))
    p_short = make_policy("rad").plan(make_snapshot(running=short, waiting=waiting, cost=A100))
    assert p_long.prefill_tokens + 40 == 2048  # a long-lived decode set: the efficient size
    assert p_short.prefill_tokens + 40 == 5120  # 100k tokens over ~20 steps: ceil_tile(40 + 5000)
    assert make_policy("rad").plan(make_snapshot(waiting=waiting * 1, cost=A100)).prefill_tokens == 8192
    small = make_policy("rad").plan(make_snapshot(running=long, waiting=[make_req("w", prompt_tokens=50)], cost=A100))
    assert small.prefill == (("w", 50),)  # less queued than a tile: all of it


def test_params_checked():
    with pytest.raises(ValueError, match="max_batch_tokens"):
        RadParams(tile_tokens=256, max_batch_tokens=128)
    with pytest.raises(ValueError, match="tile_tokens"):
        RadParams(tile_tokens=0)


def test_throughput_meets_the_stability_bound_without_slos():
    """A steady trace (evenly spaced arrivals) at 95% of the bound (iterations of 100 ms), SLOs out of reach of any
    queue: rad keeps up (queue drains within seconds of the last arrival) and completes >= 0.9 x bound."""
    rng = np.random.default_rng(0)
    n = 1500
    prompts, outputs = rng.integers(200, 1000, n), rng.integers(20, 200, n)
    base = make_trace([(0.0, int(p), int(o)) for p, o in zip(prompts, outputs)])
    bound = stability_bound_rps(base, A100, 0.1)
    arrivals = np.arange(n) / (0.95 * bound)
    trace = make_trace([(float(a), int(p), int(o)) for a, p, o in zip(arrivals, prompts, outputs)])
    res = simulate(trace, make_policy("rad"), A100, EngineConfig(ttft_slo_ms=1e6, tpot_slo_ms=1e6))
    last = max(r.last_token_s for r in res.records)
    assert all(r.finished for r in res.records) and not res.aborted
    assert n / last >= 0.9 * bound
    assert last - arrivals[-1] < 10.0
    assert max(r.first_token_s - r.arrival_s for r in res.records) < 2.0
