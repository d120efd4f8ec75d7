"""The step contract: a frozen snapshot of one scheduling step in, a plan out.

All times are seconds on one monotonic clock owned by the caller (the SGLang adapter or the simulator's event loop);
`Snapshot.now` is the only "current time" a policy may use. Token counts are plain ints.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from .cost_model import CostModel


@dataclass(frozen=True, slots=True)
class ReqView:
    """One request as a policy sees it.

    A request is in exactly one of three states, given by which tuple of the snapshot holds it:
    waiting (no KV yet, `prefilled` may be > 0 only through a prefix-cache hit), prefilling (a partial prompt
    resident in KV), or running (prompt done, decoding).
    """

    rid: str
    arrival_s: float
    """When the request reached the server (same clock as Snapshot.now)."""
    prompt_tokens: int
    """Total prompt length, prefix-cache hits included."""
    ttft_slo_s: float
    tpot_slo_s: float
    prefilled_tokens: int = 0
    """Prompt tokens already in KV (computed chunks and prefix-cache hits)."""
    output_tokens: int = 0
    """Tokens generated so far (0 until the first token)."""
    max_new_tokens: int = 128
    """Upper bound on output tokens; used to reserve KV for admission."""
    last_token_s: float | None = None
    """When the latest output token was produced (None before the first)."""
    strict: bool = False
    """A strict-SLO (paying) user, for policies that prioritise them (SLAI)."""
    first_token_s: float | None = None
    """When the first output token was produced (None before it, or when the caller does not track it). Lets a
    policy hold decodes to the TPOT measured from the first token (`fair`'s default decode anchor)."""

    @property
    def remaining_prompt_tokens(self) -> int:
        return self.prompt_tokens - self.prefilled_tokens

    @property
    def context_tokens(self) -> int:
        """KV tokens this request holds (prompt done so far plus generated tokens)."""
        return self.prefilled_tokens + self.output_tokens

    def deadline_s(self, token_index: int) -> float:
        """Envelope deadline of output token `token_index` (0 = first token): arrival + TTFT + j * TPOT."""
        return self.arrival_s + self.ttft_slo_s + token_index * self.tpot_slo_s

    @property
    def next_deadline_s(self) -> float:
        """Envelope deadline of the next token this request will produce."""
        return self.deadline_s(self.output_tokens)

    def slack_s(self, now: float) -> float:
        """Time left until the next token's envelope deadline (negative when late)."""
        return self.next_deadline_s - now


# ---- fast ReqView construction (the simulator builds millions, the adapter hundreds per step): set the slots
# directly, the same object as ReqView(...) with every field given, in 58% of the time (frozen dataclasses set each
# field through object.__setattr__)
_new = object.__new__
_SLOTS = ("rid", "arrival_s", "prompt_tokens", "ttft_slo_s", "tpot_slo_s", "prefilled_tokens", "output_tokens",
          "max_new_tokens", "last_token_s", "strict", "first_token_s")
(_s_rid, _s_arr, _s_prompt, _s_ttft, _s_tpot, _s_pf, _s_out, _s_max, _s_last, _s_strict, _s_first) = (
    ReqView.__dict__[name].__set__ for name in _SLOTS)


def fast_view(rid, arrival_s, prompt_tokens, ttft_slo_s, tpot_slo_s, prefilled_tokens, output_tokens,
              max_new_tokens, last_token_s, strict, first_token_s=None) -> ReqView:
    """ReqView(...) with every field given positionally (no validation, as ReqView has none)."""
    v = _new(ReqView)
    _s_rid(v, rid); _s_arr(v, arrival_s); _s_prompt(v, prompt_tokens); _s_ttft(v, ttft_slo_s)  # noqa: E702
    _s_tpot(v, tpot_slo_s); _s_pf(v, prefilled_tokens); _s_out(v, output_tokens); _s_max(v, max_new_tokens)  # noqa: E702
    _s_last(v, last_token_s); _s_strict(v, strict); _s_first(v, first_token_s)  # noqa: E702
    return v


@dataclass(frozen=True, slots=True)
class Snapshot:
    """Everything a policy may look at for one iteration. Policies must not keep references to engine objects."""

    now: float
    """Current time in seconds (the policy's only clock)."""
    running: tuple[ReqView, ...]
    """Requests whose prompt is done and that decode one token per iteration they take part in."""
    prefilling: tuple[ReqView, ...]
    """Partially prefilled requests (their chunks so far are resident), oldest first."""
    waiting: tuple[ReqView, ...]
    """Requests not yet started, in arrival order."""
    kv_capacity_tokens: int
    kv_used_tokens: int
    cost: CostModel
    """The current iteration-cost estimate."""
    recent_iter_s: float = 0.0
    """Mean measured iteration time over the recent past (0 when unknown); SLAI's `mean batch time`."""
    mixing_allowed: bool = True
    """Whether one forward may carry prefill chunks and decode rows together. False where the engine cannot mix
    (SGLang: a server flag that bans mixed chunks, or a running or queued request that returns logprobs): a plan
    must then be prefill-only or decode-only."""
    deferral_allowed: bool = True
    """Whether a running decode may sit out a forward that other decodes run in. False where the engine cannot
    defer (SGLang serving LoRA adapters: parked rows would escape its per-batch adapter limit): every forward that
    decodes then decodes every running request, so a plan with decode rows should list them all (`fair` does; a
    prefill-only plan still leaves them all out)."""
    one_partial_prefill: bool = True
    """Whether the engine holds one partially prefilled request at a time (SGLang's `chunked_req`, continued first
    in every step that prefills; core/prefill_shape.py). A plan that leaves a prefilling request partial (or out)
    then cannot cut another request: the engine drops that cut for the step. False only in the simulator's
    comparison mode (`EngineConfig.one_partial_prefill`)."""

    @property
    def kv_free_tokens(self) -> int:
        return max(0, self.kv_capacity_tokens - self.kv_used_tokens)


@dataclass(frozen=True, slots=True)
class Plan:
    """What to run in one iteration.

    `prefill` lists (rid, chunk tokens) in execution order for prefilling and waiting requests; `decode` lists the
    running requests that decode one token in this forward; running requests in neither `decode` nor `preempt`
    are deferred (they keep their KV and rejoin a later iteration); `preempt` lists running or prefilling requests
    whose KV is released so they restart from the waiting queue.

    `preempt` is binding in the simulator and advisory live: the SGLang adapter decodes the named rows as usual and
    leaves freeing KV to SGLang's own retraction (its status counts them as `preempt_left_to_sglang`).
    Every engine checks a plan with `core.plan_check.plan_problem` before carrying it out.
    """

    prefill: tuple[tuple[str, int], ...] = ()
    decode: tuple[str, ...] = ()
    preempt: tuple[str, ...] = ()
    budget_s: float = math.inf
    """The time budget the policy planned against (inf for token-budget policies)."""
    predicted_s: float = 0.0
    """Predicted iteration time of this plan under Snapshot.cost."""
    note: str = field(default="", compare=False)
    """Free text for logs (why the plan looks as it does)."""
    demoted: tuple[str, ...] = ()
    """Waiting or prefilling requests the policy has demoted to best effort this step (their TTFT SLO can no longer be
    met; `fair` with admission="demote"). Accounting only: the simulator marks them, and counts each as an SLO miss;
    the live adapter ignores it."""
    aged: tuple[str, ...] = ()
    """Requests in `fair`'s aged lane this step (waited past its ageing bound; they get `aged_share` of the prefill
    time). Accounting only: the live adapter reports how many (`aged_now`)."""

    @property
    def prefill_tokens(self) -> int:
        return sum(n for _, n in self.prefill)

    @property
    def is_empty(self) -> bool:
        return not self.prefill and not self.decode

    def deferred(self, snap: Snapshot) -> tuple[str, ...]:
        """Running requests that sit out this iteration (neither decoding nor preempted)."""
        active = set(self.decode) | set(self.preempt)
        return tuple(r.rid for r in snap.running if r.rid not in active)
