"""fair's `aged_share`: requests that have waited more than `demote_max_wait_ttft` TTFT SLOs get a lane of their own
with that share of each iteration's prefill time (0.1 by default), instead of going first with all of it (1, the
default before the seventeenth session) or waiting behind every on-time request (0, as with no ageing bound). The admission walk judges on-time work knowing the lane takes
its share."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
from factories import COST, make_req, make_running_with_slack, make_snapshot, make_trace

from sglang_fair.core.metrics import ttft_s
from sglang_fair.policies import make_policy
from sglang_fair.policies.admission import admission_lanes, aged_head, policy_arrival_verdict
from sglang_fair.policies.common import edf_key
from sglang_fair.policies.fair import FairParams
from sglang_fair.sim.engine import EngineConfig, simulate

NOW = 10.0
STEP_S = 1.0 - COST.base_s  # no decode running: the whole 1 s budget cap less the fixed cost goes to prefill
TOKENS = round(STEP_S / COST.per_prefill_token_s)  # 9950


def old(prefilled: int = 0):
    """Waited 10 s for a 1 s TTFT SLO: aged (the default bound is 5 SLOs)."""
    return make_req("old", arrival_s=0.0, prompt_tokens=5000, prefilled_tokens=prefilled)


def fresh(prompt_tokens: int = 20000, ttft_slo_s: float = 5.0):
    return make_req("new", arrival_s=9.9, prompt_tokens=prompt_tokens, ttft_slo_s=ttft_slo_s)


def close(prefill, expected) -> bool:
    """The same chunks in the same order, each within a token (the budget's float rounding)."""
    return [rid for rid, _ in prefill] == [rid for rid, _ in expected] and all(
        abs(n - m) <= 1 for (_, n), (_, m) in zip(prefill, expected))


def plan_of(share: float, snap):
    return make_policy("fair", aged_share=share).plan(snap)


def several_partials(snap):
    """`snap` for an engine that may hold several partial prefills (the simulator's comparison mode): the lane's
    share as such, without SGLang's one cut per step."""
    return dataclasses.replace(snap, one_partial_prefill=False)


def test_the_aged_lane_gets_its_share_and_on_time_work_the_rest():
    snap = several_partials(make_snapshot(now=NOW, waiting=[old(), fresh()]))
    plan = plan_of(0.25, snap)
    (first, n_new), (second, n_old) = plan.prefill
    assert (first, second) == ("new", "old")
    assert n_new == math.floor(0.75 * STEP_S / COST.per_prefill_token_s)  # 7462: on time gets 3/4 of the step
    assert TOKENS - 1 <= n_new + n_old <= TOKENS  # and the lane the rest (each chunk rounded down)
    # aged first (the default before the seventeenth session): all it needs, EDF (its deadline is long past)
    assert close(plan_of(1.0, snap).prefill, [("old", 5000), ("new", TOKENS - 5000)])
    # no share: it waits behind on-time work, as with no ageing bound
    assert close(plan_of(0.0, snap).prefill, [("new", TOKENS)])
    assert close(make_policy("fair", demote_max_wait_ttft=math.inf).plan(snap).prefill, [("new", TOKENS)])


def test_an_aged_partial_prefill_rides_in_the_lane():
    snap = make_snapshot(now=NOW, prefilling=[old(prefilled=1000)], waiting=[fresh()])
    plan = plan_of(0.25, several_partials(snap))
    assert [rid for rid, _ in plan.prefill] == ["new", "old"]
    assert TOKENS - 1 <= plan.prefill_tokens <= TOKENS
    assert plan_of(1.0, snap).prefill[0] == ("old", 4000)  # aged first (share 1): a partial prefill goes first
    # one partial prefill (SGLang): "new" cannot be cut while "old" stays partial; "old" takes the time and finishes
    # (SGLang continues it first anyway), then "new" starts with the rest of the step
    plan = plan_of(0.25, snap)
    assert [rid for rid, _ in plan.prefill] == ["old", "new"] and plan.prefill[0][1] == 4000
    assert TOKENS - 1 <= plan.prefill_tokens <= TOKENS


def test_with_one_partial_prefill_the_step_has_one_cut_and_the_lane_takes_turns_at_it():
    # nothing partial yet: on-time work starts the one partial prefill, and takes the lane's time as well (the lane
    # has no request that fits whole)
    snap = make_snapshot(now=NOW, waiting=[old(), fresh()])
    assert close(plan_of(0.25, snap).prefill, [("new", TOKENS)])
    # an on-time request held the partial slot and finishes: on-time work starts the next cut (the default); taking
    # turns (`partial_slot="alternate"`), the lane does; here its request fits whole, so the unused turn goes back
    held = make_req("held", arrival_s=9.0, prompt_tokens=3000, prefilled_tokens=2000, ttft_slo_s=5.0)
    snap = make_snapshot(now=NOW, prefilling=[held], waiting=[old(), fresh()])
    plan = plan_of(0.25, snap)
    assert [rid for rid, _ in plan.prefill] == ["held", "new"] and plan.prefill[0][1] == 1000
    turns = make_policy("fair", aged_share=0.25, partial_slot="alternate").plan(snap)
    assert [rid for rid, _ in turns.prefill] == ["held", "old", "new"] and TOKENS - 1 <= turns.prefill_tokens <= TOKENS


def test_the_lane_takes_the_whole_step_when_nothing_on_time_waits():
    snap = make_snapshot(now=NOW, waiting=[make_req("old", arrival_s=0.0, prompt_tokens=20000)])
    assert close(plan_of(0.25, snap).prefill, [("old", TOKENS)])


def test_the_lane_shares_time_not_kv():
    # room for one of the two prompts: on-time work is admitted first; aged first (share 1) admits the aged one
    snap = make_snapshot(now=NOW, waiting=[old(), fresh(prompt_tokens=2000)], kv_capacity_tokens=6000)
    assert close(plan_of(0.1, snap).prefill, [("new", 2000)])
    assert close(plan_of(1.0, snap).prefill, [("old", 5000)])


def test_on_time_work_gives_way_to_the_lane_only_for_its_share():
    # the lane holds 0.5 s of prefill; "new" needs 0.6 s by 0.9 s from now. Aged work first (share 1) makes it
    # late (0.5 + 0.6 s); with a quarter share it is done in 0.6 / 0.75 = 0.8 s; with half, min(1.2, 1.1) s: late
    snap = make_snapshot(now=NOW, waiting=[old(), fresh(prompt_tokens=6000, ttft_slo_s=1.0)])
    for share, late in ((0.25, False), (0.5, True)):
        on_time, unjudged, demoted, lane = admission_lanes(snap, True, 5.0, 64, None, share)
        assert [r.rid for r, _ in lane] == ["old"]
        assert ([r.rid for r in demoted] == ["new"]) is late and ([r.rid for r in on_time] == ["new"]) is not late
        assert plan_of(share, snap).demoted == (("new",) if late else ())
    assert make_policy("fair", aged_share=1.0).plan(snap).demoted == ("new",)
    assert make_policy("fair").plan(snap).demoted == ()  # the default share, 0.1
    # the arrival verdict (`--fair-admission reject`) judges the same way
    queued = make_snapshot(now=NOW, waiting=[old()])
    new = fresh(prompt_tokens=6000, ttft_slo_s=1.0)
    assert policy_arrival_verdict(FairParams(aged_share=0.25), queued, new)[0] is False
    assert policy_arrival_verdict(FairParams(aged_share=0.5), queued, new)[0] is True
    assert policy_arrival_verdict(FairParams(aged_share=1.0), queued, new)[0] is True
    assert policy_arrival_verdict(FairParams(), queued, new)[0] is False


def test_a_queue_all_aged_is_one_lane_in_edf_order_with_nothing_left_to_judge():
    # mixed TTFT SLOs: arrival order is not EDF order; an aged partial prefill rides in the lane too
    waiting = [make_req(f"w{i}", arrival_s=0.1 * i, prompt_tokens=300 + 10 * i, ttft_slo_s=0.5 if i % 3 else 1.0)
               for i in range(12)]
    part = make_req("p", arrival_s=0.05, prompt_tokens=4000, prefilled_tokens=1000, ttft_slo_s=1.0)
    snap = make_snapshot(now=NOW, waiting=waiting, prefilling=[part])
    on_time, unjudged, demoted, lane = admission_lanes(snap, True, 5.0, 64, None, 0.1)
    lane = list(lane)
    assert (on_time, list(unjudged), demoted) == ([], [], [])
    deadlines = [r.arrival_s + r.ttft_slo_s for r, _ in lane]
    assert deadlines == sorted(deadlines) and len(lane) == 13 and [w for r, w in lane if r.rid == "p"] == [False]
    # one more request, not aged, is judged by the walk and the lane is the same
    snap2 = make_snapshot(now=NOW, waiting=[*waiting, fresh(prompt_tokens=2000)], prefilling=[part])
    on_time2, _, demoted2, lane2 = admission_lanes(snap2, True, 5.0, 64, None, 0.1)
    assert [r.rid for r in on_time2] == ["new"] and demoted2 == [] and list(lane2) == lane
    plan = make_policy("fair").plan(snap)  # the plan serves the lane's head first, with the whole step
    assert plan.prefill[0][0] == lane[0][0].rid and set(plan.aged) == {r.rid for r, _ in lane}


def test_closed_loop_under_sustained_overload():
    # 34 s of prompts of 200-1800 tokens every 85 ms (about 1.2x what the device prefills), TTFT SLO 2 s
    rng = np.random.default_rng(0)
    trace = make_trace([(0.085 * i, int(p), 2) for i, p in enumerate(rng.integers(200, 1800, 400))])

    def run(share, one_partial=True, **kw):
        res = simulate(trace, make_policy("fair", aged_share=share, **kw), COST,
                       EngineConfig(ttft_slo_ms=2000.0, one_partial_prefill=one_partial))
        assert all(r.finished for r in res.records)  # nobody lost
        ttfts = [ttft_s(r) for r in res.records]
        return sum(t <= 2.0 for t in ttfts), max(ttfts)

    share = FairParams().aged_share
    # An engine that holds several partial prefills (the lane as such): aged first (share 1) makes on-time requests
    # late (136 on time), the lane keeps 177, while an aged request still progresses every step: its longest wait is
    # shorter (23 s) than with no share at all (28 s), where it waits for the overload to end.
    (lane, lane_max), (first, _), (_, none_max) = (run(s, False) for s in (share, 1.0, 0.0))
    assert lane > first + 20 and lane_max < 0.9 * none_max
    # One partial prefill (SGLang): the step's one cut goes to on-time work first (the default): 195 on time, but
    # an aged prompt that needs a cut starts only when on-time work leaves none (longest wait 27 s, none 29 s);
    # taking turns at the cut (`partial_slot="alternate"`) bounds that wait (19 s) for fewer on time (158)
    (lane, lane_max), (first, _) = run(share), run(1.0)
    turns, turns_max = run(share, partial_slot="alternate")
    assert lane > first + 40 and lane > turns + 20 and turns_max < 0.8 * lane_max


@pytest.mark.parametrize("bad", [-0.1, 1.5, True, "half", math.nan])
def test_aged_share_must_be_a_fraction(bad):
    with pytest.raises(ValueError, match="aged_share"):
        FairParams(aged_share=bad)


@pytest.mark.parametrize("seed", range(8))
def test_the_lazy_lane_is_the_sorted_lane(seed):
    """`AgedLane` (built once, read lazily) against the lane as it was built before: the aged prefix found by a scan
    and the whole lane sorted by `edf_key`. Mixed TTFT SLOs (arrival order is not EDF order), equal arrival times
    (ties by rid) and aged partial prefills; `now` put where part of the queue is aged."""
    rng = np.random.default_rng(seed)
    slos = (0.5, 1.0, 2.0)
    arrivals = np.sort(np.round(rng.uniform(0.0, 20.0, 60), 1))  # 0.1 s grid: some arrive together
    waiting = [make_req(f"w{rng.integers(10**6)}-{i}", arrival_s=float(a), prompt_tokens=int(rng.integers(50, 3000)),
                        ttft_slo_s=float(rng.choice(slos))) for i, a in enumerate(arrivals)]
    partials = [make_req(f"p{i}", arrival_s=float(rng.uniform(0.0, 20.0)), prompt_tokens=4000, prefilled_tokens=500,
                         ttft_slo_s=float(rng.choice(slos))) for i in range(3)]
    now = float(rng.uniform(5.0, 25.0))
    snap = make_snapshot(now=now, waiting=waiting, prefilling=partials)
    aged = lambda r: now - r.arrival_s > 5.0 * r.ttft_slo_s  # noqa: E731
    n = next((i for i, r in enumerate(waiting) if not aged(r)), len(waiting))
    expected = sorted([(r, False) for r in partials if aged(r)] + [(r, True) for r in waiting[:n]],
                      key=lambda item: edf_key(item[0]))
    lane = admission_lanes(snap, True, 5.0, 64, None, 0.1)[3]
    assert aged_head(snap.waiting, now, 5.0) == n
    assert list(lane) == expected and len(lane) == len(expected)
    assert list(lane) == expected  # iterable again (the plan's second pass reads it anew)
    tail = waiting[n:n + 2]
    assert list(lane.then(tail)) == expected + [(r, True) for r in tail]


def test_a_step_the_urgent_decodes_overrun_still_gives_the_aged_lane_its_share():
    """40 decodes at a 5 ms TPOT SLO: their step costs 5 + 40 x 0.2 = 13 ms, over every budget their envelopes allow
    (none is behind, so none is past saving), so each plan is decode-only, as on a device slower than the decodes'
    SLO (or with a fit trained on a contended host's forwards). The aged requests still get `aged_share` of the step
    (the decodes' 13 ms x share / (1 - share)), at least the smallest chunk; on-time prompts wait."""
    running = [make_running_with_slack(f"d{i}", 0.006, now=NOW, tpot_slo_s=0.005) for i in range(40)]
    snap = make_snapshot(now=NOW, running=running, waiting=[old(), fresh()])
    step_s = COST.base_s + 40 * COST.per_decode_req_s
    for share, tokens in ((0.1, 16), (0.5, 130)):  # 1.44 ms buys 14 tokens: the 16-token floor; 13 ms buys 130
        plan = plan_of(share, snap)
        assert set(plan.decode) == {r.rid for r in running}
        assert plan.budget_s < step_s
        assert tokens == max(16, math.floor(step_s * share / (1 - share) / COST.per_prefill_token_s + 1e-9))
        assert plan.prefill == (("old", tokens),) and plan.aged == ("old",)
        assert plan.predicted_s == pytest.approx(step_s + tokens * COST.per_prefill_token_s)
    # no share, or no aged request: decode-only, as before
    assert plan_of(0.0, snap).prefill == ()
    assert plan_of(0.1, make_snapshot(now=NOW, running=running, waiting=[fresh()])).prefill == ()
    # where no lanes are formed (admission off; or nothing waiting but an aged partial prefill), the aged requests
    # are found for the step all the same
    assert make_policy("fair", admission="off").plan(snap).prefill == (("old", 16),)
    alone = make_snapshot(now=NOW, running=running, prefilling=[old(prefilled=1000)])
    assert plan_of(0.5, alone).prefill == (("old", 130),)
    young = dataclasses.replace(fresh(), prefilled_tokens=10)
    assert plan_of(0.1, make_snapshot(now=NOW, running=running, prefilling=[young])).prefill == ()


def test_on_a_device_slower_than_the_decodes_slo_prompts_still_get_served():
    """Closed loop (simulator): 30 long decodes whose step (5 + 30 x 5 ms) is over their 100 ms TPOT SLO, and 40
    short prompts arriving behind them. Every plan is decode-only; without the aged lane's share in those steps
    (`aged_share=0`) the prompts wait for the decodes to end, about a minute."""
    slow = dataclasses.replace(COST, per_decode_req_s=25 * COST.per_decode_req_s)
    trace = make_trace([(0.0, 200, 600)] * 30 + [(1.0 + 0.1 * i, 300, 20) for i in range(40)])
    config = EngineConfig(ttft_slo_ms=500.0, tpot_slo_ms=100.0, cost_headroom=False)
    longest = {share: max(map(ttft_s, simulate(trace, make_policy("fair", aged_share=share), slow, config).records))
               for share in (0.1, 0.0)}
    assert longest[0.0] > 50.0
    assert longest[0.1] < 0.25 * longest[0.0]
