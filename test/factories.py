"""Small factories for policy tests: a request or a snapshot in one line, with sensible defaults.

    snap = make_snapshot(now=1.0, running=[make_running("a", output_tokens=3)], waiting=[make_req("b")])

Defaults: TTFT SLO 1 s, TPOT SLO 100 ms, KV capacity 1M tokens with `kv_used_tokens` = the KV the requests hold,
and the cost model `COST` (5 ms per iteration + 0.1 ms per prefill token + 0.2 ms per decode row).
"""

from __future__ import annotations

from typing import Iterable

from sglang_fair.core.cost_model import CostModel
from sglang_fair.core.types import ReqView, Snapshot

COST = CostModel(base_s=0.005, per_prefill_token_s=1e-4, per_decode_req_s=2e-4)
"""Linear and simple enough to compute worked examples by hand."""

MIXED_COST = CostModel(base_s=0.010, per_prefill_token_s=7.7e-5, per_decode_req_s=5e-5, per_mixed_decode_req_s=0.004)
"""A100-like fixed and per-token costs where a decode row in a prefill forward costs 4 ms more (the mixed term of
SGLang's CPU backend, scaled): a decode step 10.05 ms; more than a 38-token prompt's 2.9 ms of prefill."""


def make_req(rid: str = "r0", *, arrival_s: float = 0.0, prompt_tokens: int = 100, ttft_slo_s: float = 1.0,
             tpot_slo_s: float = 0.1, prefilled_tokens: int = 0, output_tokens: int = 0, max_new_tokens: int = 128,
             last_token_s: float | None = None, strict: bool = False,
             first_token_s: float | None = None) -> ReqView:
    """A waiting request by default; pass `prefilled_tokens` for a partial prefill."""
    return ReqView(rid=rid, arrival_s=arrival_s, prompt_tokens=prompt_tokens, ttft_slo_s=ttft_slo_s,
                   tpot_slo_s=tpot_slo_s, prefilled_tokens=prefilled_tokens, output_tokens=output_tokens,
                   max_new_tokens=max_new_tokens, last_token_s=last_token_s, strict=strict,
                   first_token_s=first_token_s)


def make_running(rid: str = "d0", *, arrival_s: float = 0.0, prompt_tokens: int = 100, output_tokens: int = 1,
                 ttft_slo_s: float = 1.0, tpot_slo_s: float = 0.1, last_token_s: float | None = None,
                 **kw) -> ReqView:
    """A decoding request: prompt fully prefilled, `output_tokens` >= 1 produced. `last_token_s` defaults to the
    envelope deadline of its latest token (i.e. exactly on schedule)."""
    if last_token_s is None:
        last_token_s = arrival_s + ttft_slo_s + (output_tokens - 1) * tpot_slo_s
    return make_req(rid, arrival_s=arrival_s, prompt_tokens=prompt_tokens, prefilled_tokens=prompt_tokens,
                    output_tokens=output_tokens, ttft_slo_s=ttft_slo_s, tpot_slo_s=tpot_slo_s,
                    last_token_s=last_token_s, **kw)


def make_running_with_slack(rid: str, slack_s: float, *, now: float, tpot_slo_s: float = 0.1,
                            output_tokens: int = 5, ttft_slo_s: float = 1.0, last_token_s: float | None = None,
                            **kw) -> ReqView:
    """A decoding request whose next token's envelope deadline (arrival + TTFT + j * TPOT) is `now + slack_s`, with
    no first-token time (so every anchor gives that slack). `last_token_s` defaults to the envelope deadline of its
    latest token, or `now` if that lies in the future."""
    arrival = now + slack_s - ttft_slo_s - output_tokens * tpot_slo_s
    if last_token_s is None:
        last_token_s = min(now, arrival + ttft_slo_s + (output_tokens - 1) * tpot_slo_s)
    return make_running(rid, arrival_s=arrival, output_tokens=output_tokens, ttft_slo_s=ttft_slo_s,
                        tpot_slo_s=tpot_slo_s, last_token_s=last_token_s, **kw)


def kv_held(reqs: Iterable[ReqView]) -> int:
    return sum(r.context_tokens for r in reqs)


def make_snapshot(*, now: float = 0.0, running: Iterable[ReqView] = (), prefilling: Iterable[ReqView] = (),
                  waiting: Iterable[ReqView] = (), kv_capacity_tokens: int = 1_000_000,
                  kv_used_tokens: int | None = None, cost: CostModel = COST, recent_iter_s: float = 0.0) -> Snapshot:
    """`kv_used_tokens` defaults to what running and prefilling requests hold."""
    running, prefilling, waiting = tuple(running), tuple(prefilling), tuple(waiting)
    if kv_used_tokens is None:
        kv_used_tokens = kv_held(running) + kv_held(prefilling)
    return Snapshot(now=now, running=running, prefilling=prefilling, waiting=waiting,
                    kv_capacity_tokens=kv_capacity_tokens, kv_used_tokens=kv_used_tokens, cost=cost,
                    recent_iter_s=recent_iter_s)


def kv_after(snap: Snapshot, plan) -> int:
    """KV tokens in use once `plan` has run: used - freed by preemption + prefill chunks + one per decode."""
    by_rid = {r.rid: r for r in (*snap.running, *snap.prefilling)}
    freed = sum(by_rid[rid].context_tokens for rid in plan.preempt)
    return snap.kv_used_tokens - freed + plan.prefill_tokens + len(plan.decode)


def batch_of(snap: Snapshot, plan) -> tuple[list[tuple[int, int]], list[int]]:
    """The plan's batch in CostModel.predict's terms: ([(chunk, prefix)], [decode context])."""
    by_rid = {r.rid: r for r in (*snap.running, *snap.prefilling, *snap.waiting)}
    return ([(c, by_rid[rid].prefilled_tokens) for rid, c in plan.prefill],
            [by_rid[rid].context_tokens for rid in plan.decode])


def make_trace(rows, name: str = "tiny"):
    """A simulator Trace from [(arrival_s, prompt_tokens, output_tokens), ...] (arrivals as given, not re-based)."""
    import numpy as np

    from sglang_fair.sim.traces import Trace
    a, p, o = zip(*rows) if rows else ((), (), ())
    return Trace(name, np.asarray(a, dtype=np.float64), np.asarray(p, dtype=np.int64), np.asarray(o, dtype=np.int64))


def load_benchmark(name: str):
    """`benchmark/<name>.py` as a module (the benchmark scripts are not a package)."""
    import importlib.util
    from pathlib import Path

    script = Path(__file__).resolve().parents[1] / "benchmark" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(name, script)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod
