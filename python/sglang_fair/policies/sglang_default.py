"""`sglang-default` and `sglang-mixed`: stock SGLang 0.5.23 batch formation, as a policy the simulator can run.

Read from `sglang/srt/managers/scheduler.py` (`get_next_batch_to_run`, `get_new_batch_prefill`,
`update_running_batch`) and `schedule_policy.py` (`PrefillAdder`), default flags on an 80 GB GPU
(`arg_groups/memory_hook.py`: 60-90 GB -> `--chunked-prefill-size 8192`):

- **Prefill first.** Each step first tries a prefill batch; a decode step runs only when no prompt can be admitted
  (queue empty, or the head does not fit in KV). `sglang-default` (no `--enable-mixed-chunk`) never puts decode rows in a
  prefill step, so a stream of prompts stalls every running request.
- **Chunk budget** `rem_chunk_tokens = chunked_prefill_size - num_mixed_decode_tokens`: the partial (chunked)
  request first, then waiting requests FCFS; a request whose prompt exceeds what is left is cut to exactly what is left
  (page size 1) and ends the pass. With `--enable-mixed-chunk` (`sglang-mixed`) `num_mixed_decode_tokens` = the running
  batch size: every decode row takes one token of the budget, the prefill gets the rest (no prefill at all once the
  running batch reaches the budget), and the decode rows join the prefill forward (`mix_with_running`) when their KV
  fits; steps without prefill work are decode-only. `max_prefill_tokens` (16384) never binds below a 16k chunk and
  is left out.
- **Admission (KV).** A waiting request is admitted iff `remaining prompt + min(max_new - outputs, 4096) + 1 <
  free - num_mixed_decode_tokens - sum over running of ratio x min(max_new - outputs, 4096) - what this pass already
  took` (a request admitted in this pass is charged its chunk + 1, plus its whole clipped max_new when its prompt
  completes); the first that does not fit ends the pass. A continuing chunk takes `min(left, that remainder)`, or the
  whole budget when the remainder is <= 0 (progress), capped here by the KV really free.
- **`new_token_ratio`.** SGLang starts at `SGLANG_INIT_NEW_TOKEN_RATIO` 0.7, subtracts `(0.7 - 0.7 x 0.14) / 600` per
  decode step down to 0.098 and resets to 0.7 whenever the scheduler is idle (a retract raises it). A policy has no
  state, so the number of decode steps since the last idle moment is replaced by a lower bound read from the snapshot:
  `max(outputs - 1)` over running requests (each of those tokens came from a decode step, and the engine was busy since
  that request arrived). Simplifications: with mixed chunk, decode rows in mixed steps count too (SGLang decays only
  in decode-only steps), so the modelled ratio falls faster than SGLang's; the rise after a retract is not modelled.
- **Retract.** When a decode step finds less free KV than running requests, SGLang's `retract_decode` order is used:
  fewest outputs first, ties longest prompt first, until one token per remaining decode fits (SGLang also keeps a
  few decode steps of headroom; not modelled).
Not modelled: radix-cache eviction (the simulator has no prefix sharing), `max_running_requests` (the 400k-token
KV pool binds first on the shipped traces), overlap scheduling, priority preemption.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from ..core.checks import check_int_at_least, check_ratio
from ..core.types import Plan, ReqView, Snapshot
from .common import make_plan, preempt_until
from .registry import register_policy


@dataclass(frozen=True, slots=True)
class SglangParams:
    token_budget: int = 8192
    """`--chunked-prefill-size`, tokens per prefill step (decode rows included with mixed chunk). 8192 is SGLang's
    default on 60-160 GB GPUs; `sglang-mixed` defaults to 2048."""
    init_new_token_ratio: float = 0.7
    """`SGLANG_INIT_NEW_TOKEN_RATIO` (x `--schedule-conservativeness` 1.0)."""
    min_new_token_ratio_factor: float = 0.14
    """`SGLANG_MIN_NEW_TOKEN_RATIO_FACTOR`: the ratio decays to init x this."""
    new_token_ratio_decay_steps: int = 600
    """`SGLANG_NEW_TOKEN_RATIO_DECAY_STEPS`: decode steps from init to the minimum."""
    clip_max_new_tokens: int = 4096
    """`SGLANG_CLIP_MAX_NEW_TOKENS_ESTIMATION`: outstanding outputs counted per request at most."""

    def __post_init__(self) -> None:
        check_int_at_least("token_budget", self.token_budget, 1)
        check_ratio("init_new_token_ratio", self.init_new_token_ratio)
        check_ratio("min_new_token_ratio_factor", self.min_new_token_ratio_factor)
        check_int_at_least("new_token_ratio_decay_steps", self.new_token_ratio_decay_steps, 1)
        check_int_at_least("clip_max_new_tokens", self.clip_max_new_tokens, 1)

    def new_token_ratio(self, snap: Snapshot) -> float:
        """The modelled `new_token_ratio` (see the module docstring)."""
        lo = self.init_new_token_ratio * self.min_new_token_ratio_factor
        steps = max((r.output_tokens for r in snap.running), default=1) - 1
        decay = (self.init_new_token_ratio - lo) / self.new_token_ratio_decay_steps
        return max(lo, self.init_new_token_ratio - decay * max(0, steps))


def _retract_order(running) -> list[ReqView]:
    """SGLang's retract_decode victims: fewest outputs first, then longest prompt, then latest arrival."""
    return sorted(running, key=lambda r: (r.output_tokens, -r.prompt_tokens, -r.arrival_s, r.rid))


class _SglangStock:
    mixed = False

    def __init__(self, params: SglangParams | None = None, **kw) -> None:
        self.params = params if params is not None else SglangParams(**kw)

    def plan(self, snap: Snapshot) -> Plan:
        running = snap.running
        mixed = self.mixed and snap.mixing_allowed and bool(running)
        prefill = self._prefill(snap, len(running) if mixed else 0)
        free = snap.kv_free_tokens
        if prefill:
            left = free - sum(c for _, c in prefill)
            decodes = list(running) if mixed and left >= len(running) else []
            kind = "mixed" if decodes else "prefill"
            return make_plan(snap.cost, prefill, decodes, (), math.inf,
                             note=f"{self.name} {kind} step budget={self.params.token_budget}")
        preempt: list[str] = []
        if free < len(running):
            preempt, free, _ = preempt_until(free, len(running), [(r, True) for r in _retract_order(running)])
        gone = frozenset(preempt)
        decodes = [r for r in running if r.rid not in gone]
        return make_plan(snap.cost, [], decodes, preempt, math.inf, note=f"{self.name} decode step")

    def _prefill(self, snap: Snapshot, n_mixed: int) -> list[tuple[ReqView, int]]:
        """One PrefillAdder pass: the chunked request, then waiting requests FCFS under the chunk and KV budgets."""
        p = self.params
        clip = p.clip_max_new_tokens
        tokens_left = p.token_budget - n_mixed
        if tokens_left <= 0 or not (snap.prefilling or snap.waiting):
            return []
        ratio = p.new_token_ratio(snap)
        kv_left = snap.kv_free_tokens - n_mixed  # what the plan may really use (decode rows first)
        reserve = sum(min(max(0, r.max_new_tokens - r.output_tokens), clip) for r in snap.running) * ratio
        rem_total = kv_left - reserve  # SGLang's remaining_total (a float, as there)
        out: list[tuple[ReqView, int]] = []
        for r in snap.prefilling:  # SGLang keeps one chunked request; the snapshot's partials in order
            if tokens_left <= 0 or kv_left <= 0:
                return out
            rem = r.remaining_prompt_tokens
            if rem <= 0:
                continue
            avail = min(tokens_left, int(rem_total)) if rem_total > 0 else tokens_left
            c = min(rem, avail, kv_left)
            if c <= 0:
                return out
            out.append((r, c))
            tokens_left -= c
            kv_left -= c
            rem_total -= c + 1 + (min(max(0, r.max_new_tokens - r.output_tokens), clip) if c == rem else 0)
            if c < rem:
                return out  # still chunked: the pass ends
        for r in snap.waiting:
            if tokens_left <= 0 or rem_total <= 0 or kv_left <= 0:
                break
            rem = r.remaining_prompt_tokens
            if rem <= 0:
                continue
            max_new = min(max(0, r.max_new_tokens - r.output_tokens), clip)
            if not rem + max_new + 1 < rem_total:
                break  # NO_TOKEN: the first request that does not fit ends the pass
            c = min(rem, tokens_left)
            out.append((r, c))
            tokens_left -= c
            kv_left -= c
            rem_total -= c + 1 + (max_new if c == rem else 0)
            if c < rem:
                break  # the new chunked request uses the rest of the budget
        return out


@register_policy("sglang-default")
class SglangDefaultPolicy(_SglangStock):
    """Stock SGLang without mixed chunk: prefill steps and decode steps alternate, prefill first."""

    name = "sglang-default"
    mixed = False


@register_policy("sglang-mixed")
class SglangMixedPolicy(_SglangStock):
    """Stock SGLang with `--enable-mixed-chunk`: running decodes ride in each prefill step."""

    name = "sglang-mixed"
    mixed = True

    def __init__(self, params: SglangParams | None = None, **kw) -> None:
        kw.setdefault("token_budget", 2048)
        super().__init__(params, **kw)
