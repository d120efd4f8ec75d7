"""engine/deferral.py against SGLang 0.5.23's own batch and sampling code: `Parking` (park / rejoin with real
`ScheduleBatch.filter_batch` / `merge_batch`, penalizers and custom logit processors), `PrefillControl` and
`forward_features` against stand-ins of the scheduler attributes they touch.

The batches are real `ScheduleBatch` objects with only the fields a decode batch's filter/merge reads; the requests
are stand-ins with the attributes those methods read. The penalizer code is SGLang's (sampling/penaltylib)."""

from __future__ import annotations

import random
from types import SimpleNamespace

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("sglang.srt.managers.schedule_batch")

from sglang.srt.managers.schedule_batch import ScheduleBatch  # noqa: E402
from sglang.srt.model_executor.forward_batch_info import CaptureHiddenMode, ForwardMode  # noqa: E402
from sglang.srt.sampling import penaltylib  # noqa: E402
from sglang.srt.sampling.sampling_batch_info import ProcessorEntry, SamplingBatchInfo  # noqa: E402
from sglang.srt.sampling.sampling_params import SamplingParams  # noqa: E402

from sglang_fair.engine import deferral  # noqa: E402

VOCAB = 16
PENALIZERS = {penaltylib.BatchedFrequencyPenalizer, penaltylib.BatchedMinNewTokensPenalizer,
              penaltylib.BatchedPresencePenalizer, penaltylib.BatchedRepetitionPenalizer}


class FakeReq:
    """The Req attributes ScheduleBatch.filter_batch/merge_batch and the penalizers read."""

    def __init__(self, rid: str, *, frequency_penalty: float = 0.0, min_new_tokens: int = 0,
                 processor: str | None = None, logprob: bool = False) -> None:
        self.rid = rid
        self.sampling_params = SamplingParams(max_new_tokens=32, frequency_penalty=frequency_penalty,
                                              min_new_tokens=min_new_tokens, stop_token_ids=[3])
        self.sampling_params.stop_token_ids = {3}
        self.custom_logit_processor = processor
        self.return_logprob = logprob
        self.grammar = None
        self.beam_group = None
        self.return_hidden_states_mode = CaptureHiddenMode.NULL
        self.output_ids = [1]
        self.origin_input_ids = [1, 2]
        self.done = False
        self.tokenizer = SimpleNamespace(additional_stop_token_ids=None, eos_token_id=2)
        self.eos_token_ids = None

    def finished(self) -> bool:
        return self.done

    def __repr__(self) -> str:
        return self.rid


class Proc:
    def __init__(self, name: str) -> None:
        self.name = name


def make_batch(reqs: list[FakeReq]) -> ScheduleBatch:
    n = len(reqs)
    b = ScheduleBatch(reqs=list(reqs), model_config=SimpleNamespace(is_encoder_decoder=False), device="cpu",
                      req_pool_indices=torch.arange(n), req_pool_indices_cpu=torch.arange(n),
                      seq_lens=torch.full((n,), 4), orig_seq_lens=torch.full((n,), 4), seq_lens_cpu=torch.full((n,), 4),
                      forward_mode=ForwardMode.DECODE)
    procs: dict = {}
    for i, r in enumerate(reqs):
        if r.custom_logit_processor is not None:
            procs.setdefault(r.custom_logit_processor, []).append(i)
    clp = {hash(k): ProcessorEntry(processor=Proc(k), rows=rows, indices=torch.tensor(rows)) for k, rows in procs.items()}
    b.sampling_info = SamplingBatchInfo(
        temperatures=torch.ones(n, 1), top_ps=torch.ones(n), top_ks=torch.ones(n, dtype=torch.int32),
        min_ps=torch.zeros(n), is_all_greedy=True, is_any_greedy=True, need_top_p_sampling=False,
        need_top_k_sampling=False, need_min_p_sampling=False, vocab_size=VOCAB, device="cpu",
        penalizer_orchestrator=penaltylib.BatchedPenalizerOrchestrator(vocab_size=VOCAB, batch=b,
                                                                       penalizers=PENALIZERS),
        has_custom_logit_processor=bool(clp), custom_logit_processor=clp or None,
        custom_params=[{"rid": r.rid} for r in reqs] if clp else None)
    return b


def freq_rows(batch) -> list[float]:
    """Each row's frequency penalty as the orchestrator holds it (0 where the penalizer is not prepared)."""
    pen = batch.sampling_info.penalizer_orchestrator.penalizers[penaltylib.BatchedFrequencyPenalizer]
    if not pen.is_prepared():
        return [0.0] * len(batch.reqs)
    return pen.frequency_penalties.squeeze(1).tolist()


def decode_step(batch, token: int = 5) -> None:
    """What SGLang does with a decode result for the penalizers: one output token per row."""
    batch.sampling_info.penalizer_orchestrator.cumulate_output_tokens(torch.full((len(batch.reqs),), token))


def mixed_step(running: ScheduleBatch, prefill: ScheduleBatch) -> tuple[ScheduleBatch, ScheduleBatch]:
    """SGLang's mixed step as far as the batches go: the prefill batch absorbs the running rows
    (`mix_with_running` -> `merge_batch`) and the running batch is replaced by an empty one."""
    prefill.merge_batch(running)
    return ScheduleBatch(reqs=[], batch_is_full=False), prefill


# ---- Parking ------------------------------------------------------------------------------------------------------
def test_parked_copy_survives_a_mixed_step_and_a_penalized_merge():
    """Issue 13 item 2: parked rows rejoin as the running batch after a mixed step; merging the last (mixed) batch
    with a penalized request into it must size the penalty tensors from the right rows."""
    a, b, c = FakeReq("a"), FakeReq("b"), FakeReq("c")
    running = make_batch([a, b, c])
    parking = deferral.Parking()
    assert parking.park(running, [b, c]) == 2
    assert running.reqs == [a] and parking.reqs == [b, c]
    pen = FakeReq("pen", frequency_penalty=0.5, min_new_tokens=4)
    running, last = mixed_step(running, make_batch([pen]))
    running = parking.rejoin(running)  # the running batch is empty: the parked copy becomes it
    assert running.reqs == [b, c]
    last.filter_batch()
    running.merge_batch(last)  # get_next_batch_to_run merges the last extend batch into the running batch
    assert running.reqs == [b, c, pen, a]
    assert freq_rows(running) == [0.0, 0.0, 0.5, 0.0]
    decode_step(running)  # raised "Expected index [4, 1] to be no larger than self [3, 16]" before the fix
    mnt = running.sampling_info.penalizer_orchestrator.penalizers[penaltylib.BatchedMinNewTokensPenalizer]
    assert mnt.len_output_tokens.shape[0] == 4


def test_penalty_state_follows_each_row_through_park_and_rejoin():
    reqs = [FakeReq("p0", frequency_penalty=1.0), FakeReq("p1", frequency_penalty=2.0), FakeReq("q"),
            FakeReq("p3", frequency_penalty=3.0)]
    running = make_batch(reqs)
    decode_step(running, token=7)
    parking = deferral.Parking()
    parking.park(running, [reqs[1], reqs[2]])
    decode_step(running, token=9)  # only the kept rows decode while the others sit out
    running = parking.rejoin(running)
    assert [r.rid for r in running.reqs] == ["p0", "p3", "p1", "q"]
    cum = running.sampling_info.penalizer_orchestrator.penalizers[
        penaltylib.BatchedFrequencyPenalizer].cumulated_frequency_penalties
    assert cum.shape == (4, VOCAB)
    assert cum[:, 7].tolist() == [1.0, 3.0, 2.0, 0.0]
    assert cum[:, 9].tolist() == [1.0, 3.0, 0.0, 0.0]
    assert freq_rows(running) == [1.0, 3.0, 2.0, 0.0]


def test_custom_logit_processors_follow_their_rows():
    reqs = [FakeReq("x0", processor="X"), FakeReq("y1", processor="Y"), FakeReq("n2"), FakeReq("x3", processor="X")]
    running = make_batch(reqs)
    parking = deferral.Parking()
    parking.park(running, [reqs[0], reqs[2]])
    running, last = mixed_step(running, make_batch([FakeReq("new", processor="Y")]))
    running = parking.rejoin(running)
    last.filter_batch()
    running.merge_batch(last)
    info = running.sampling_info
    names = {}
    for entry in info.custom_logit_processor.values():
        assert entry.indices.tolist() == entry.rows
        for row in entry.rows:
            names[running.reqs[row].rid] = entry.processor.name
    assert names == {"x0": "X", "x3": "X", "y1": "Y", "new": "Y"}
    assert [p["rid"] for p in info.custom_params] == [r.rid for r in running.reqs]


def test_rejoin_drops_rows_finished_while_parked_and_merges_into_a_running_batch():
    reqs = [FakeReq(f"r{i}", frequency_penalty=0.1 * (i + 1)) for i in range(4)]
    running = make_batch(reqs)
    parking = deferral.Parking()
    parking.park(running, reqs[2:])
    reqs[3].done = True
    merged = parking.rejoin(running)
    assert merged is running and [r.rid for r in merged.reqs] == ["r0", "r1", "r2"]
    assert freq_rows(merged) == pytest.approx([0.1, 0.2, 0.3])
    assert len(parking) == 0 and parking.rejoin(merged) is merged


def test_deferral_blockers():
    running = make_batch([FakeReq("a", frequency_penalty=0.5), FakeReq("b", processor="X")])
    assert deferral.batch_deferral_blocker(running) is None  # split, not shared: penalties and processors defer
    running.sampling_info.return_sampling_masks = [False, True]
    assert deferral.batch_deferral_blocker(running) == "sampling_masks"
    assert deferral.row_deferrable(FakeReq("g")) and not deferral.row_deferrable(FakeReq("l", logprob=True))


# ---- PrefillControl ---------------------------------------------------------------------------------------------
def fake_sched(waiting, chunked=None, grammar_ready=(), grammar_waiting=()):
    sched = SimpleNamespace(waiting_queue=list(waiting), chunked_req=chunked, chunked_prefill_size=2048,
                            is_mixed_chunk=False, policy=SimpleNamespace())
    return sched


def test_prefill_control_narrows_and_restores():
    w = [FakeReq(f"w{i}") for i in range(5)]
    sched = fake_sched(w)
    ctl = deferral.PrefillControl(sched, prefill_reqs=[w[3], w[1]], chunk_tokens=300, n_decode=4, mixed=True)
    assert sched.waiting_queue == [w[3], w[1]]
    assert sched.chunked_prefill_size == 304 and sched.is_mixed_chunk is True
    assert getattr(sched.policy, deferral.ORDER_ATTR) == {w[3]: 0, w[1]: 1}
    # SGLang admits w3, leaves w1, and re-queues a retracted request during the call
    retracted = FakeReq("back")
    sched.waiting_queue = [w[1], retracted]
    ctl.restore()
    assert sched.waiting_queue == [w[0], w[1], w[2], w[4], retracted]
    assert (sched.chunked_prefill_size, sched.is_mixed_chunk) == (2048, False)
    assert not hasattr(sched.policy, deferral.ORDER_ATTR) and ctl.admitted == {w[3]}


@pytest.mark.parametrize("seed", range(20))
def test_prefill_control_restore_matches_the_rebuilt_queue(seed):
    """restore edits the queue in place and stops reading at the last admitted request; the result is the queue
    rebuilt from scratch: the old queue without the admitted requests, then what SGLang re-queued and was not queued."""
    rng = random.Random(seed)
    w = [FakeReq(f"w{i}") for i in range(rng.randrange(1, 40))]
    sched = fake_sched(w)
    planned = rng.sample(w, rng.randrange(0, min(len(w), 8) + 1))
    ctl = deferral.PrefillControl(sched, prefill_reqs=planned, chunk_tokens=64, n_decode=0, mixed=False)
    admitted = set(rng.sample(planned, rng.randrange(0, len(planned) + 1)))
    extra = [FakeReq(f"back{i}") for i in range(rng.randrange(0, 3))]
    if rng.random() < 0.5:  # a request SGLang hands back although it is queued already is not queued twice
        extra.append(rng.choice(w))
    sched.waiting_queue = [r for r in planned if r not in admitted] + extra
    ctl.restore()
    queued = set(w)
    expected = [r for r in w if r not in admitted] + [r for r in extra if r not in queued]
    assert sched.waiting_queue == expected and ctl.admitted == admitted


def test_prefill_control_without_mixing_keeps_the_plain_chunk():
    w = [FakeReq("w0")]
    chunked = FakeReq("c")
    sched = fake_sched(w, chunked=chunked)
    sched.is_mixed_chunk = True  # --enable-mixed-chunk, but this plan does not mix
    ctl = deferral.PrefillControl(sched, prefill_reqs=[chunked, w[0]], chunk_tokens=100, n_decode=3, mixed=False)
    assert sched.waiting_queue == [w[0]] and sched.chunked_prefill_size == 100 and sched.is_mixed_chunk is False
    ctl.restore()
    assert sched.is_mixed_chunk is True and sched.waiting_queue == [w[0]]


def test_plan_order_is_put_back_after_sglangs_sort():
    w = [FakeReq(f"w{i}") for i in range(3)]
    policy = SimpleNamespace(**{deferral.ORDER_ATTR: {w[2]: 0, w[0]: 1}})
    queue = [w[0], w[1], w[2]]
    deferral.apply_plan_order(policy, queue)
    assert queue == [w[2], w[0], w[1]]


# ---- forward_features ---------------------------------------------------------------------------------------------
def test_forward_features_of_decode_mixed_and_idle_batches():
    class Row:  # hashable, as SGLang's Req
        def __init__(self, seqlen):
            self.seqlen = seqlen

    def req(seqlen):
        return Row(seqlen)
    d1, d2, p1, p2 = req(10), req(20), req(0), req(0)
    decode = SimpleNamespace(forward_mode=ForwardMode.DECODE, reqs=[d1, d2])
    assert deferral.forward_features(decode) == ([], [10, 20])
    mixed = SimpleNamespace(forward_mode=ForwardMode.MIXED, reqs=[p1, p2, d1, d2], decoding_reqs=[d1, d2],
                            extend_lens=[100, 50, 1, 1], prefix_lens=[0, 200, 9, 19])
    assert deferral.forward_features(mixed) == ([(100, 0), (50, 200)], [10, 20])
    prefill = SimpleNamespace(forward_mode=ForwardMode.EXTEND, reqs=[p1], decoding_reqs=None, extend_lens=[64],
                              prefix_lens=[0])
    assert deferral.forward_features(prefill) == ([(64, 0)], [])
    idle = SimpleNamespace(forward_mode=ForwardMode.IDLE, reqs=[])
    assert deferral.forward_features(idle) == ([], [])
