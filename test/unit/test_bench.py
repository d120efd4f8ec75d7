"""`sglang-fair bench` pieces that need no server: workload scaling, bench_serving output -> records, the budgeted
capacity search, the mixed-batch cost term in fair's plans, the report built from a results dict, CLI errors."""

from __future__ import annotations

import numpy as np
import pytest
from factories import COST, make_running, make_snapshot, make_req

from sglang_fair.bench.client import to_records
from sglang_fair.bench.report import markdown, quick_summary
from sglang_fair.bench.search import budgeted_capacity, live_capacities
from sglang_fair.bench.workload import Workload
from sglang_fair.core.cost_model import CostModel
from sglang_fair.core.metrics import summarize
from sglang_fair.policies.fair import FairPolicy
from sglang_fair.sim.traces import Trace, load_mooncake


def test_workload_scales_lengths_and_writes_mooncake(tmp_path):
    w = Workload("azure-code", 10, prompt_scale=0.1, output_scale=0.5, max_prompt_tokens=300, max_output_tokens=8)
    path = tmp_path / "t.jsonl"
    trace = w.write(path)
    full = __import__("sglang_fair.sim.traces", fromlist=["load_trace"]).load_trace("azure-code").head(10)
    assert len(trace) == 10 and trace.arrival_s[0] == 0.0
    np.testing.assert_allclose(trace.arrival_s, full.arrival_s - full.arrival_s[0])
    assert np.all(trace.prompt_tokens == np.clip(np.rint(full.prompt_tokens * 0.1), 1, 300))
    assert np.all(trace.output_tokens == np.clip(np.rint(full.output_tokens * 0.5), 2, 8))
    back = load_mooncake(path)
    assert np.all(back.prompt_tokens == trace.prompt_tokens)
    with pytest.raises(ValueError, match="only"):
        Workload("azure-code", 10**6).build()
    with pytest.raises(ValueError, match="prompt_scale"):
        Workload("azure-code", 5, prompt_scale=0)


def test_bench_serving_details_become_records_on_the_scaled_clock():
    trace = Trace("t", np.array([0.0, 1.0, 2.0]), np.array([10, 10, 10]), np.array([3, 3, 3]))
    res = {"ttfts": [0.5, 0.0, 0.2], "itls": [[0.1, 0.1], [], [0.3, 0.3]], "output_lens": [3, 0, 3],
           "errors": ["", "HTTP 500", ""]}
    recs = to_records(res, trace, 2.0, ttft_slo_s=1.0, tpot_slo_s=0.2)
    assert [r.arrival_s for r in recs] == [0.0, 0.5, 1.0]  # rate scale 2 halves the gaps
    assert recs[0].first_token_s == pytest.approx(0.5) and recs[0].last_token_s == pytest.approx(0.7)
    assert recs[1].first_token_s is None and not recs[1].finished  # the failed request counts, as a miss
    s = summarize(recs)
    assert s.n == 3 and s.finished == 2 and s.attainment == pytest.approx(1 / 3)  # r2: TPOT 0.3 > 0.2
    with pytest.raises(RuntimeError, match="returned 1 requests"):
        to_records({"ttfts": [0.1], "itls": [[]], "errors": [""]}, trace, 1.0, ttft_slo_s=1, tpot_slo_s=1)


def test_budgeted_capacity_brackets_then_bisects_within_the_probe_budget():
    probes = []

    def ev(x):
        probes.append(x)
        return x

    cap, fail = budgeted_capacity(ev, lambda x: x <= 1.3, 1.0, max_probes=6, rel_tol=0.05)
    assert probes[:2] == [1.0, 2.0] and len(probes) == 6
    assert 1.0 <= cap <= 1.3 < fail <= 2.0
    probes.clear()
    cap, fail = budgeted_capacity(ev, lambda x: x <= 0.3, 1.0, max_probes=3)
    assert probes == [1.0, 0.5, 0.25] and cap == 0.25 and fail == 0.5
    assert budgeted_capacity(ev, lambda x: False, 1.0, max_probes=2) == (0.0, 0.5)


def test_a_small_step_started_near_the_capacity_brackets_it_in_two_probes():
    probes = []

    def ev(x):
        probes.append(x)
        return x

    step = 2 ** 0.25
    cap, fail = budgeted_capacity(ev, lambda x: x <= 1.25, 1.189, max_probes=5, rel_tol=0.03, step=step)
    assert probes[:2] == [1.189, pytest.approx(1.189 * step)]  # pass, then one step up fails: bracketed
    assert 1.189 <= cap <= 1.25 < fail and fail / cap <= 1.03 and len(probes) == 5
    probes.clear()
    cap, fail = budgeted_capacity(ev, lambda x: x <= 0.9, 1.0, max_probes=2, step=step)
    assert probes == [1.0, pytest.approx(1.0 / step)] and fail == 1.0 and cap == pytest.approx(1.0 / step, rel=1e-3)
    for bad in (1.0, 0.5, float("inf"), float("nan")):
        with pytest.raises(ValueError, match="step must be"):
            budgeted_capacity(ev, lambda x: True, 1.0, max_probes=2, step=bad)


def test_live_capacities_reads_the_attainment_capacity_off_the_same_probes():
    from types import SimpleNamespace
    calls = []

    def ev(x):  # tail passes up to 1.0; attainment holds up to 2.0
        calls.append(x)
        return SimpleNamespace(n=10, finished=10, p99_ttft_s=0.5 if x <= 1.0 else 5.0, p99_tpot_s=0.1, rejected=0,
                               attainment=1.0 if x <= 2.0 else 0.5)

    res = live_capacities(ev, 1.0, 0.2, 1.0, max_probes=3)
    assert res["capacity"] == 1.0 and res["first_failing_scale"] == 1.414
    assert res["capacity_attainment_lower_bound"] == 2.0 and len(calls) == len(set(calls)) == 3


def test_fair_charges_the_mixed_term_and_runs_prefill_alone_when_mixing_is_slow():
    # four decodes just got their first token (slack = one TPOT, 100 ms), a 400-token prompt waits
    running = [make_running(f"d{i}", prompt_tokens=100, output_tokens=1, first_token_s=1.0) for i in range(4)]
    waiting = [make_req("p", prompt_tokens=400, arrival_s=0.9)]
    plan = FairPolicy().plan(make_snapshot(now=1.0, running=running, waiting=waiting))
    assert plan.prefill and len(plan.decode) == 4  # mixing costs nothing extra: the decodes ride along
    # a decode row costs 20 ms more in a mixed forward: mixing would leave no time for prefill
    slow = CostModel(**{**COST.to_dict(), "per_mixed_decode_req_s": 0.02})
    assert slow.predict([(10, 0)], [5, 5]) == pytest.approx(COST.predict([(10, 0)], [5, 5]) + 0.04)
    plan = FairPolicy().plan(make_snapshot(now=1.0, running=running, waiting=waiting, cost=slow))
    assert plan.prefill and not plan.decode and "prefill-only" in plan.note  # the decodes sit this step out
    t_dec = slow.base_s + 4 * slow.decode_s(101)
    assert plan.predicted_s <= 0.1 - t_dec + 1e-9  # ... and the decode step after it still meets their deadline
    assert plan.predicted_s == pytest.approx(slow.predict([(c, 0) for _, c in plan.prefill], ()))


def _results():
    probes = {"0.5": {"p99_ttft_s": 0.4, "p99_tpot_s": 0.1, "attainment": 1.0},
              "1": {"p99_ttft_s": 3.0, "p99_tpot_s": 0.3, "attainment": 0.5}}
    one = {"azure-code": {"capacity": 0.5, "capacity_rps": 0.4, "capacity_attainment_lower_bound": 0.5,
                          "first_failing_scale": 1.0, "probes": probes}}
    fair = {"azure-code": {**one["azure-code"], "capacity": 1.0, "capacity_rps": 0.8, "probes": {
        **probes, "1": {"p99_ttft_s": 1.0, "p99_tpot_s": 0.15, "attainment": 0.95}}}}
    return {"config": {"mode": "quick", "workloads": [Workload("azure-code", 20).to_json()], "ttft_slo_ms": 2000.0,
                       "tpot_slo_ms": 200.0, "max_probes": 3, "rel_tol": 0.3, "probe_drain_s": 15.0},
            "machine": {"cores": 2, "cpu": "x", "arch": "x86_64"}, "date": "2026-11-25",
            "versions": {"sglang": "0.5.23", "sglang_router": "0.3.2"}, "wall_s": 60.0,
            "workloads": {"azure-code": {"rate_rps": 0.8, "prompt_tokens_sent_mean": 300.0,
                                         "output_tokens_mean": 20.0}},
            "single": {"fair": fair, "stock": one}, "cluster": {}}


def test_quick_summary_and_markdown_come_from_the_results():
    s = quick_summary(_results())
    assert s["capacity_ratio_fair_vs_stock"] == 2.0
    assert s["policies"]["fair"]["p99_ttft_ms"] == pytest.approx(1000.0)
    assert s["policies"]["stock"]["p99_tpot_ms"] == pytest.approx(100.0)
    md = markdown(_results(), "sglang-fair bench --quick", "img/live")
    assert "| fair | 1 | 0.80 | 2.00x | 1000 | 150 |" in md
    assert "| 400 / 100 |" in md  # fair's P99 TTFT / TPOT at stock's capacity (scale 0.5)
    assert "live-azure-code.png" in md and "2026-11-25" in md


def test_cli_rejects_unknown_policies_and_bad_slos():
    from sglang_fair.cli import main
    with pytest.raises(SystemExit, match="--policies"):
        main(["bench", "--policies", "fair,bogus"])
    with pytest.raises(SystemExit, match="--tpot-slo-ms"):
        main(["bench", "--tpot-slo-ms", "0"])
    for flag, value in (("--step", "1"), ("--start-scale", "0"), ("--max-probes", "0"), ("--rel-tol", "-0.1"),
                        ("--step", "nan")):
        with pytest.raises(SystemExit, match=flag):
            main(["bench", flag, value])
