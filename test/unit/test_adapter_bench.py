"""`sglang-fair plan-bench --adapter` small: the output's shape, and that the steps it times went through the
adapter's planned path (plans made, checked and applied: prefills admitted, decodes parked), not its fallback.
No timing assertions."""

from __future__ import annotations

import orjson
import pytest

from sglang_fair.bench.adapter_bench import PARTS, SNAPSHOT_PARTS, bench_policy, format_table
from sglang_fair.bench.fake_sched import LoadShape
from sglang_fair.cli import main


@pytest.mark.parametrize("policy", ["fair", "sarathi", "slai"])
def test_each_timed_step_is_a_planned_and_applied_step(policy):
    row = bench_policy(policy, LoadShape(running=8, waiting=20), seeds=2, steps=3, cost_model="a100-llama3-8b")
    assert row["steps"] == 6 and (row["running"], row["waiting"]) == (8, 20)
    a = row["applied"]
    assert a["faults"] == {} and a["stock_steps"] == 0
    assert a["planned_steps"] == 2 * (3 + 2)  # warm-up steps included
    assert a["prefill_calls"] > 0 and a["admitted_reqs"] > 0 and a["decode_rows_planned"] > 0
    for p in (*PARTS, *SNAPSHOT_PARTS):
        assert row[f"{p}_median_us"] > 0 and row[f"{p}_p90_us"] >= row[f"{p}_median_us"]
    for p in SNAPSHOT_PARTS:  # parts of the snapshot, step by step, so no larger at any percentile
        assert row[f"{p}_median_us"] <= row["snapshot_median_us"] and row[f"{p}_p90_us"] <= row["snapshot_p90_us"]
    assert row["predicted_iteration_median_ms"] > 0 and row["overhead_share_pct"] > 0
    assert policy in format_table([row])


def test_fair_parks_the_decodes_its_plan_defers():
    row = bench_policy("fair", LoadShape(running=8, waiting=20, tpot_slo_s=5.0), seeds=1, steps=3,
                       cost_model="a100-llama3-8b")
    assert row["applied"]["parked_rows"] > 0  # relaxed TPOT: non-urgent decodes sit out behind prefills


def test_cli_json(capsys):
    assert main(["plan-bench", "--adapter", "--json", "--policies", "fair", "--running", "8", "--waiting", "20",
                 "--repeat", "2", "--snapshots", "1"]) == 0
    rows = orjson.loads(capsys.readouterr().out)
    assert [r["policy"] for r in rows] == ["fair"]
    assert {"snapshot_median_us", "plan_p90_us", "apply_median_us", "snapshot_plan_apply_median_us",
            "snapshot_plan_apply_median_cpu_us", "applied"} <= set(rows[0])


@pytest.mark.parametrize("argv, words", [
    (["--policies", "fair", "nope"], "--policies: nope: unknown policy 'nope'"),
    (["--policies", "fair@nope=1"], "--policies: fair@nope=1: unknown parameter 'nope' for policy 'fair'"),
    (["--adapter", "--policies", "nope"], "--policies: nope: unknown policy 'nope'"),
    (["--adapter", "--policies", "fair@admission=off"], "by name, without parameters"),
    (["--cost-model", "nope"], "--cost-model: unknown cost-model preset 'nope'"),
    (["--repeat", "0"], "--repeat and --snapshots >= 1"),
])
def test_bad_flags_exit_with_a_message_naming_the_flag(argv, words):
    with pytest.raises(SystemExit) as exc:
        main(["plan-bench", *argv])
    assert str(exc.value).startswith("sglang-fair plan-bench: ") and words in str(exc.value)


def test_plan_bench_times_a_policy_spec_with_parameters(capsys):
    spec = "fair@admission=demote-longest@demote_max_wait_ttft=5"
    assert main(["plan-bench", "--json", "--policies", "fair", spec, "--running", "8", "--waiting", "40",
                 "--repeat", "1", "--snapshots", "2"]) == 0
    rows = orjson.loads(capsys.readouterr().out)
    assert [r["policy"] for r in rows] == ["fair", spec] and all(r["median_us"] > 0 for r in rows)
