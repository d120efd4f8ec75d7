"""PolicyAdapter's step against a stand-in scheduler carrying the SGLang 0.5.23 attributes the adapter reads and sets
(queues, grammar manager, radix cache, last batch, KV pool): issue 13 items 1 (grammar requests reach the plan),
3 (the status counts rows of the unmerged last batch), 4 (each row's last token time, whatever forward produced it),
5 (PrefillAdder reserves KV for parked rows), 6 (prefix hits of the whole waiting view) and 8 (mixing constraints).
The live tests (test/live/test_structured_penalties.py) check the same against the real scheduler."""

from __future__ import annotations

import time
from types import SimpleNamespace

import pytest

from sglang_fair.config import SloConfig
from sglang_fair.engine import deferral, sglang_view
from sglang_fair.core.plan_check import plan_problem
from sglang_fair.engine.adapter import PolicyAdapter
from sglang_fair.policies.chaos import make_configured_policy
from sglang_fair.config import RuntimeConfig

pytest.importorskip("sglang.srt.managers.schedule_batch")
from sglang.srt.model_executor.forward_batch_info import ForwardMode  # noqa: E402


class Req:
    """The Req attributes the adapter and the snapshot builder read."""

    def __init__(self, rid: str, *, prompt: int = 100, outputs: int = 0, recv: float = 1.0, prefill_done: float = 0.0,
                 last_decode: float = 0.0, logprob: bool = False, max_new: int = 64) -> None:
        self.rid = rid
        self.time_stats = SimpleNamespace(scheduler_recv_time=recv, wait_queue_entry_time=recv,
                                          prefill_finished_time=prefill_done, last_decode_finish_time=last_decode)
        self.sampling_params = SimpleNamespace(custom_params=None, max_new_tokens=max_new, ignore_eos=False)
        self.origin_input_ids = list(range(prompt))
        self.output_ids = [7] * outputs
        self.prefix_len = 0
        self.return_logprob = logprob
        self.beam_group = None
        self.input_embeds = None
        self.is_retracted = False
        self.grammar = None
        self.done = False
        self.seqlen = prompt + outputs

    def finished(self) -> bool:
        return self.done

    def __repr__(self) -> str:
        return self.rid


class GrammarManager:
    def __init__(self, queue) -> None:
        self.grammar_queue = list(queue)
        self.polls = 0

    def has_waiting_grammars(self) -> bool:
        return bool(self.grammar_queue)

    def get_ready_grammar_requests(self):
        self.polls += 1
        ready, self.grammar_queue = self.grammar_queue, []
        return ready


class Tree:
    def __init__(self, hits: dict | None = None) -> None:
        self.hits = hits or {}

    def supports_prefix_sharing(self) -> bool:
        return True

    def evictable_size(self) -> int:
        return 0


class Batch:
    def __init__(self, reqs, mode=ForwardMode.DECODE) -> None:
        self.reqs = list(reqs)
        self.forward_mode = mode
        self.decoding_reqs = None
        self.extend_lens = self.prefix_lens = None

    def is_empty(self) -> bool:
        return not self.reqs


class Sched:
    def __init__(self, *, waiting=(), running=(), grammar=(), tree=None, capacity=65536, free=60000) -> None:
        self.device = "cpu"
        self.waiting_queue = list(waiting)
        self.chunked_req = None
        self.running_batch = Batch(running)
        self.last_batch = None
        self.grammar_manager = GrammarManager(grammar)
        self.tree_cache = tree or Tree()
        self.max_total_num_tokens = capacity
        self.token_to_kv_pool_allocator = SimpleNamespace(available_size=lambda: free)
        self.chunked_prefill_size = 2048
        self.is_mixed_chunk = False
        self.enable_lora = False
        self.policy = SimpleNamespace()
        self.server_args = SimpleNamespace(enable_mixed_chunk=False)
        self.calls = []

    def _add_request_to_queue(self, req) -> None:
        self.waiting_queue.append(req)


def adapter(sched, **params) -> PolicyAdapter:
    cfg = RuntimeConfig(policy="fair", slo=SloConfig(ttft_slo_ms=2000.0, tpot_slo_ms=200.0), policy_params=params,
                        online_fit=False)
    return PolicyAdapter(sched, cfg, make_configured_policy(cfg.policy, cfg.policy_params))


def fake_original(calls):
    """Stands in for Scheduler.get_new_batch_prefill: records what it saw, admits the whole narrowed queue."""
    def original(sched, running_batch):
        calls.append({"waiting": list(sched.waiting_queue), "grammar_queue": list(sched.grammar_manager.grammar_queue),
                      "mixed": sched.is_mixed_chunk, "chunk": sched.chunked_prefill_size})
        admitted, sched.waiting_queue = sched.waiting_queue, []
        batch = Batch(admitted, ForwardMode.EXTEND) if admitted else None
        return SimpleNamespace(batch_to_run=batch, running_batch=running_batch)
    return original


@pytest.fixture(autouse=True)
def no_radix_matching(monkeypatch):
    """SGLang's match_kv_cache against the stand-in tree: the hit recorded for the rid."""
    import sglang.srt.mem_cache.common as common

    def match(req, tree, *a, max_prefix_len=None, **kw):
        req.prefix_len = tree.hits.get(req.rid, 0)
        if max_prefix_len is not None:
            req.prefix_len = min(req.prefix_len, max_prefix_len)
    monkeypatch.setattr(common, "match_kv_cache", match)


# ---- item 1: grammar ----------------------------------------------------------------------------------------------
def test_a_ready_grammar_request_on_an_idle_server_is_planned_and_prefilled():
    """Before the fix the plan was empty (the request sat in grammar_queue) and SGLang's original, which moves ready
    grammar requests, was never called: the request hung."""
    g = Req("json", prompt=50, recv=9.0)
    sched = Sched(grammar=[g])
    ad = adapter(sched)
    calls = []
    result = ad.form_prefill(fake_original(calls), sched, sched.running_batch)
    assert result.batch_to_run is not None and result.batch_to_run.reqs == [g]
    assert calls[0]["grammar_queue"] == []  # hidden during the call: polled once per step, by the adapter
    assert sched.grammar_manager.polls == 1 and sched.waiting_queue == []


def test_grammar_queue_is_restored_after_the_call():
    waiting = Req("w", prompt=40)
    pending = Req("compiling")
    sched = Sched(waiting=[waiting])
    sched.grammar_manager.grammar_queue = [pending]
    sched.grammar_manager.get_ready_grammar_requests = lambda: []  # still compiling
    ad = adapter(sched)
    calls = []
    ad.form_prefill(fake_original(calls), sched, sched.running_batch)
    assert calls[0]["grammar_queue"] == [] and sched.grammar_manager.grammar_queue == [pending]


def test_demoted_requests_are_counted_in_the_status_once_each():
    """fair's default admission serves a request past its TTFT deadline (2 s here) as best effort; the status and
    the gauges show how many the last plan demoted and how many demotions there were."""
    now = time.perf_counter()
    late = [Req(f"late{i}", prompt=60, recv=now - 3.0) for i in range(2)]  # past 2 s, not yet aged (5 x 2 s)
    fresh = Req("fresh", prompt=60, recv=now)
    sched = Sched(waiting=[*late, fresh])
    ad = adapter(sched, min_budget_ms=5.0)
    ad._count_demoted(("late0", "late1"))
    ad._count_demoted(("late0", "late1"))  # still demoted: not a new demotion
    assert (ad.demoted_now, ad.demotions_total) == (2, 2)
    ad._count_demoted(())
    ad._count_demoted(("late0",))  # demoted again after a plan without: counted again
    assert (ad.demoted_now, ad.demotions_total) == (1, 3)
    ad2 = adapter(sched)
    ad2.form_prefill(fake_original([]), sched, sched.running_batch)
    st = ad2.status()
    assert st["demoted_now"] == 2 and st["demotions_total"] == 2
    # what a client matches its requests by: the prompt's length and the arrival's wall time (3 s ago)
    assert sorted(e["rid"] for e in st["demoted_recent"]) == ["late0", "late1"]
    assert all(e["prompt_tokens"] == 60 and abs(e["arrival_wall_s"] - (time.time() - 3.0)) < 0.5
               for e in st["demoted_recent"])
    assert ad2.recent_plans[-1]["demoted"] == 2
    assert adapter(Sched(waiting=[Req("w", recv=time.perf_counter())]), admission="off").status()["demoted_now"] == 0


def test_shed_answers_the_demoted_requests_the_step_does_not_start_and_hands_sglang_the_rest(monkeypatch):
    """`--fair-admission shed`: of the requests past their TTFT deadline (demoted), those the plan does not start this
    step leave the waiting queue with an HTTP 429 abort before SGLang forms the batch; the others are untouched."""
    from sglang_fair.engine import reject
    now = time.perf_counter()
    late = [Req(f"late{i}", prompt=20000, recv=now - 3.0) for i in range(3)]  # past 2 s, not yet aged
    fresh = Req("fresh", prompt=60, recv=now)
    sched = Sched(waiting=[*late, fresh])
    sent = []
    sched._release_aborted_request = lambda req: None
    sched.beam_coordinator = SimpleNamespace(retire_group=lambda req: None)
    sched.send_abort_output = lambda abort, req: sent.append(abort)
    monkeypatch.setattr(reject, "abort_429", lambda req, message: (req.rid, message))
    cfg = RuntimeConfig(policy="fair", slo=SloConfig(ttft_slo_ms=2000.0, tpot_slo_ms=200.0), online_fit=False,
                        admission="shed")
    ad = PolicyAdapter(sched, cfg, make_configured_policy(cfg.policy, cfg.policy_params))
    calls = []
    ad.form_prefill(fake_original(calls), sched, sched.running_batch)
    plan = ad.recent_plans[-1]
    shed = {rid for rid, _ in sent}
    assert plan["demoted"] == 3 and shed and shed < {"late0", "late1", "late2"}
    assert all("shed from the queue" in m for _, m in sent)
    assert not shed & {r.rid for r in calls[0]["waiting"]}  # SGLang never saw them
    assert "fresh" in {r.rid for r in calls[0]["waiting"]}
    assert ad.status()["shed_from_queue"] == len(shed) and not ad.faults
    kept = adapter(Sched(waiting=[*late, fresh]))  # --fair-admission off: the same plan sheds nothing
    kept.form_prefill(fake_original([]), kept.sched, kept.sched.running_batch)
    assert kept.status()["shed_from_queue"] == 0


def test_aged_requests_are_reported_in_the_status_and_the_plan_record():
    """A request waiting past fair's ageing bound (5 x its 2 s TTFT SLO) is not demoted: it rides in the aged lane, and
    the status (`aged_now`, a gauge) and the plan record show how many do."""
    now = time.perf_counter()
    sched = Sched(waiting=[Req("old", prompt=60, recv=now - 11.0), Req("fresh", prompt=60, recv=now)])
    ad = adapter(sched, min_budget_ms=5.0)
    ad.form_prefill(fake_original([]), sched, sched.running_batch)
    st = ad.status()
    assert st["aged_now"] == 1 and st["demoted_now"] == 0
    assert ad.recent_plans[-1]["aged"] == 1
    sched2 = Sched(waiting=[Req("old", prompt=60, recv=now - 11.0), Req("fresh", prompt=60, recv=now)])
    ad2 = adapter(sched2, min_budget_ms=5.0, aged_share=1.0)  # aged first: no lane
    ad2.form_prefill(fake_original([]), sched2, sched2.running_batch)
    assert ad2.status()["aged_now"] == 0


# ---- item 3: status -----------------------------------------------------------------------------------------------
def test_status_counts_rows_of_the_last_batch_not_merged_yet():
    """After a mixed step SGLang replaced the running batch with an empty one; its decodes and the new decode are in
    last_batch until the next step merges them. Before the fix they vanished from the status and /get_load."""
    rows = [Req(f"d{i}", outputs=3, prefill_done=2.0, last_decode=3.0) for i in range(3)]
    new = Req("new", outputs=1, prefill_done=3.5)
    chunked = Req("chunk", prompt=900)
    sched = Sched(running=[])
    sched.chunked_req = chunked
    sched.last_batch = Batch([new, chunked, *rows], ForwardMode.MIXED)
    st = adapter(sched).status()
    assert st["num_running_reqs"] == 4
    assert st["num_waiting_reqs"] == 1  # the chunked request
    sched.last_batch = Batch(rows, ForwardMode.DECODE)  # a decode batch is the running batch itself
    sched.running_batch = Batch(rows)
    assert adapter(sched).status()["num_running_reqs"] == 3


# ---- item 4: token times ------------------------------------------------------------------------------------------
def test_rows_decoded_in_a_mixed_forward_get_their_token_time():
    """SGLang stamps last_decode_finish_time only on the decode result path; a row decoded in a mixed forward kept
    the old stamp, so the token-gap guard saw a growing gap. The adapter takes the time the result was processed."""
    d = Req("d", outputs=4, prefill_done=1.0, last_decode=2.0)
    sched = Sched(running=[d])
    ad = adapter(sched)
    mixed = Batch([Req("p"), d], ForwardMode.MIXED)
    mixed.decoding_reqs, mixed.extend_lens, mixed.prefix_lens = [d], [64, 1], [0, 103]
    ad.on_run_batch(mixed, 5.0, 5.3)
    d.output_ids.append(9)  # SGLang's result processing (last_decode_finish_time untouched)
    ad.on_result(5.31)
    view = ad.snapshot([d], now=5.4).running[0]
    assert view.last_token_s == 5.31
    ad.on_run_batch(Batch([d]), 5.4, 5.45)  # a forward that produced no new token for d (e.g. it finished elsewhere)
    ad.on_result(5.5)
    assert ad.snapshot([d], now=5.6).running[0].last_token_s == 5.31
    d.time_stats.last_decode_finish_time = 6.0  # SGLang's own stamp, when newer, wins
    assert ad.snapshot([d], now=6.1).running[0].last_token_s == 6.0


def test_a_scheduler_serving_lora_adapters_plans_without_deferral():
    """SGLang's per-batch adapter limit counts the running batch, so the adapter parks nothing there and the policy
    is told (Snapshot.deferral_allowed; what fair does with it: test_policy_fair.py)."""
    d = Req("d", outputs=4, prefill_done=1.0, last_decode=2.0)
    e = Req("e", outputs=9, prefill_done=1.0, last_decode=2.0)
    for lora in (False, True):
        sched = Sched(running=[d, e])
        sched.enable_lora = lora
        snap = adapter(sched).snapshot([d, e], now=2.05)
        assert snap.deferral_allowed is (not lora)


# ---- item 5: KV for parked rows -------------------------------------------------------------------------------------
class FakeAdder:
    """PrefillAdder's KV reservation for running rows (schedule_policy.py: memory_budget.total_offset)."""

    def __init__(self, running_batch, ratio=0.5) -> None:
        self.new_token_ratio = ratio
        self.memory_budget = SimpleNamespace(total_offset=0)
        self.memory_budget.total_offset += sum(self._get_running_request_total_token_offset(r)
                                               for r in running_batch.reqs)

    def _get_running_request_total_token_offset(self, req) -> float:
        return (req.sampling_params.max_new_tokens - len(req.output_ids)) * self.new_token_ratio


def test_prefill_adder_reserves_future_output_kv_of_parked_rows():
    kept, parked = Req("k", outputs=4, max_new=64), Req("p", outputs=14, max_new=64)
    sched = Sched(waiting=[Req("w")])
    sched.get_prefill_adder_class = None  # set below; the real one is a Scheduler method
    del sched.get_prefill_adder_class
    type(sched).get_prefill_adder_class = lambda self: FakeAdder
    try:
        ctl = deferral.PrefillControl(sched, prefill_reqs=list(sched.waiting_queue), chunk_tokens=100, n_decode=1,
                                      mixed=True, parked_reqs=[parked])
        adder = sched.get_prefill_adder_class()(Batch([kept]))
        assert adder.memory_budget.total_offset == (64 - 4) * 0.5 + (64 - 14) * 0.5
        ctl.restore()
        assert sched.get_prefill_adder_class() is FakeAdder
    finally:
        del type(sched).get_prefill_adder_class


# ---- item 6: prefix hits -----------------------------------------------------------------------------------------
def test_prefix_hits_of_unplanned_waiting_requests_reach_the_snapshot():
    waiting = [Req(f"w{i}", prompt=900, recv=1.0 + i) for i in range(100)]
    hits = {r.rid: 800 for r in waiting}
    sched = Sched(waiting=waiting, tree=Tree(hits))
    ad = adapter(sched)
    calls = []
    ad.form_prefill(fake_original(calls), sched, sched.running_batch)
    snap = ad.snapshot([])
    assert len(snap.waiting) + len(calls[0]["waiting"]) == 100
    assert all(v.prefilled_tokens == 800 for v in snap.waiting)
    # the head is matched again every step (a later hit), the tail only once
    sched.tree_cache.hits = {r.rid: 896 for r in waiting}
    ad.prefix_matcher.match(sched)
    by = {v.rid: v.prefilled_tokens for v in ad.snapshot([]).waiting}
    oldest = sorted(sched.waiting_queue, key=lambda r: r.time_stats.wait_queue_entry_time)
    assert by[oldest[0].rid] == 896 and by[oldest[-1].rid] == 800


# ---- item 8: mixing -----------------------------------------------------------------------------------------------
def test_mixing_constraints_reach_the_snapshot_and_mixed_plans_are_refused():
    d = Req("d", outputs=3, prefill_done=1.0, last_decode=1.5)
    lp = Req("lp", outputs=3, prefill_done=1.0, last_decode=1.5, logprob=True)
    sched = Sched(waiting=[Req("w")], running=[d])
    ad = adapter(sched)
    assert ad.snapshot([d], now=2.0).mixing_allowed
    assert not ad.snapshot([d, lp], now=2.0).mixing_allowed
    sched.waiting_queue.append(Req("wlp", logprob=True))
    snap = ad.snapshot([d], now=2.0)
    assert not snap.mixing_allowed
    from sglang_fair.core.types import Plan
    assert plan_problem(Plan(prefill=(("w", 10),), decode=("d",)), snap) == "mixed plan where the engine cannot mix"
    assert plan_problem(Plan(prefill=(("w", 10),)), snap) is None


def test_server_flags_that_ban_mixing():
    sched = Sched()
    assert sglang_view.mixing_bans(sched) == []
    sched.server_args = SimpleNamespace(enable_mixed_chunk=False, enable_cp_tp_group_sharing=True,
                                        enable_layernorm_sp=True)
    assert sglang_view.mixing_bans(sched) == ["CP-TP group sharing", "--enable-layernorm-sp"]
    ad = adapter(sched)
    assert not ad.snapshot([], now=1.0).mixing_allowed
    assert ad.status()["mixing_banned_by"] == ["CP-TP group sharing", "--enable-layernorm-sp"]
    sched.server_args.enable_mixed_chunk = True  # SGLang validated mixing for this server itself
    assert sglang_view.mixing_bans(sched) == []


def test_a_plan_that_may_not_mix_runs_prefill_without_is_mixed_chunk():
    d = [Req(f"d{i}", outputs=3, prefill_done=1.0, last_decode=1.5, logprob=True) for i in range(2)]
    sched = Sched(waiting=[Req("w", prompt=300)], running=d)
    sched.running_batch.check_decode_mem = lambda: True
    ad = adapter(sched)
    calls = []
    ad.form_prefill(fake_original(calls), sched, sched.running_batch)
    assert not ad.faults
    assert all(not c["mixed"] for c in calls)


def test_a_stock_step_after_a_policy_fault_does_not_poll_grammar_twice():
    sched = Sched(waiting=[Req("w")], grammar=[Req("json")])
    ad = adapter(sched)
    ad.policy = SimpleNamespace(plan=lambda snap: 1 / 0)
    calls = []
    ad.form_prefill(fake_original(calls), sched, sched.running_batch)
    assert ad.faults["policy_exception"] == 1
    assert sched.grammar_manager.polls == 1 and calls[0]["grammar_queue"] == []
    assert [r.rid for r in calls[0]["waiting"]] == ["w", "json"]


def test_a_fully_cached_prompt_still_gets_its_last_token_planned():
    """Live, a repeated prompt matched in full left 0 tokens to prefill: fair planned nothing ("empty plan while
    requests are pending", a stock step). SGLang always computes the last prompt token."""
    again = Req("again", prompt=9, recv=5.0)
    sched = Sched(waiting=[again], tree=Tree({"again": 9}))
    ad = adapter(sched)
    calls = []
    result = ad.form_prefill(fake_original(calls), sched, sched.running_batch)
    assert not ad.faults and result.batch_to_run.reqs == [again]
    assert again.prefix_len == 8
    sched.waiting_queue = [again]
    again.prefix_len = 9  # a full match by another path (SGLang's own calc_priority passes no limit)
    assert ad.snapshot([]).waiting[0].remaining_prompt_tokens == 1


# ---- --fair-trace -----------------------------------------------------------------------------------------------
def test_the_trace_has_every_plan_and_forward_linked_by_sequence(tmp_path, monkeypatch):
    """One `plan` record per step (a stock fallback marked), one `forward` record per measured forward carrying the
    latest plan's number, with the longest gap a row saw between two of its tokens."""
    from sglang_fair.bench.trace_report import read_trace
    from sglang_fair.core import trace

    path = tmp_path / "trace.jsonl"
    monkeypatch.setattr(trace, "_writer", None)
    trace.configure(str(path), header={"policy": "fair"})
    now = time.perf_counter()  # the adapter plans on this clock: d's last token 50 ms ago, inside its gap bound
    d = Req("d", outputs=4, prefill_done=now - 1.0, last_decode=now - 0.05)
    sched = Sched(waiting=[Req("w", prompt=300)], running=[d])
    ad = adapter(sched)
    assert ad.trace is trace.writer()
    result = ad.form_prefill(fake_original([]), sched, sched.running_batch)
    ad.on_run_batch(d_batch := Batch([d]), 5.0, 5.1)
    d.output_ids.append(9)
    ad.on_result(5.1)
    ad.on_run_batch(d_batch, 5.2, 5.3)
    d.output_ids.append(9)
    ad.on_result(5.35)  # d's previous token at 5.1: a 250 ms gap
    ad.policy = SimpleNamespace(plan=lambda snap: 1 / 0)
    ad.form_prefill(fake_original([]), sched, sched.running_batch)  # a stock step
    assert result.batch_to_run is not None
    assert ad.status()["trace"]["records"] == 4
    trace.writer().close()
    recs = read_trace(path)
    assert recs["start"][0]["policy"] == "fair"
    plans, forwards = recs["plan"], recs["forward"]
    assert [p.get("stock", False) for p in plans] == [False, True]
    p = plans[0]
    assert p["seq"] == 1 and 0 < p["prefill_tokens"] <= 300 and p["prefill_chunks"] == [p["prefill_tokens"]]
    assert p["n_prefill"] == 1 and p["decode"] + p["deferred"] == 1
    assert p["running"] == 1 and p["waiting"] == 1 and p["overhead_ms"] > 0 and p["note"].startswith("fair")
    assert [f["plan_seq"] for f in forwards] == [1, 1]
    assert forwards[0]["n_decode"] == 1 and forwards[0]["measured_ms"] == pytest.approx(100.0)
    assert forwards[0]["max_token_gap_ms"] == 0.0  # d's first observed token
    assert forwards[1]["max_token_gap_ms"] == pytest.approx(250.0)


def test_the_trace_records_each_request_at_its_first_token_once(tmp_path, monkeypatch):
    """A `first_token` record per request when its first output is processed (rid, when the scheduler received it,
    prompt and max_new_tokens), also for a request that finishes with it; none for later tokens, for a request that
    already had outputs when first seen, or for one still prefilling."""
    from sglang_fair.bench.trace_report import read_trace, summarize
    from sglang_fair.core import trace

    path = tmp_path / "trace.jsonl"
    monkeypatch.setattr(trace, "_writer", None)
    trace.configure(str(path), header={"policy": "fair"})
    a, one = Req("a", prompt=300, recv=4.0, max_new=20), Req("one", prompt=50, recv=4.5, max_new=1)
    old, pre = Req("old", outputs=6), Req("pre", prompt=900)
    sched = Sched(waiting=[a, one, pre], running=[old])
    ad = adapter(sched)
    batch = Batch([a, one, old, pre])
    ad.on_run_batch(batch, 5.0, 5.1)
    a.output_ids.append(1)
    one.output_ids.append(1)
    one.done = True
    old.output_ids.append(1)
    ad.on_result(5.2)
    ad.on_run_batch(batch, 5.3, 5.4)
    a.output_ids.append(1)
    ad.on_result(5.5)
    trace.writer().close()
    recs = read_trace(path)["first_token"]
    assert [(r["rid"], r["recv_s"], r["t_s"], r["prompt_tokens"], r["max_new_tokens"]) for r in recs] == [
        ("a", 4.0, 5.2, 300, 20), ("one", 4.5, 5.2, 50, 1)]
    s = summarize(read_trace(path))["requests"]
    assert s["n"] == 2 and s["ttft_ms"]["max"] == pytest.approx(1200.0) and s["ttft_ms"]["p50"] == pytest.approx(950.0)
