"""Load estimate for the upper-level router: FairBatching's "prefill admission budget" and the token number that
sglang-router's power_of_two policy reads.

Prefill admission budget (FairBatching's load estimation, arXiv 2510.14392; the formula is this project's, as the
paper does not publish one): over a horizon H (default: the TTFT SLO),

    time left  = H - decode time that keeps every running request on its envelope within H
                   - prefill time of the prompt tokens already queued (partial and waiting)
    budget     = min(prompt tokens that fit in `time left` (CostModel.max_chunk; negative when overloaded),
                     free KV - KV the admitted and queued requests still need)

A running request whose next deadline is `now + slack` owes floor((H - slack) / tpot_slo) + 1 tokens within H (none if
slack > H), at most its outstanding max_new_tokens; each costs `decode_s(context)`, and the iterations that carry them
cost `base_s` each (as many as the largest number of tokens one request owes).

power_of_two (sglang-router 0.3.2) sums the `num_tokens` of the entries `/get_load` returns and prefers the lower sum,
so the budget is turned into a non-negative "tokens of work" figure: the budget an idle instance would have minus this
one's. An idle instance reads 0; each token of lost budget reads as one more token of load.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from .cost_model import MAX_CHUNK_TOKENS, CostModel
from .kv import DEFAULT_OUTPUT_RESERVE_RATIO, output_reserve_tokens
from .types import Snapshot


@dataclass(frozen=True, slots=True)
class AdmissionBudget:
    horizon_s: float
    decode_s: float
    """Predicted time, within the horizon, of keeping every running request on its envelope."""
    queued_prefill_s: float
    """Predicted time of the prompt tokens already queued (partial prefills and waiting requests)."""
    time_tokens: int
    """Prompt tokens that fit in the time left (negative: how far over the horizon the instance already is)."""
    kv_tokens: int
    """Free KV less what admitted and queued requests still need (their prompts and outstanding outputs)."""
    tokens: int
    """The prefill admission budget: min(time_tokens, kv_tokens)."""
    idle_tokens: int
    """The budget an idle instance with the same cost model and KV capacity would have."""

    @property
    def router_load_tokens(self) -> int:
        """The power_of_two number: >= 0, lower is less loaded."""
        return router_load_tokens(self.tokens, self.idle_tokens)


def _tokens_in(cost: CostModel, seconds: float) -> int:
    """Prompt tokens whose prefill takes `seconds` (negated for a time deficit)."""
    if seconds >= 0:
        return cost.max_chunk(seconds)
    return -max(1, cost.max_chunk(-seconds))


def envelope_tokens_due(slack_s: float, tpot_slo_s: float, horizon_s: float, outstanding: int) -> int:
    """Tokens a decoding request must produce within `horizon_s` to stay on its envelope."""
    if outstanding <= 0 or slack_s > horizon_s:
        return 0
    return min(outstanding, math.floor((horizon_s - slack_s) / tpot_slo_s) + 1)


def router_load_tokens(budget_tokens: int, idle_tokens: int) -> int:
    """Admission budget -> sglang-router load: idle_tokens - budget_tokens, clipped at 0."""
    return max(0, int(idle_tokens) - int(budget_tokens))


def prefill_admission_budget(snap: Snapshot, horizon_s: float,
                             kv_reserve_output_ratio: float = DEFAULT_OUTPUT_RESERVE_RATIO) -> AdmissionBudget:
    """The new prefill tokens this instance can still admit within `horizon_s` (see the module docstring)."""
    if not (horizon_s > 0 and math.isfinite(horizon_s)):
        raise ValueError(f"horizon_s must be a finite number > 0, got {horizon_s!r}")
    cost, now = snap.cost, snap.now
    decode = 0.0
    iterations = 0
    outputs_owed = 0
    for r in snap.running:
        outstanding = r.max_new_tokens - r.output_tokens
        outputs_owed += max(0, outstanding)
        n = envelope_tokens_due(r.slack_s(now), r.tpot_slo_s, horizon_s, outstanding)
        if n:
            decode += n * cost.decode_s(r.context_tokens)
            iterations = max(iterations, n)
    queued_tokens = 0
    queued = 0.0
    for r in (*snap.prefilling, *snap.waiting):
        rem = r.remaining_prompt_tokens
        queued += cost.prefill_s(rem, r.prefilled_tokens)
        queued_tokens += rem + r.max_new_tokens - r.output_tokens
    if queued_tokens and not iterations:
        iterations = 1
    decode += cost.base_s * iterations
    time_left = horizon_s - decode - queued
    time_tokens = _tokens_in(cost, time_left)
    prefilling_outputs = sum(max(0, r.max_new_tokens - r.output_tokens) for r in snap.prefilling)
    waiting_outputs = sum(max(0, r.max_new_tokens - r.output_tokens) for r in snap.waiting)
    kv_need = (sum(r.remaining_prompt_tokens for r in (*snap.prefilling, *snap.waiting))
               + output_reserve_tokens(outputs_owed + prefilling_outputs + waiting_outputs, kv_reserve_output_ratio))
    kv_tokens = snap.kv_free_tokens - kv_need
    idle = min(_tokens_in(cost, horizon_s), snap.kv_capacity_tokens)  # what an empty instance would report
    return AdmissionBudget(horizon_s=horizon_s, decode_s=decode, queued_prefill_s=queued, time_tokens=time_tokens,
                           kv_tokens=kv_tokens, tokens=min(time_tokens, kv_tokens), idle_tokens=idle)


def prefill_token_rate(cost: CostModel, horizon_s: float) -> float:
    """Prompt tokens per second an idle instance admits within `horizon_s`: max_chunk(H) / H (the time part of an
    idle instance's budget, per second). `/v1/loads` serves it as `gen_throughput`, so that smg's
    `num_waiting_uncached_tokens / gen_throughput` reads our token load as seconds of the horizon already spoken for.
    0 when the cost model bounds no chunk (no prefill terms) or the horizon is not a finite number > 0."""
    if not (horizon_s > 0 and math.isfinite(horizon_s)):
        return 0.0
    n = cost.max_chunk(horizon_s)
    return n / horizon_s if 0 < n < MAX_CHUNK_TOKENS else 0.0
