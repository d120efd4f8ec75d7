"""The adapter's seams with fake SGLang objects: which rows a step parks (deferral.rows_to_defer), the Prometheus
gauges' own update period, and the policy a runtime config builds (chaos wrapped outside the adapter)."""

from __future__ import annotations

import collections
from types import SimpleNamespace

import pytest

from sglang_fair.engine import deferral
from sglang_fair.policies.chaos import ChaosPolicy, make_configured_policy


class Row:
    """A running request as the deferral reads it (hashable by identity, like SGLang's Req)."""

    def __init__(self, rid: str, done: bool, logprob: bool) -> None:
        self.rid, self.done, self.return_logprob, self.beam_group = rid, done, logprob, None

    def finished(self) -> bool:
        return self.done


def row(rid, *, done=False, logprob=False):
    return Row(rid, done, logprob)


def batch(rows, *, kv_ok=True, masks=None):
    return SimpleNamespace(reqs=list(rows), sampling_info=SimpleNamespace(return_sampling_masks=masks),
                           spec_info=None, check_decode_mem=lambda: kv_ok)


def defer(b, planned, *, has_prefill=True, finishing=(), lora=False):
    blocked = collections.Counter()
    rows, wanted = deferral.rows_to_defer(b, set(planned), has_prefill=has_prefill,
                                          finishing=lambda _: list(finishing), blocked=blocked, lora=lora)
    return [r.rid for r in rows], wanted, dict(blocked)


def test_rows_left_out_of_the_plan_are_parked_unless_the_mechanism_cannot():
    a, b_, c, d = row("a"), row("b"), row("c", logprob=True), row("d")
    assert defer(batch([a, b_, c, d]), {"a"}) == (["b", "d"], 3, {"row_not_deferrable": 1})
    assert defer(batch([a, b_, d]), {"a"}, finishing=[b_]) == (["d"], 2, {"row_not_deferrable": 1})
    assert defer(batch([a, b_]), {"a", "b"}) == ([], 0, {})


def test_whole_step_blockers_and_one_row_always_runs_without_prefill():
    rows = [row("a"), row("b")]
    assert defer(batch(rows, kv_ok=False), set()) == ([], 2, {"kv_pressure": 1})
    assert defer(batch(rows, masks=[True]), set()) == ([], 2, {"sampling_masks": 1})
    assert defer(batch(rows), set(), has_prefill=False) == (["b"], 2, {})
    assert defer(batch(rows), set(), has_prefill=True) == (["a", "b"], 2, {})


def test_a_scheduler_serving_lora_adapters_parks_no_row():
    """SGLang admits a request only if its adapter fits --max-loras-per-batch beside the running batch's adapters;
    parked rows are not in the running batch, so they could rejoin past the limit (an assertion in the forward's
    adapter loading). With LoRA on, every row stays in the batch and the step is counted as blocked."""
    rows = [row("a"), row("b"), row("c")]
    assert defer(batch(rows), {"a"}, lora=True) == ([], 2, {"lora": 1})
    assert defer(batch(rows), {"a"}) == (["b", "c"], 2, {})


def test_gauges_call_the_status_at_most_once_per_period(monkeypatch):
    pytest.importorskip("prometheus_client")
    from sglang_fair.engine import gauges

    g = gauges.Gauges.__new__(gauges.Gauges)  # no registry side effects: only the period logic is under test
    g._last = 0.0
    seen = []
    monkeypatch.setattr(g, "update", seen.append, raising=False)
    clock = iter([100.0, 100.1, 100.0 + gauges.PERIOD_S + 0.01])
    monkeypatch.setattr(gauges.time, "monotonic", lambda: next(clock))
    calls = []

    def status():
        calls.append(1)
        return {"n": len(calls)}

    for _ in range(3):
        g.maybe_update(status)
    assert seen == [{"n": 1}, {"n": 2}] and len(calls) == 2  # the middle call was within the period


def test_the_configured_policy_is_wrapped_in_chaos_only_when_asked():
    plain = make_configured_policy("sarathi", {"token_budget": 256})
    assert plain.name == "sarathi" and not isinstance(plain, ChaosPolicy)
    wrapped = make_configured_policy("fair", {"chaos": {"every_n_steps": 2}})
    assert isinstance(wrapped, ChaosPolicy)
    with pytest.raises(ValueError):
        make_configured_policy("fair", {"chaos": {"every_n_steps": 0}})
