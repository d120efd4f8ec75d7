"""Cluster routing rules, lockstep event order, WindServe timeline, capacity search and the stability bound."""

from __future__ import annotations

import pytest
from factories import COST, make_trace

from sglang_fair.core.cost_model import CostModel
from sglang_fair.policies import make_policy
from sglang_fair.core.metrics import RequestTimes
from sglang_fair.sim.capacity import (Search, bisect_capacity, find_capacity, mean_work_s, stability_bound_rps)
from sglang_fair.sim.cli import parse_policy_spec
from sglang_fair.sim.cluster import ClusterConfig, simulate_cluster
from sglang_fair.sim.routers import make_router
from sglang_fair.sim.engine import EngineConfig, Replica, SimRequest, SimResult, simulate
from sglang_fair.sim.windserve import WindServeConfig, simulate_windserve

CFG = EngineConfig(ttft_slo_ms=1000, tpot_slo_ms=100, kv_capacity_tokens=100_000, record_token_times=True)
B, P, D = COST.base_s, COST.per_prefill_token_s, COST.per_decode_req_s


def router(kind, n=3, **kw):
    reps = [Replica(make_policy("sarathi"), COST, CFG, index=k) for k in range(n)]
    return make_router(ClusterConfig(replicas=n, router=kind, **kw), reps, 1.0), reps


def req(i, prompt=100, out=4):
    return SimRequest(f"r{i}", 0.0, prompt, out, 1.0, 0.1)


def test_round_robin_and_least_outstanding():
    r, _ = router("round_robin")
    assert [r.pick(req(i), 0.0) for i in range(5)] == [0, 1, 2, 0, 1]
    r, _ = router("least_outstanding")
    r.in_flight = [3, 1, 2]
    assert r.pick(req(0), 0.0) == 1


def test_cache_aware_balance_rule_thresholds():
    r, _ = router("cache_aware", balance_abs_threshold=64, balance_rel_threshold=1.5)
    r.routed_tokens = [10, 5, 50]  # balanced: fewest routed prompt tokens ("smallest tree") wins
    r.in_flight = [100, 40, 90]    # diff 60 <= 64: still balanced
    assert r.pick(req(0), 0.0) == 1
    r.routed_tokens = [10, 50, 5]
    assert r.pick(req(0), 0.0) == 2
    r.in_flight = [100, 35, 90]    # diff 65 > 64 and 100 > 1.5 * 35: shortest queue
    assert r.pick(req(0), 0.0) == 1
    r.in_flight = [150, 130, 195]  # diff 65 > 64 but 195 <= 1.5 * 130: balanced again
    assert r.pick(req(0), 0.0) == 2


def test_power_of_two_prefers_lower_token_load():
    r, reps = router("power_of_two", n=2, load_poll_interval_s=0.0)
    reps[0].add(req(0, prompt=5000))  # 5000 waiting prompt tokens vs 0
    assert {r.pick(req(1), 0.0) for _ in range(10)} == {1}


def test_fair_router_prefers_budget_and_stale_signals_wait_for_the_poll():
    r, reps = router("fair", n=2, load_poll_interval_s=1.0)
    reps[1].add(req(0, prompt=3000))
    assert r.pick(req(1), 0.0) == 0
    reps[0].add(req(2, prompt=6000))  # now replica 0 is the more loaded, but the router polled at t=0
    assert r.pick(req(3), 0.5) == 0
    assert r.pick(req(4), 1.0) == 1  # poll at t=1.0 sees the new queue


def test_fair_router_charges_dispatched_prompts_between_polls():
    r, reps = router("fair", n=2, load_poll_interval_s=10.0)
    assert r.pick(req(0), 0.0) == 0
    r.dispatched(0, req(0, prompt=2000))
    assert r.pick(req(1), 0.1) == 1


def test_power_of_two_on_our_load_herds_between_polls_as_sglang_router_does():
    """sglang-router 0.3.2's power_of_two on our /get_load: lower token load wins, and nothing it dispatches moves
    the reading before the next poll (the `fair` router charges it)."""
    r, reps = router("power_of_two_fair", n=2, load_poll_interval_s=10.0)
    reps[0].add(req(0, prompt=3000))  # replica 0 has less admission budget left: a higher token load
    assert r.pick(req(1), 0.0) == 1
    for i in range(2, 6):  # a burst until the next poll: all to the replica that read lower
        r.dispatched(1, req(i, prompt=3000))
        reps[1].add(req(i, prompt=3000))
        assert r.pick(req(i + 10), 0.1 * i) == 1
    assert r.pick(req(20), 10.0) == 0  # the poll sees replica 1's queue
    f, freps = router("fair", n=2, load_poll_interval_s=10.0)
    freps[0].add(req(0, prompt=3000))
    assert f.pick(req(1), 0.0) == 1
    f.dispatched(1, req(2, prompt=6000))
    assert f.pick(req(3), 0.1) == 0  # ours charges the dispatch against the stale reading


def test_one_replica_cluster_equals_single_simulation():
    trace = make_trace([(0.02 * i, 40 + 13 * (i % 5), 3 + i % 4) for i in range(25)])
    single = simulate(trace, make_policy("sarathi"), COST, CFG)
    for kind in ("round_robin", "fair", "power_of_two"):
        one = simulate_cluster(trace, lambda: make_policy("sarathi"), COST, CFG, ClusterConfig(replicas=1, router=kind))
        assert one.records == single.records


def test_two_replicas_round_robin_split_the_two_requests():
    # A (0 s, 100, 3 outputs) -> replica 0; B (1 ms, 50, 2) -> replica 1: no interaction between them.
    trace = make_trace([(0.0, 100, 3), (0.001, 50, 2)])
    res = simulate_cluster(trace, lambda: make_policy("sarathi"), COST, CFG,
                           ClusterConfig(replicas=2, router="round_robin"))
    a, b = res.records
    ta = B + 100 * P
    assert a.token_times_s == pytest.approx((ta, ta + B + D, ta + 2 * (B + D)), abs=1e-12)
    tb = 0.001 + B + 50 * P
    assert b.token_times_s == pytest.approx((tb, tb + B + D), abs=1e-12)


def test_a_cluster_runs_on_the_true_iteration_time_when_given():
    """`iteration_time` replaces the cost model as every replica's true time (the policies still plan with COST):
    one replica with the same function gives the single simulation's records."""
    trace = make_trace([(0.0, 100, 3), (0.001, 50, 2)])
    slow = lambda prefills, decodes: 2 * COST.predict(prefills, decodes)  # noqa: E731
    res = simulate_cluster(trace, lambda: make_policy("sarathi"), COST, CFG,
                           ClusterConfig(replicas=2, router="round_robin"), iteration_time=slow)
    a, b = res.records
    ta = 2 * (B + 100 * P)
    assert a.token_times_s == pytest.approx((ta, ta + 2 * (B + D), ta + 4 * (B + D)), abs=1e-12)
    tb = 0.001 + 2 * (B + 50 * P)
    assert b.token_times_s == pytest.approx((tb, tb + 2 * (B + D)), abs=1e-12)
    one = simulate_cluster(trace, lambda: make_policy("sarathi"), COST, CFG, ClusterConfig(replicas=1),
                           iteration_time=slow)
    assert one.records == simulate(trace, make_policy("sarathi"), COST, CFG, iteration_time=slow).records


def test_windserve_single_request_timeline():
    # P: prefill 100 -> first token at B + 100P; KV moves (1e-4 s/token x 101 tokens); D decodes 2 more tokens.
    ws = WindServeConfig(kv_transfer_s_per_token=1e-4)
    res = simulate_windserve(make_trace([(0.0, 100, 3)]), COST, CFG, ws)
    t1 = B + 100 * P
    t_ready = t1 + 1e-4 * 101
    dec = B + D  # context term is 0 in COST
    assert res.records[0].token_times_s == pytest.approx((t1, t_ready + dec, t_ready + 2 * dec), abs=1e-12)


def test_windserve_dispatches_prefill_to_decode_instance_when_prefill_is_backed_up():
    # 6 x 4000-token prompts at once: each takes 0.405 s on P, so the later ones would miss 1 s; some go to D.
    trace = make_trace([(0.0, 4000, 3)] * 6)
    res = simulate_windserve(trace, COST, CFG, WindServeConfig(dispatch_threshold=0.8))
    firsts = sorted(r.first_token_s for r in res.records)
    on_p_only = [(k + 1) * (B + 4000 * P) for k in range(6)]
    assert firsts[-1] < on_p_only[-1]
    assert all(r.n_outputs == 3 for r in res.records)


def _result(ttft):
    rec = RequestTimes("a", 0.0, ttft, ttft + 0.1, 2, 1.0, 0.2, 2)
    return SimResult([rec], 1.0, 1, 1.0, False, 0)


def test_bisection_finds_the_threshold_of_a_monotone_run():
    calls = []

    def run(scale):  # meets the 1 s TTFT SLO iff scale <= 1.7
        calls.append(scale)
        return _result(0.5 if scale <= 1.7 else 1.5)

    from sglang_fair.core.metrics import meets_tail
    cap = bisect_capacity(Search(run), lambda s: meets_tail(s, 1.0, 0.2), 0.5, rel_tol=0.01)
    assert 1.7 / 1.01 <= cap <= 1.7
    assert cap == max(c for c in calls if c <= 1.7)


def test_stability_bound_by_hand():
    cost = CostModel(base_s=0.01, per_prefill_token_s=1e-4, per_decode_req_s=1e-3, per_context_token_s=1e-6)
    trace = make_trace([(0.0, 100, 3), (1.0, 300, 1)])
    # request 1: prefill 100 x 1e-4 = 0.01; decodes j = 1, 2 at context 101, 102: 2e-3 + 203e-6
    # request 2: prefill 0.03, no decodes
    w = (0.01 + 2e-3 + 203e-6 + 0.03) / 2
    assert mean_work_s(trace, cost) == pytest.approx(w)
    assert stability_bound_rps(trace, cost, 0.1) == pytest.approx((1 - 0.01 / 0.1) / w)
    assert stability_bound_rps(trace, cost, 0.1, gpus=4) == pytest.approx(4 * (1 - 0.01 / 0.1) / w)


def test_find_capacity_brackets_the_tail_threshold():
    trace = make_trace([(0.05 * i, 200 + 50 * (i % 3), 4 + i % 3) for i in range(40)])
    run = lambda s: simulate(trace.scaled(s), make_policy("sarathi"), COST, CFG)  # noqa: E731
    res, search = find_capacity(run, trace, COST, 1.0, 0.1, rel_tol=0.05)
    assert 0 < res.capacity <= res.capacity_attainment * 1.0001
    assert res.p99_ttft_ms <= 1000.0 and res.p99_tpot_ms <= 100.0
    assert res.bound_fraction == pytest.approx(res.capacity / res.bound_scale)
    failing = [x for x, s in search.summaries.items() if not (s.p99_ttft_s <= 1.0 and s.p99_tpot_s <= 0.1)]
    assert failing and min(failing) <= res.capacity * 1.05 + 1e-9


@pytest.mark.parametrize("spec, want", [
    ("sarathi-512", ("sarathi", {"token_budget": 512})),
    ("fair", ("fair", {})),
    ("fair@min_budget_ms=10@max_token_gap_tpot=inf", ("fair", {"min_budget_ms": 10, "max_token_gap_tpot": float("inf")})),
    ("windserve@interference=1.2", ("windserve", {"interference": 1.2})),
])
def test_policy_spec_parser(spec, want):
    assert parse_policy_spec(spec) == want


def test_policy_spec_parser_rejects_garbage():
    with pytest.raises(ValueError):
        parse_policy_spec("fair@oops")


def test_smg_least_load_score_matches_smg_formula():
    from sglang_fair.sim.routers import SmgLoad, smg_least_load_score
    # (Q + 1024 * (running + dispatched)) / T + 0.15 k / (1 - k)
    assert smg_least_load_score(SmgLoad(3000, 2, 0, 0.5, 1500.0), dispatched_since_poll=1) == pytest.approx(
        (3000 + 1024) / 1500 + 0.15)
    # Q = 0 falls back to 1024 x waiting requests; T = 0 to 2000 tokens/s
    assert smg_least_load_score(SmgLoad(0, 3, 1, 0.0, 0.0)) == pytest.approx((3 * 1024 + 1024) / 2000)


def test_smg_least_load_router_reads_our_loads_and_charges_dispatches():
    r, reps = router("smg_least_load", n=2, load_poll_interval_s=10.0)
    reps[0].add(req(0, prompt=3000))  # replica 0 holds queued prefill: its token load is > 0
    assert r.pick(req(1), 0.0) == 1
    sig = r.poll(0.0)
    assert sig[0].waiting_uncached_tokens > 0 and sig[1].waiting_uncached_tokens == 0
    assert sig[0].running_reqs == 0 and sig[0].gen_throughput > 0
    for i in range(20):  # between polls each dispatch costs 1024 tokens: B fills up until A's score is lower
        k = r.pick(req(2 + i), 0.1)
        r.dispatched(k, req(2 + i))
    assert 0 < r._since_poll[0] < r._since_poll[1]


def test_smg_least_load_overload_protection_leaves_a_long_queue_out():
    r, reps = router("smg_least_load", n=2, load_poll_interval_s=0.0)
    for i in range(8):  # 8 short waiting requests: little token load, but overloaded for smg's default rule
        reps[1].add(req(i, prompt=1))
    reps[0].add(req(99, prompt=4000))
    assert r.pick(req(100), 0.0) == 0
