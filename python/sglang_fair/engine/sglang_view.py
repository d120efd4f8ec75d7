"""What the policy must see of SGLang 0.5.23's queues that SGLang itself only prepares inside the batch-forming call
a plan may skip or narrow: grammar requests that became ready, radix-cache hits of the whole waiting view, whether
this step may mix prefill and decode, and rows of the last extend batch not merged into the running batch yet.

- Grammar. SGLang moves requests whose grammar finished compiling from `grammar_manager.grammar_queue` to the waiting
  queue only at the top of `_get_new_batch_prefill_raw`. The adapter skips that call when a plan has no prefill, so
  it polls once per step itself (`admit_ready_grammar`), before the snapshot, and `PrefillControl` hides the queue
  during the call so the step polls only once (the poll counts towards SGLang's grammar time-out).
- Prefix hits. `req.prefix_len` is set by prefix matching; `SchedulePolicy.calc_priority` matches only the queue it
  is given (the adapter narrows it to the plan) and with the default FCFS policy not even that. `PrefixMatcher`
  matches each waiting request once when first seen and the oldest PREFIX_MATCH_HEAD every step (SGLang's own LPM
  policy matches up to 128 every step), with SGLang's `match_kv_cache`.
- Mixing. SGLang mixes a prefill with the running decodes only when no running or new row returns logprobs, the
  new batch has no input embeddings and no beam rows run (`_get_new_batch_prefill_raw`); and its argument
  validators refuse `--enable-mixed-chunk` with CP-TP group sharing, LayerNorm SP (MegaMoE), HiSparse, encoder SWA
  bounded replay, speculative decoding and diffusion LLMs. The adapter forces `is_mixed_chunk` for mixed plans, so it
  must tell the policy (`Snapshot.mixing_allowed`) where mixing is not possible, and reject mixed plans there.
- Unmerged rows. After a prefill or mixed step the requests of `last_batch` join the running batch only at the start
  of the next step; between steps (when the status RPC is answered) they are in no batch the status reads.
"""

from __future__ import annotations

import contextlib
import heapq
import weakref

PREFIX_MATCH_HEAD = 64
"""Waiting requests (oldest first) whose radix-cache hit is matched again every step."""

_MIXING_BANS = (
    ("enable_cp_tp_group_sharing", "CP-TP group sharing"),
    ("enable_layernorm_sp", "--enable-layernorm-sp"),
    ("enable_hisparse", "--enable-hisparse"),
    ("enable_encoder_swa_bounded_replay", "--enable-encoder-swa-bounded-replay"),
    ("speculative_algorithm", "--speculative-algorithm"),
    ("dllm_algorithm", "--dllm-algorithm"),
)
"""Server settings (ServerArgs attribute, flag) with which SGLang 0.5.23 refuses mixed chunks."""


def admit_ready_grammar(sched) -> int:
    """Move grammar requests whose grammar is ready (or failed) to the waiting queue, as SGLang's
    `_get_new_batch_prefill_raw` does first thing. Returns how many moved."""
    gm = getattr(sched, "grammar_manager", None)
    if gm is None or not gm.has_waiting_grammars():
        return 0
    ready = gm.get_ready_grammar_requests()
    for req in ready:
        sched._add_request_to_queue(req)
    return len(ready)


@contextlib.contextmanager
def grammar_queue_hidden(sched):
    """SGLang's grammar queue reads as empty inside the block (the adapter polled it this step; a second poll would
    count twice towards the grammar time-out, and with TP it is a collective every rank must call equally often)."""
    gm = getattr(sched, "grammar_manager", None)
    if gm is None or not getattr(gm, "grammar_queue", None):
        yield
        return
    queue, gm.grammar_queue = gm.grammar_queue, []
    try:
        yield
    finally:
        gm.grammar_queue = queue + gm.grammar_queue


def mixing_bans(sched) -> list[str]:
    """The server flags under which SGLang would not mix prefill and decode (empty when `--enable-mixed-chunk` was
    given: SGLang then validated mixing for this server itself)."""
    args = getattr(sched, "server_args", None)
    if args is None or getattr(args, "enable_mixed_chunk", False):
        return []
    return [flag for attr, flag in _MIXING_BANS if getattr(args, attr, None)]


def blocks_mixing(queued_req) -> bool:
    """Whether this queued (waiting or chunked) request keeps SGLang from mixing: it returns logprobs or has input
    embeddings."""
    return bool(getattr(queued_req, "return_logprob", False)) or getattr(queued_req, "input_embeds", None) is not None


def mixing_allowed(running_reqs, chunked_req, queue_blocks: bool) -> bool:
    """Whether SGLang's mixing condition can hold this step, given the requests that may run, the chunked request and
    whether a waiting request blocks mixing (`blocks_mixing` of any; the waiting mirror keeps that count)."""
    if queue_blocks or (chunked_req is not None and blocks_mixing(chunked_req)):
        return False
    return not any(r.return_logprob or r.beam_group is not None for r in running_reqs)


class PrefixMatcher:
    """Keeps `req.prefix_len` of waiting requests current (see the module docstring)."""

    def __init__(self, head: int = PREFIX_MATCH_HEAD, on_match=None) -> None:
        self.head = head
        self._seen: weakref.WeakSet = weakref.WeakSet()
        self.matches = 0
        self.on_match = on_match
        """Called with the requests matched in a step (the waiting mirror re-reads their prefix hits)."""

    def match(self, sched) -> None:
        tree = sched.tree_cache
        waiting = sched.waiting_queue
        if not waiting or tree is None or not tree.supports_prefix_sharing():
            return
        from sglang.srt.mem_cache.common import match_kv_cache
        head = waiting if len(waiting) <= self.head else heapq.nsmallest(
            self.head, waiting, key=lambda r: r.time_stats.wait_queue_entry_time)
        todo = {id(r): r for r in head}
        seen = self._seen
        todo.update((id(r), r) for r in waiting if r not in seen)
        matched = []
        for req in todo.values():
            if not req.finished():
                # as SGLang's own rounds: at most all but the last token (which must be computed)
                match_kv_cache(req, tree, max_prefix_len=max(len(req.origin_input_ids) + len(req.output_ids) - 1, 0))
                seen.add(req)
                matched.append(req)
        self.matches += len(matched)
        if self.on_match is not None and matched:
            self.on_match(matched)


def unmerged_rows(sched, counted: list) -> list:
    """Unfinished requests of the last extend batch that are neither the chunked request nor in `counted`."""
    last = getattr(sched, "last_batch", None)
    if last is None or last.forward_mode is None or not last.forward_mode.is_extend():
        return []
    skip = {id(r) for r in counted}
    chunked = sched.chunked_req
    return [r for r in last.reqs
            if r is not chunked and id(r) not in skip and not r.finished() and not r.is_retracted]
