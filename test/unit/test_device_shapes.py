"""benchmark/device_shapes.py: the prompt-token cap its experiment puts on a policy's plans, and the batch shapes it
records."""

from __future__ import annotations

import pytest
from factories import load_benchmark, make_snapshot, make_trace

from sglang_fair.core.presets import load_preset
from sglang_fair.core.types import Plan
from sglang_fair.policies import make_policy
from sglang_fair.sim.engine import EngineConfig, simulate

A100 = load_preset("a100-llama3-8b")


@pytest.fixture(scope="module")
def ds():
    return load_benchmark("device_shapes")


class Fixed:
    name = "fixed"

    def __init__(self, plan: Plan) -> None:
        self.fixed = plan

    def plan(self, snap) -> Plan:
        return self.fixed


def test_the_cap_cuts_the_last_chunk_and_drops_the_rest(ds):
    plan = Plan(prefill=(("a", 300), ("b", 400), ("c", 200)), decode=("d",), demoted=("e",))
    capped = ds.CappedPolicy(Fixed(plan), 512).plan(make_snapshot())
    assert capped.prefill == (("a", 300), ("b", 212))
    assert (capped.decode, capped.demoted) == (("d",), ("e",))  # decodes and the policy's accounting untouched
    assert ds.CappedPolicy(Fixed(plan), 900).plan(make_snapshot()) is plan  # within the cap: the plan as it was


def test_capped_fair_runs_no_batch_above_the_cap_and_serves_everyone(ds):
    trace = make_trace([(0.1 * i, 3000 if i % 3 == 0 else 400, 20) for i in range(30)])
    rec = ds.Recorder(A100.predict)
    res = simulate(trace, ds.CappedPolicy(make_policy("fair"), 512), A100, EngineConfig(), iteration_time=rec)
    assert all(r.finished for r in res.records)
    assert max(n for n, _, _ in rec.rows) == 512  # the 3000-token prompts are cut to the cap, no batch above it
    plain = ds.Recorder(A100.predict)
    simulate(trace, make_policy("fair"), A100, EngineConfig(), iteration_time=plain)
    assert max(n for n, _, _ in plain.rows) > 512  # uncapped fair runs bigger batches on the same trace


def test_shapes_reports_the_batches_it_ran(ds):
    trace = make_trace([(0.05 * i, 700, 10) for i in range(40)])
    s = ds.shapes(trace, "sarathi-512", 1.0, A100.predict, A100, EngineConfig())
    assert s["prefill_tokens_p90"] <= 512 and s["prefill_batches"] >= 40 * 700 // 512
    assert s["attainment"] == pytest.approx(1.0) and s["demoted"] == 0
    assert s["ms_per_prompt_token"] > 1e3 * A100.per_prefill_token_s  # the fixed cost and decode rows ride on them


def test_the_device_curve_is_priced_at_the_sizes_asked_for(ds):
    dev = ds.device_iteration_time("a100-llama3-8b")
    rows = ds.device_curve(dev, A100, (480, 512))
    assert [r["tokens"] for r in rows] == [480, 512]
    for r in rows:
        assert r["device_ms"] == pytest.approx(dev([(r["tokens"], 0)]) * 1e3)
        assert r["preset_ms"] == pytest.approx(A100.predict([(r["tokens"], 0)]) * 1e3)
