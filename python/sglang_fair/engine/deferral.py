"""Carrying out a plan with SGLang 0.5.23's own batch tools: park/rejoin running decodes, chunk size, mixed forwards.

Deferral (a running request sits out a forward but keeps its KV and request-pool row):
- park: the running batch is split in place, before PrefillAdder budgeting and before `prepare_for_decode` /
  `mix_with_running`: a shallow copy of the batch with its own `sampling_info` is filtered to the deferred rows and
  kept aside; the running batch is filtered to the kept rows. Seq lens stay pre-increment and no `out_cache_loc` is
  allocated for parked rows. Both event loops pass a row's next input token through
  `future_map.output_tokens_buf[req_pool_idx]`, keyed by the row, so a row can stay parked for several steps.
- rejoin: at the start of every `get_next_batch_to_run` the parked rows that are still unfinished are merged back
  (or become the running batch), so every iteration's policy sees every running request and decides afresh.
Sampling state is split, not shared: the parked copy gets its own `sampling_info` whose list/dict fields are
copies and whose penalizer orchestrator is a copy bound to the parked batch (each penalizer bound to that copy), so
filter, merge and SGLang's own replacement of the running batch after a mixed or prefill step never see another
batch's rows. Penalties (frequency / presence / repetition / min-new-tokens), custom logit processors and grammar
rows are therefore deferrable. Never deferred:
- the whole step, when the batch carries state we do not split: sampling masks, speculative decoding, beam search;
  and every step of a scheduler serving LoRA adapters (SGLang's per-batch adapter limit counts the running batch);
- rows that return logprobs, and rows the in-flight result finishes (overlap loop);
- anything, when the full running batch would not fit the next decode in KV: stock retraction then sees every row.
At least one row always stays active unless the step runs a prefill.

Chunk size and mixed forwards: for one call of `Scheduler.get_new_batch_prefill` the scheduler's
`chunked_prefill_size` is set to the plan's prefill tokens plus the kept decode rows (PrefillAdder subtracts one
token per decode row in mixed mode), `is_mixed_chunk` is set when the plan has both prefill and decode rows, and
the waiting queue is narrowed to the planned requests in plan order (SchedulePolicy.calc_priority still matches
prefixes, then the order is put back to the plan's). Everything is restored in `finally`.
SGLang can realise only this shape: the in-flight chunked request first (it is always continued when a prefill
runs), then whole waiting requests, the last one possibly chunked. A plan of another shape is realised in that order
(counted as `reordered`). Left alone, the chunked request takes the whole token budget first: a plan giving it a
partial chunk (fair's aged lane gives a long aged prompt a share of each step) ran that prompt with nearly all the
step's tokens and the planned on-time requests not at all (EMULATED soak, thirty-second session: 61-78% of the
prefill steps after an overload ran fewer requests than planned). So when the plan leaves the chunked request
partial, SGLang's own per-step cap on it (`PrefillAdder.chunked_req_limit`, which SchedulePolicy's
`shortest_prefill_chunk_limit` sets) is set to its planned chunk through our hook on that method, and a planned cut
of another request is dropped for the step, since SGLang holds one partial prefill (`core/prefill_shape.py`; counted
as `chunk_limited_steps` and `cuts_dropped`). In such a step the rest of the capped request stays reserved in the
adder's KV budget (`_hold_chunked_rest`): its later chunks allocate unchecked, as stock relies on.
"""

from __future__ import annotations

import collections
import copy
import dataclasses
import functools
import weakref
from typing import Callable, Iterable

from .sglang_view import grammar_queue_hidden

ORDER_ATTR = "_sglang_fair_order"
"""Set on SGLang's SchedulePolicy object while a planned prefill is being formed: {Req: rank}."""
CHUNK_LIMIT_ATTR = "_sglang_fair_chunk_limit"
"""Set on SGLang's SchedulePolicy object while a planned prefill is being formed: the tokens SGLang's chunked request
(`scheduler.chunked_req`) may take, answered by our hook on `SchedulePolicy.shortest_prefill_chunk_limit`."""


def batch_deferral_blocker(batch) -> str | None:
    """Why no row of `batch` may be deferred this step (None: deferral allowed)."""
    info = batch.sampling_info
    if info is not None and any(getattr(info, "return_sampling_masks", None) or ()):
        return "sampling_masks"
    if getattr(batch, "spec_info", None) is not None:
        return "speculative"
    if any(getattr(r, "beam_group", None) is not None for r in batch.reqs):
        return "beam_search"
    return None


def row_deferrable(req) -> bool:
    return not req.finished() and not req.return_logprob


def split_sampling_info(info, batch):
    """A copy of SamplingBatchInfo `info` for `batch` that shares no mutable state with `info`: list and dict fields
    copied, the penalizer orchestrator copied and bound to `batch` (its penalizers bound to the copy). Tensors stay
    shared until the next filter (which re-indexes them into new tensors); in-place penalty updates only happen to
    rows of a batch that runs, after that filter."""
    new = dataclasses.replace(info)
    for f in dataclasses.fields(info):
        v = getattr(info, f.name)
        if isinstance(v, (list, dict)):
            setattr(new, f.name, copy.copy(v))
    orch = getattr(info, "penalizer_orchestrator", None)
    if orch is not None:
        new.penalizer_orchestrator = _copy_orchestrator(orch, batch)
    return new


def _copy_orchestrator(orch, batch):
    new = copy.copy(orch)
    new.batch = batch  # the orchestrator's weakref setter: prepare() during merge sizes tensors from batch.reqs
    new.penalizers = {}
    for key, pen in orch.penalizers.items():
        p = copy.copy(pen)
        p._orchestrator_ref = weakref.ref(new)
        new.penalizers[key] = p
    return new


class Parking:
    """The deferred rows of one scheduler (one ScheduleBatch or None)."""

    def __init__(self) -> None:
        self.batch = None
        self.total_parked = 0
        """Row-steps parked since start (a row parked for 3 steps counts 3)."""

    @property
    def reqs(self) -> list:
        return list(self.batch.reqs) if self.batch is not None else []

    def __len__(self) -> int:
        return len(self.batch.reqs) if self.batch is not None else 0

    def park(self, running_batch, defer: Iterable) -> int:
        """Move the rows whose Req is in `defer` out of `running_batch` (in place). Returns the rows parked."""
        assert self.batch is None, "park() before rejoin()"
        defer = set(defer)
        keep_idx, park_idx = [], []
        for i, req in enumerate(running_batch.reqs):
            (park_idx if req in defer else keep_idx).append(i)
        if not park_idx:
            return 0
        parked = copy.copy(running_batch)
        parked.sampling_info = split_sampling_info(running_batch.sampling_info, parked)
        parked.filter_batch(keep_indices=park_idx)
        running_batch.filter_batch(keep_indices=keep_idx)
        self.batch = parked
        self.total_parked += len(park_idx)
        return len(park_idx)

    def rejoin(self, running_batch):
        """Merge the unfinished parked rows back; returns the running batch to use (may be the parked one)."""
        parked, self.batch = self.batch, None
        if parked is None:
            return running_batch
        parked.filter_batch()  # drop rows finished (or aborted) while parked
        if parked.is_empty():
            return running_batch
        if running_batch is None or running_batch.is_empty():
            parked.batch_is_full = False
            return parked
        running_batch.merge_batch(parked)
        return running_batch


class RunningView:
    """The running batch as SGLang's load and invariant readers should see it: its rows plus the parked ones.

    Installed as `load_inquirer.get_running_batch` / `invariant_checker.get_running_batch` (both only read `.reqs`
    and compare identity), so `/v1/loads` and SGLang's own running-request count include deferred decodes.
    """

    def __init__(self, sched, parking: "Parking") -> None:
        self._sched, self._parking = sched, parking

    def __call__(self):
        batch = self._sched.running_batch
        if self._parking.batch is None:
            return batch
        return _BatchWithParked(batch, self._parking.reqs)


class _BatchWithParked:
    def __init__(self, batch, parked: list) -> None:
        self._batch = batch
        self.reqs = list(batch.reqs) + parked

    def __getattr__(self, name):
        return getattr(self._batch, name)


def install_running_view(sched, parking: "Parking") -> list[str]:
    """Point SGLang's readers of the running batch at RunningView; returns the components patched."""
    done = []
    for name in ("load_inquirer", "invariant_checker"):
        comp = getattr(sched, name, None)
        if comp is not None and hasattr(comp, "get_running_batch"):
            object.__setattr__(comp, "get_running_batch", RunningView(sched, parking))  # frozen dataclasses
            done.append(name)
    return done


class PrefillControl:
    """Sets the scheduler's prefill knobs for one `get_new_batch_prefill` call; `restore()` puts them back.

    Also for that call: the grammar queue is hidden (the adapter polled it this step: sglang_view.admit_ready_grammar),
    and with `parked_reqs` PrefillAdder reserves their future output KV as it does for the running batch's rows
    (`memory_budget.total_offset`), since parked rows decode again later."""

    def __init__(self, sched, *, prefill_reqs: list, chunk_tokens: int, n_decode: int, mixed: bool,
                 parked_reqs: list = (), chunked_limit: int | None = None) -> None:
        self.sched = sched
        self._grammar = grammar_queue_hidden(sched)
        self._grammar.__enter__()
        if parked_reqs or chunked_limit is not None:
            base = sched.get_prefill_adder_class()
            parked = list(parked_reqs)
            hold = chunked_limit is not None
            sched.get_prefill_adder_class = lambda: functools.partial(_adder_reserving, base, parked, hold)
        self._saved = (sched.chunked_prefill_size, sched.is_mixed_chunk, sched.waiting_queue)
        full = sched.waiting_queue
        planned = [r for r in prefill_reqs if r is not sched.chunked_req]
        self._full, self._planned = full, planned
        sched.waiting_queue = list(planned)
        sched.chunked_prefill_size = max(1, int(chunk_tokens) + (n_decode if mixed else 0))
        sched.is_mixed_chunk = bool(mixed)
        setattr(sched.policy, ORDER_ATTR, {r: i for i, r in enumerate(planned)})
        if chunked_limit is not None:
            setattr(sched.policy, CHUNK_LIMIT_ATTR, int(chunked_limit))

    def restore(self) -> None:
        sched = self.sched
        after = sched.waiting_queue
        after_set = set(after)
        admitted = {r for r in self._planned if r not in after_set}
        queue = self._full  # the queue as it was, edited in place: not read past the last admitted request
        if admitted:
            _remove_by_identity(queue, admitted)
        planned = set(self._planned)
        extra = [r for r in after if r not in planned]
        if extra:  # re-queued by SGLang during the call (preempted, grammar-ready): at the end, unless queued already
            queued = set(queue)
            queue.extend([r for r in extra if r not in queued])
        sched.waiting_queue = queue
        sched.chunked_prefill_size, sched.is_mixed_chunk, _ = self._saved
        if hasattr(sched.policy, ORDER_ATTR):
            delattr(sched.policy, ORDER_ATTR)
        if hasattr(sched.policy, CHUNK_LIMIT_ATTR):
            delattr(sched.policy, CHUNK_LIMIT_ATTR)
        if "get_prefill_adder_class" in vars(sched):
            del sched.get_prefill_adder_class
        self._grammar.__exit__(None, None, None)
        self.admitted = admitted


def _adder_reserving(base, parked: list, hold_chunked: bool, *args, **kwargs):
    """`base(*args, **kwargs)` (a PrefillAdder) whose KV budget also holds the parked rows' future outputs and, with
    `hold_chunked` (the chunked request's chunk is capped this step), the rest of that request when it stays partial
    (`_hold_chunked_rest`)."""
    adder = base(*args, **kwargs)
    adder.memory_budget.total_offset += sum(adder._get_running_request_total_token_offset(r) for r in parked)
    if hold_chunked:
        add_chunked_req = adder.add_chunked_req
        adder.add_chunked_req = lambda req: _hold_chunked_rest(adder, req, add_chunked_req(req))
    return adder


def _hold_chunked_rest(adder, req, left):
    """After `adder.add_chunked_req(req)` returned `left` (the request when it stays partial): reserve the prompt
    tokens its later chunks will allocate, and its first outputs, before anything else is admitted this step.

    SGLang admits a request it will chunk only if its whole prompt fits, and continues it with the step's whole token
    budget, so nothing else is admitted while it is partial; its continuation then allocates without a KV check
    (`PrefillBudget.fit_chunk`). With its chunk capped to the plan's share, requests admitted beside it took the KV
    its next chunk needed: the next step's continuation ran out of KV and the scheduler died (live, a 1024-token pool
    under retraction; test_kv_pressure_and_faults)."""
    if left is not None:
        from sglang.srt.managers.schedule_policy import CLIP_MAX_NEW_TOKENS
        rest = len(req.full_untruncated_fill_ids) - req.extend_end
        outputs = min(req.sampling_params.max_new_tokens, CLIP_MAX_NEW_TOKENS)
        adder.memory_budget.total_offset += adder.memory_budget.ceil_paged_tokens(max(0, rest)) + outputs
    return left


def apply_plan_order(policy_obj, waiting_queue: list) -> None:
    """After SchedulePolicy.calc_priority sorted `waiting_queue` its way, put the plan's order back."""
    order = getattr(policy_obj, ORDER_ATTR, None)
    if order:
        n = len(order)
        waiting_queue.sort(key=lambda r: order.get(r, n))


def forward_features(batch) -> tuple[list[tuple[int, int]], list[int]]:
    """(prefills [(chunk, prefix)], decode contexts) of a batch about to run, for the cost model."""
    mode = batch.forward_mode
    if mode.is_decode():
        return [], [int(r.seqlen) for r in batch.reqs]
    if not mode.is_extend():
        return [], []
    decoding = set(batch.decoding_reqs or ()) if getattr(batch, "decoding_reqs", None) else set()
    prefills, decodes = [], []
    ext = batch.extend_lens or []
    pre = batch.prefix_lens or []
    for i, req in enumerate(batch.reqs):
        e = int(ext[i]) if i < len(ext) else 0
        p = int(pre[i]) if i < len(pre) else 0
        if req in decoding:
            decodes.append(p + 1)
        else:
            prefills.append((e, p))
    return prefills, decodes


def rows_to_defer(batch, planned: set[str], *, has_prefill: bool, finishing: Callable[[object], list],
                  blocked: collections.Counter, lora: bool = False) -> tuple[list, int]:
    """(rows this step parks, how many the plan left out). The plan leaves out the running rows not in `planned`
    (decoded or preempted rids); the mechanism keeps some of them, counted by reason in `blocked`:
    - the whole step when the batch's shared state cannot be split (`batch_deferral_blocker`), when the scheduler
      serves LoRA adapters (`lora`: SGLang admits a request only if its adapter fits `--max-loras-per-batch` beside
      the adapters of the running batch, so parked rows would rejoin past that limit and fail the forward's check)
      or the full batch would not fit the next decode in KV ("kv_pressure": SGLang's retraction must see every row);
    - single rows the in-flight result finishes (`finishing(batch)`) or that cannot be parked (`row_deferrable`);
    - one row always runs when no prefill does."""
    defer = [r for r in batch.reqs if r.rid not in planned]
    n_wanted = len(defer)
    if not defer:
        return [], 0
    reason = "lora" if lora else batch_deferral_blocker(batch)
    if reason is None and not batch.check_decode_mem():
        reason = "kv_pressure"
    if reason is not None:
        blocked[reason] += 1
        return [], n_wanted
    done = set(finishing(batch))
    defer = [r for r in defer if r not in done and row_deferrable(r)]
    if len(defer) < n_wanted:
        blocked["row_not_deferrable"] += n_wanted - len(defer)
    if not has_prefill and len(defer) == len(batch.reqs):
        defer = defer[1:]  # always keep one row active when no prefill runs
    return defer, n_wanted


def _remove_by_identity(queue: list, reqs: set) -> None:
    """Delete `reqs` from `queue` in place, matching by identity. The scan reads ids only, not the queued objects,
    and stops at the last of `reqs` (early when they sit near the head, as in an arrival-ordered queue)."""
    want = {id(r) for r in reqs}
    found = []
    for i, x in enumerate(map(id, queue)):
        if x in want:
            found.append(i)
            if len(found) == len(want):
                break
    for i in reversed(found):
        del queue[i]
