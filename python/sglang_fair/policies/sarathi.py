"""`sarathi`: stall-free batching as in Sarathi-Serve and stock SGLang's mixed chunked prefill.

Every iteration: all running decodes (one token each), then the partial prefills in order, then new prefills FCFS,
each chunk = min(remaining prompt, token_budget - tokens already in the batch). Decode tokens count against the
budget, as SGLang's mixed chunk subtracts the running batch size from `--chunked-prefill-size`. A decode is never
deferred, except where the engine cannot mix (`Snapshot.mixing_allowed` false): then, as SGLang without mixed chunk,
a step with prefill work is prefill-only and the decodes run in the next step. When KV cannot hold one more token
per running request, requests are preempted latest arrival first (partial prefills before decodes), as vLLM does.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..core.checks import check_int_at_least, check_ratio
from ..core.kv import DEFAULT_OUTPUT_RESERVE_RATIO
from ..core.types import Plan, ReqView, Snapshot
from .common import admit_fcfs, keep_every_decode, make_plan
from .registry import register_policy


@dataclass(frozen=True, slots=True)
class SarathiParams:
    token_budget: int = 512
    """Tokens per iteration, decodes included (SGLang `--chunked-prefill-size`; 512 strict, 2048 relaxed)."""
    kv_reserve_output_ratio: float = DEFAULT_OUTPUT_RESERVE_RATIO
    """Fraction of each admitted request's outstanding max_new_tokens held back in KV before admitting another
    (SGLang's `new_token_ratio`, which decays to about 0.1 in steady state)."""

    def __post_init__(self) -> None:
        check_int_at_least("token_budget", self.token_budget, 1)
        check_ratio("kv_reserve_output_ratio", self.kv_reserve_output_ratio)


@register_policy("sarathi")
class SarathiPolicy:
    name = "sarathi"

    def __init__(self, params: SarathiParams | None = None, **kw) -> None:
        self.params = params if params is not None else SarathiParams(**kw)

    def plan(self, snap: Snapshot) -> Plan:
        p = self.params
        preempt, decodes, free = keep_every_decode(snap)
        gone = frozenset(preempt)
        kv_left = free - len(decodes)
        no_mix = not snap.mixing_allowed  # then a prefill step carries no decode (SGLang without mixed chunk)
        tokens_left = p.token_budget - (0 if no_mix else len(decodes))
        prefill: list[tuple[ReqView, int]] = []
        for r in snap.prefilling:
            if tokens_left <= 0 or kv_left <= 0:
                break
            if r.rid in gone or r.remaining_prompt_tokens <= 0:
                continue
            c = min(r.remaining_prompt_tokens, tokens_left, kv_left)
            prefill.append((r, c))
            tokens_left -= c
            kv_left -= c
        if tokens_left > 0 and snap.waiting:
            ratio = p.kv_reserve_output_ratio
            # what admitted requests still need, less the chunks of partial prefills planned above
            admit_fcfs(snap, prefill, gone, ratio, tokens_left, kv_left)
        if no_mix and prefill:
            decodes = []  # prefill first, as SGLang runs it without mixing; the decodes run in the next step
        return make_plan(snap.cost, prefill, decodes, preempt, float("inf"),
                         note=f"sarathi budget={p.token_budget} left={tokens_left}")
