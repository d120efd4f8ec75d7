"""Properties of every policy over random snapshots (hypothesis): valid plans, KV never exceeded, determinism; for
`fair` the time budget, its formula and urgent decodes never deferred; `sarathi` never defers; token caps."""

from __future__ import annotations

import math
from dataclasses import replace

import pytest
from factories import batch_of, kv_after, kv_held, make_req, make_running, make_snapshot
from hypothesis import HealthCheck, assume, example, given, settings
from hypothesis import strategies as st

from sglang_fair.core.cost_model import CostModel
from sglang_fair.core.plan_check import plan_problem
from sglang_fair.policies import make_policy, policy_names
from sglang_fair.core.types import ReqView, Snapshot
from sglang_fair.policies.common import edf_key, lazy_edf
from sglang_fair.policies.fair import FairParams, FairPolicy

NOW = 1000.0
SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])

costs = st.builds(CostModel, base_s=st.floats(0.0, 0.05), per_prefill_token_s=st.floats(0.0, 1e-3),
                  per_attn_token2_s=st.sampled_from([0.0, 1e-9, 1e-7]), per_decode_req_s=st.floats(0.0, 0.01),
                  per_context_token_s=st.sampled_from([0.0, 1e-7, 1e-5]))
slo = st.tuples(st.sampled_from([0.3, 1.0, 2.0]), st.sampled_from([0.02, 0.1, 0.5]))


@st.composite
def running_req(draw, i):
    ttft, tpot = draw(slo)
    out = draw(st.integers(1, 300))
    slack = draw(st.floats(-1.0, 3.0))
    arrival = NOW + slack - ttft - out * tpot
    prompt = draw(st.integers(1, 3000))
    last = draw(st.one_of(st.none(), st.floats(NOW - 3.0, NOW)))
    first = draw(st.one_of(st.none(), st.floats(NOW - 30.0, NOW)))
    return ReqView(f"r{i}", arrival, prompt, ttft, tpot, prefilled_tokens=prompt, output_tokens=out,
                   max_new_tokens=out + draw(st.integers(0, 500)), last_token_s=last, strict=draw(st.booleans()),
                   first_token_s=first)


@st.composite
def queued_req(draw, i, partial):
    ttft, tpot = draw(slo)
    prompt = draw(st.integers(1, 5000))
    done = draw(st.integers(1, prompt - 1)) if partial and prompt > 1 else 0
    return ReqView(f"{'p' if partial else 'w'}{i}", NOW - draw(st.floats(0.0, 3.0)), prompt, ttft, tpot,
                   prefilled_tokens=done, max_new_tokens=draw(st.integers(0, 1000)), strict=draw(st.booleans()))


@st.composite
def snapshots(draw):
    n_run, n_pre, n_wait = draw(st.integers(0, 16)), draw(st.integers(0, 3)), draw(st.integers(0, 16))
    running = tuple(draw(running_req(i)) for i in range(n_run))
    prefilling = tuple(draw(queued_req(i, True)) for i in range(n_pre))
    waiting = tuple(sorted((draw(queued_req(i, False)) for i in range(n_wait)), key=lambda r: r.arrival_s))
    used = kv_held(running) + kv_held(prefilling) + draw(st.integers(0, 100))
    spare = draw(st.one_of(st.integers(0, 30), st.integers(0, 20_000), st.just(10**7)))
    return Snapshot(now=NOW, running=running, prefilling=prefilling, waiting=waiting, kv_capacity_tokens=used + spare,
                    kv_used_tokens=used, cost=draw(costs), recent_iter_s=draw(st.sampled_from([0.0, 0.01, 0.05])))


def assert_valid(snap: Snapshot, plan) -> None:
    """The engines' contract (core.plan_check; an idle plan is allowed, as in the simulator), plus: the plan fits
    the KV pool and its predicted time is the cost model's for exactly that batch."""
    assert plan_problem(plan, snap, allow_empty=True) is None
    assert kv_after(snap, plan) <= snap.kv_capacity_tokens
    assert plan.predicted_s == pytest.approx(snap.cost.predict(*batch_of(snap, plan)), rel=1e-9, abs=1e-12)


@pytest.mark.parametrize("name", policy_names())
@SETTINGS
@given(snap=snapshots())
def test_plans_are_valid_fit_kv_and_are_deterministic(name, snap):
    plan = make_policy(name).plan(snap)
    assert_valid(snap, plan)
    assert make_policy(name).plan(snap) == plan


@SETTINGS
@given(snap=snapshots(), budget=st.sampled_from([512, 2048]))
def test_sarathi_never_defers_and_keeps_its_token_budget(snap, budget):
    plan = make_policy("sarathi", token_budget=budget).plan(snap)
    assert plan.deferred(snap) == ()
    assert plan.prefill == () or len(plan.decode) + plan.prefill_tokens <= budget


@SETTINGS
@given(snap=snapshots())
def test_slai_caps(snap):
    plan = make_policy("slai").plan(snap)
    assert len(plan.decode) <= 128
    assert len(plan.decode) + plan.prefill_tokens <= 512


def decode_slack(r: ReqView, now: float, anchor: str, keep: float = 1.0) -> float:
    """Slack of the next token: from the first token when known (anchor "first_token"), else the envelope; the
    envelope's TPOT is the SLO x `keep` (1 - tpot_margin)."""
    if anchor == "first_token" and r.first_token_s is not None:
        return r.first_token_s + r.output_tokens * r.tpot_slo_s * keep - now
    return r.arrival_s + r.ttft_slo_s + r.output_tokens * r.tpot_slo_s * keep - now


def past_saving(snap: Snapshot, p: FairParams) -> list[ReqView]:
    """The decodes past saving: behind their envelope, and tpot + (slack - tpot) / tokens left below one decode of
    the least-slack request."""
    keep = 1.0 - p.tpot_margin
    slack = {r.rid: decode_slack(r, snap.now, p.decode_anchor, keep) for r in snap.running}
    floor = snap.cost.predict((), [min(snap.running, key=lambda r: slack[r.rid]).context_tokens])
    return [r for r in snap.running if slack[r.rid] < (tp := r.tpot_slo_s * keep)
            and (m := r.max_new_tokens - r.output_tokens) >= 1 and tp + (slack[r.rid] - tp) / m < floor]


def fair_gap_slacks(snap: Snapshot, p: FairParams, lost_to_gap: bool = False) -> dict[str, float]:
    """Each running decode's gap slack as fair judges it (`gap_slack`); with `lost_to_gap` (fair's second pass) a
    decode past saving whose gap bound is shorter than a step that decodes every decode past saving and prefills
    min_prefill_chunk_tokens (after the longest partial prefill's prefix) gets at least that step."""
    gap = {r.rid: gap_slack(r, snap.now, p) for r in snap.running}
    if lost_to_gap and (lost := past_saving(snap, p)):
        prefix = max([r.prefilled_tokens for r in snap.prefilling], default=0)
        step = snap.cost.predict([(p.min_prefill_chunk_tokens, prefix)], [r.context_tokens for r in lost]) + 1e-9
        # + 1 ns: fair's guard against float rounding (FairPolicy._chunk_step_s); without it the budget differs by 1 ns
        # where the step is the budget (a cost of base_s alone)
        for r in lost:
            if p.max_token_gap_tpot * r.tpot_slo_s * (1.0 - p.tpot_margin) < step:
                gap[r.rid] = max(gap[r.rid], step)
    return gap


def fair_slacks(snap: Snapshot, p: FairParams, lost_to_gap: bool = False) -> dict[str, float]:
    """Each running decode's slack as fair judges it: its envelope's (`decode_slack`); with `lost_to_gap` (fair's
    second pass, `lost_decode="gap"`) a decode past saving (`past_saving`) gets its gap slack (`fair_gap_slacks`)
    instead where that is larger."""
    keep = 1.0 - p.tpot_margin
    slack = {r.rid: decode_slack(r, snap.now, p.decode_anchor, keep) for r in snap.running}
    if lost_to_gap:
        gap = fair_gap_slacks(snap, p, True)
        for r in past_saving(snap, p):
            slack[r.rid] = max(slack[r.rid], gap[r.rid])
    return slack


def fair_lost_to_gap(snap: Snapshot, p: FairParams) -> bool:
    """Whether fair planned its second pass: the plan by the envelopes carries no prefill (or is over budget: a
    decode-only step with the aged lane's share) while prompts wait and KV has room beyond one token per decode, and
    some decode is past saving (with the gap bound on)."""
    if (p.lost_decode != "gap" or not snap.running or not (snap.waiting or snap.prefilling)
            or snap.kv_free_tokens <= len(snap.running) or p.max_token_gap_tpot == math.inf):
        return False
    first = FairPolicy(replace(p, lost_decode="envelope")).plan(snap)
    if first.prefill and first.predicted_s <= first.budget_s * (1 + 1e-9):
        return False
    return bool(past_saving(snap, p))


def fair_budget_oracle(snap: Snapshot, p: FairParams, lost_to_gap: bool = False) -> float:
    """The budget rule written out independently: max(min slack, min tpot), lowered (recover_tpot) to the smallest
    uniform iteration length that lands a behind decode's last token on time, tpot + (slack - tpot) / tokens left,
    where that is not below one decode of the least-slack request, and (gap_caps_budget) to the least time before a
    decode's token gap passes its bound; clamped to [min, max] budget, and never below that decode. The slacks are
    `fair_slacks` (`lost_to_gap`), the recovery's and the floor's the envelopes'."""
    keep = 1.0 - p.tpot_margin
    slack = fair_slacks(snap, p)
    least = min(snap.running, key=lambda r: slack[r.rid])
    floor = snap.cost.predict((), [least.context_tokens])
    b = max(min(fair_slacks(snap, p, lost_to_gap).values()), min(r.tpot_slo_s * keep for r in snap.running))
    if p.recover_tpot:
        lengths = [r.tpot_slo_s * keep + (slack[r.rid] - r.tpot_slo_s * keep) / (r.max_new_tokens - r.output_tokens)
                   for r in snap.running if slack[r.rid] < r.tpot_slo_s * keep and r.max_new_tokens > r.output_tokens]
        b = min([b, *(x for x in lengths if x >= floor)])
    if p.gap_caps_budget and p.max_token_gap_tpot < math.inf:
        b = min([b, *fair_gap_slacks(snap, p, lost_to_gap).values()])
    b = min(max(b, p.min_budget_ms / 1e3), p.max_budget_ms / 1e3)
    return max(b, floor)


def gap_slack(r, now: float, p: FairParams) -> float:
    """Time left before the gap since r's last token passes max_token_gap_tpot x its TPOT SLO (x 1 - tpot_margin)."""
    tpot = r.tpot_slo_s * (1.0 - p.tpot_margin)
    return math.inf if r.last_token_s is None else r.last_token_s + p.max_token_gap_tpot * tpot - now


@SETTINGS
@given(snap=snapshots(), gap=st.sampled_from([2.0, 5.0, math.inf]), anchor=st.sampled_from(["first_token", "arrival"]),
       recover=st.booleans(), gap_caps=st.booleans(), margin=st.sampled_from([0.0, 0.02, 0.1]))
@example(  # found by CI: a lost decode's gap floor is the whole budget (a cost of base_s alone), 1 ns apart
    snap=make_snapshot(now=NOW, running=[make_running("r0", arrival_s=999.68, prompt_tokens=1, ttft_slo_s=0.3,
                                                      tpot_slo_s=0.02, max_new_tokens=2, last_token_s=997.0)],
                       waiting=[make_req("w0", arrival_s=NOW, prompt_tokens=1, ttft_slo_s=0.3, tpot_slo_s=0.02,
                                         max_new_tokens=0)],
                       kv_capacity_tokens=10_000_002, kv_used_tokens=2,
                       cost=CostModel(base_s=0.046875, per_prefill_token_s=0.0)),
    gap=2.0, anchor="first_token", recover=False, gap_caps=False, margin=0.0)
def test_fair_budget_urgency_and_decode_only(snap, gap, anchor, recover, gap_caps, margin):
    p = FairParams(max_token_gap_tpot=gap, decode_anchor=anchor, recover_tpot=recover, gap_caps_budget=gap_caps,
                   tpot_margin=margin)
    plan = FairPolicy(p).plan(snap)
    tol = 1e-9 * max(1.0, plan.budget_s)
    keep = 1.0 - margin
    if snap.running:
        second = fair_lost_to_gap(snap, p)
        slack, gap_s = fair_slacks(snap, p, second), fair_gap_slacks(snap, p, second)
        assert plan.budget_s == pytest.approx(fair_budget_oracle(snap, p, second), rel=1e-12)
        thr = plan.budget_s + min(r.tpot_slo_s * keep for r in snap.running)
        urgent = {r.rid for r in snap.running if slack[r.rid] < thr}
        if gap_caps:  # one TPOT before the gap bound too
            urgent |= {r.rid for r in snap.running
                       if gap_s[r.rid] < plan.budget_s + r.tpot_slo_s * keep - tol}
        assert not urgent & set(plan.deferred(snap)), "an urgent decode was deferred"
        if urgent & set(plan.preempt):  # preempting an urgent decode is only allowed when KV cannot hold them
            assert snap.kv_free_tokens < len(urgent)
        # a deferred decode keeps at least one TPOT of slack after this iteration (if the model is right), and
        # with the gap bound at least one TPOT before its gap passes it
        for rid in plan.deferred(snap):
            r = next(q for q in snap.running if q.rid == rid)
            assert slack[rid] - plan.budget_s >= min(q.tpot_slo_s * keep for q in snap.running) - tol
            if gap_caps:
                assert gap_s[rid] - plan.budget_s >= r.tpot_slo_s * keep - tol
    if plan.predicted_s > plan.budget_s + tol:  # decode-only, but for the aged lane's share (`aged_share`), which
        # may go to the one partial prefill where the lane's head cannot be cut beside it
        assert not plan.prefill or plan.aged, "over budget with prefill in the plan and no aged lane"
        assert {rid for rid, _ in plan.prefill} <= set(plan.aged) | {r.rid for r in snap.prefilling}
        urgent_only = snap.cost.predict((), [r.context_tokens for r in snap.running if r.rid in set(plan.decode)])
        assert urgent_only > plan.budget_s


@pytest.mark.parametrize("admission", ["demote-longest", "off"])
@SETTINGS
@given(snap=snapshots())
def test_fair_makes_progress_whenever_there_is_work(admission, snap):
    """Liveness: with running decodes, the plan is not empty unless KV is full and no decode is urgent yet (then
    waiting costs nothing: the least-slack decode turns urgent, and preempts, before its deadline); with only queued
    prompts the EDF head gets a chunk whenever its prompt fits in free KV - the head of the requests the plan did not
    demote (admission, the default), or of all of them when it demoted every one; unless that head is in the aged
    lane (then on-time work goes first, and the plan prefills something)."""
    plan = make_policy("fair", admission=admission).plan(snap)
    if admission == "off":
        assert not plan.demoted
    if snap.running:
        keep = 1.0 - FairParams().tpot_margin
        thr = plan.budget_s + min(r.tpot_slo_s * keep for r in snap.running)
        if snap.kv_free_tokens >= 1 or any(decode_slack(r, snap.now, "first_token", keep) < thr
                                           for r in snap.running):
            assert plan.decode or plan.preempt or plan.prefill
    elif snap.prefilling or snap.waiting:
        pending, demoted = (*snap.prefilling, *snap.waiting), set(plan.demoted)
        kept = [r for r in pending if r.rid not in demoted]
        head = min(kept or pending, key=edf_key)
        partial = snap.prefilling
        # enough KV for the head's prompt, every partial prompt, and all their outputs (a generous reserve)
        need = (head.remaining_prompt_tokens + sum(r.remaining_prompt_tokens for r in partial)
                + head.max_new_tokens + sum(r.max_new_tokens for r in partial))
        if snap.kv_free_tokens >= need:
            assert plan.prefill
            if head.rid not in plan.aged:  # an aged head rides in the aged lane, after on-time work (which may take
                first = plan.prefill[0][0]  # the KV it needs: the lane shares time, not KV)
                if snap.one_partial_prefill and partial:  # a partial prefill goes ahead of a head it keeps from
                    assert first == head.rid or first in {r.rid for r in partial}  # being cut (one partial prefill)
                else:
                    assert first == head.rid


@pytest.mark.parametrize("name", policy_names())
@SETTINGS
@given(snap=snapshots())
def test_without_deferral_a_plan_decodes_every_running_request_or_none(name, snap):
    """Where the engine cannot defer (Snapshot.deferral_allowed false: SGLang serving LoRA), a forward that decodes
    decodes every running row, so a plan that decodes lists every running request it does not preempt; a plan may
    still leave them all out (a prefill-only step)."""
    snap = replace(snap, deferral_allowed=False)
    plan = make_policy(name).plan(snap)
    assert_valid(snap, plan)
    if plan.decode:
        assert set(plan.decode) | set(plan.preempt) >= {r.rid for r in snap.running}


@SETTINGS
@given(snap=snapshots())
def test_fair_takes_prefills_in_edf_order(snap):
    """EDF among the requests that could start this step, which the policy counts at min_prefill_chunk_tokens each
    (its window): prompts shorter than that can start in larger numbers, and beyond the window they keep arrival
    order (ties by list order, not by rid), so they are left out here."""
    p = FairParams(prefill_window_reqs=0, admission="off")  # with admission on, demoted requests go last
    assume(all(r.remaining_prompt_tokens >= p.min_prefill_chunk_tokens for r in (*snap.prefilling, *snap.waiting)))
    plan = FairPolicy(p).plan(snap)
    by_rid = {r.rid: r for r in (*snap.prefilling, *snap.waiting)}
    partials = {r.rid for r in snap.prefilling} if snap.one_partial_prefill else set()  # may go ahead of their turn
    keys = [edf_key(by_rid[rid]) for rid, _ in plan.prefill if rid not in partials]  # (one partial prefill)
    assert keys == sorted(keys)


@settings(max_examples=100, deadline=None)
@given(arrivals=st.lists(st.tuples(st.floats(0, 10), st.sampled_from([0.25, 1.0, 2.0])), max_size=60),
       window=st.integers(0, 70), take=st.integers(0, 70))
def test_lazy_edf_is_edf_within_window_then_fifo(arrivals, window, take):
    reqs = sorted((ReqView(f"w{i}", a, 10, ttft, 0.1) for i, (a, ttft) in enumerate(arrivals)),
                  key=lambda r: r.arrival_s)
    w = len(reqs) if window == 0 else min(window, len(reqs))
    expected = sorted(reqs[:w], key=edf_key) + reqs[w:]
    got = list(lazy_edf(reqs, window))
    assert [r.rid for r in got] == [r.rid for r in expected]
    # out of arrival order, it still returns EDF within the window
    shuffled = tuple(reversed(reqs))
    assert [r.rid for r in lazy_edf(shuffled, 0)] == [r.rid for r in sorted(shuffled, key=edf_key)]


def test_snapshot_strategy_can_fail_kv():
    """Guard for the properties above: a plan that ignored KV would be caught by assert_valid."""
    from factories import make_running, make_snapshot
    run = (make_running("a", prompt_tokens=10), make_running("b", prompt_tokens=10))
    snap = make_snapshot(running=run, kv_capacity_tokens=kv_held(run) + 1)
    bad = replace(make_policy("sarathi").plan(make_snapshot(running=run)), preempt=())
    with pytest.raises(AssertionError):
        assert_valid(snap, bad)
