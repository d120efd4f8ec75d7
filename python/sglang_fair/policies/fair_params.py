"""`fair`'s parameters (policies/fair.py), with their units, defaults and validation. Each default is there for a
measured reason given in its docstring (docs/results.md, docs/decisions.md)."""

from __future__ import annotations

import math
from dataclasses import dataclass

from ..core.checks import check_int_at_least, check_ratio
from ..core.kv import DEFAULT_OUTPUT_RESERVE_RATIO


@dataclass(frozen=True, slots=True)
class FairParams:
    min_budget_ms: float = 5.0
    """Floor of the per-iteration time budget, milliseconds."""
    max_budget_ms: float = 1000.0
    """Cap of the per-iteration time budget, milliseconds (bounds the iteration a far-ahead decode set allows)."""
    min_prefill_chunk_tokens: int = 16
    """A last prefill chunk smaller than this (and smaller than the remaining prompt) is not started; the head prefill
    of an otherwise empty engine always gets at least this many tokens (KV permitting)."""
    max_token_gap_tpot: float = 5.0
    """TBT guard on top of the envelope: no gap between two tokens of a decode longer than this many of its own
    tpot_slo (math.inf disables it). With `gap_caps_budget` the budget never runs past a decode's gap deadline
    (its last token + this x tpot_slo) and a decode is urgent one tpot_slo before it; without, a decode is urgent
    only when this iteration alone would pass it."""
    gap_caps_budget: bool = True
    """Make `max_token_gap_tpot` a bound: the gap deadlines cap the budget as the envelope does. False: the guard
    as before the thirteenth session, which let a gap reach the bound plus one whole budget (simulated: 600 ms gaps
    at a 100 ms TPOT SLO for most Azure conv requests; docs/results.md, "Token gaps")."""
    kv_reserve_output_ratio: float = DEFAULT_OUTPUT_RESERVE_RATIO
    """Fraction of admitted requests' outstanding max_new_tokens held back in KV before admitting another."""
    decode_anchor: str = "first_token"
    """Decode deadlines: "first_token" = first_token_s + j * tpot_slo (keeps the TPOT metric, which is measured from
    the first token; falls back to "arrival" for a request whose first token time is unknown) or "arrival" =
    arrival + ttft_slo + j * tpot_slo (the FairBatching envelope, which lets TTFT slack delay decodes)."""
    catchup_tokens: int = 0
    """With the first-token anchor: a decode may fall behind its per-token deadline by what its next
    `catchup_tokens` tokens (at most those it still has to produce) can win back at the current decode step time,
    `min(k, remaining - 1) * max(0, tpot_slo - step)`, since TPOT is an average over the output (0: per-token deadlines,
    as the paper). The `max_token_gap_tpot` guard still bounds every gap."""
    prefill_window_reqs: int = 256
    """Waiting requests are taken EDF among the oldest few, then FCFS. The window is 1 + (prompt tokens that can
    still fit this iteration) // min_prefill_chunk_tokens, capped by this (0: no cap). Bounds the planning cost of a
    long queue; see docs/design.md."""
    full_kv_progress: bool = False
    """With no free KV and no urgent decode, treat the least-slack decode as urgent, so it preempts now (most slack
    first) instead of the engine idling until a decode turns urgent. Off by default (plans change only when KV is full).
    """
    recover_tpot: bool = True
    """A decode behind its envelope (slack < its tpot_slo, after an iteration ran longer than planned) caps the
    budget at the iteration length that still lands its last token on time if every iteration until then is that
    long: `tpot + (slack - tpot) / tokens left` (tokens left from max_new_tokens). TPOT is measured from the first
    to the last token, so a row late by d wins d back over its remaining tokens instead of staying late by d. A row
    that cannot make it even at the progress floor does not shrink the budget. Plans change only while some decode
    is behind; with an exact cost model none ever is (docs/results.md: it raised the noisy A100's Azure code cells and
    left every other simulated cell unchanged; False: the budget stays at least one TPOT, as before)."""
    lost_decode: str = "gap"
    """A decode past saving: behind its envelope so far that no iteration length above the progress floor lands its
    last token on time (`recover_tpot` already leaves it out), as when its TPOT SLO is below what the device's decode
    step costs. Its envelope keeps the budget at one TPOT, and where a step that carries the smallest prefill chunk
    costs more than that, no prompt gets a step until the decode ends (seen live: an 8-token prompt waited out a
    300-token decode whose 50 ms SLO a slow host could not hold). "gap" (the default): when the plan by the envelopes
    carries no prefill while prompts wait (and KV has room beyond the decodes' next tokens), fair plans again with
    each such decode's slack taken to its token-gap deadline (`max_token_gap_tpot`), so the prompts get the time up
    to that bound (and at least the step that carries the smallest chunk, where the bound is below that step); it
    misses its TPOT either way.
    "envelope": the plan by the envelopes stands (before the twenty-second session). Simulated capacity: every cell
    the same either way (docs/results.md, "A decode past saving")."""
    admission: str = "demote-longest"
    """SLO-aware admission: "off" (every request is served EDF), "demote" (a waiting request whose TTFT can no
    longer be met is served after the on-time ones and reported in `Plan.demoted`) or "demote-longest" (the default:
    when one would be late, the longest kept prompt is demoted instead: Moore-Hodgson, fewest late requests; it
    raised simulated capacity in every cell measured, docs/results.md). See policies/admission.py. Refusing at
    arrival (HTTP 429) is the server's `--fair-admission reject`."""
    demote_max_wait_ttft: float = 5.0
    """With admission on: a waiting request that has waited more than this many of its TTFT SLOs is no longer
    demoted; it joins the aged lane (`aged_share` of each iteration's prefill time; with `aged_share=1` it goes first,
    its deadline being long past). Bounds how long demotion postpones a request under sustained overload, where a
    demoted request otherwise waits for the overload to end (math.inf: no bound; docs/results.md)."""
    aged_share: float = 0.1
    """With admission on and a finite `demote_max_wait_ttft`: the share of each iteration's prefill time that the
    aged requests (waited more than `demote_max_wait_ttft` TTFT SLOs, partial prefills among them) get, oldest first,
    while on-time prefill waits; the on-time requests keep the rest, and any time they leave goes to the aged and then
    to the demoted. So an aged request makes progress every iteration (at least this share of the prefill time when
    it heads the aged) without making on-time requests late; the admission walk judges on-time work knowing it.
    A step that the urgent decodes alone overrun (decode-only otherwise) still gives the aged requests this share of
    the step (the decodes' time x share / (1 - share), at most `max_budget_ms`; at least the smallest chunk; where
    the engine mixes), also where no lane was formed (admission off, or only partial prefills queued), so prompts are
    not held for as long as the decodes stay over budget (seen live on a contended host: minutes, with 1000 waiting;
    simulated on a device slower than the decodes' SLO: about a minute; docs/results.md).
    1: aged requests go first with the whole iteration, EDF (their deadline is long past; the default before the
    seventeenth session, which under sustained overload made on-time requests late in turn); 0: they wait behind
    every on-time request, as with no ageing bound. 0.1 raised simulated 90%-attainment capacity in all 24 cells
    measured and changed no tail capacity (docs/results.md, "Aged requests in a lane of their own"). The share is of
    time, not KV: where KV is full, on-time requests are admitted first, so an aged prompt's wait for KV is bounded
    only with 1."""
    partial_slot: str = "on_time"
    """Where the engine holds one partial prefill (`Snapshot.one_partial_prefill`, SGLang) and the aged lane has
    requests, who may start the next partial one (the step's one cut): "alternate": the lane, when the partial
    prefill at the step's start was an on-time request, else on-time work (so aged prompts start in turns and keep
    progressing under sustained overload); "on_time": on-time work always first (the lane cuts only when on-time
    work leaves no cut)."""
    tpot_margin: float = 0.02
    """Fraction of each request's TPOT SLO the envelope holds back: decode deadlines (and the budget, urgency,
    recovery and gap guard built on them) use tpot_slo x (1 - tpot_margin). The envelope spends a decode's slack
    to the last millisecond, so where the planner's model is not exact an iteration that runs a little long puts
    a short output's TPOT just over the SLO with no token left to win it back (simulated on the emulated device's
    model: Azure code's misses were 6-13-token outputs at 100.2-100.9 ms; docs/results.md)."""
    demoted_slot: str = "after_aged"
    """Where the demoted requests (not yet aged) are served while the aged lane holds requests: "after_aged" (after
    the lane, with what time is left) or "before_aged" (right after on-time work, in its 1 - `aged_share` of the
    time; the lane keeps its share). "before_aged" serves the requests demoted just after an overload within
    seconds instead of behind the overload's backlog (simulated overload: P99 TTFT of the phase after it 412 s ->
    4.5 s), but a long demoted prompt then holds SGLang's one partial prefill, which is continued first, and on
    the emulated device's model it cost Azure code 4-8% of its 90%-attainment capacity (docs/results.md, "Demoted
    requests before the aged lane"), so it is not the default."""
    prefill_order: str = "edf"
    """With admission on, the order of the waiting requests it judges on time: "edf" (earliest TTFT deadline first,
    the paper's) or "sjf" (shortest remaining prompt first, ties in EDF order; slai's order within what admission
    keeps). "sjf" trades the tail for attainment on Azure conv (the emulated device's model, TPOT 100 ms:
    90%-attainment capacity +7.9%, tail capacity -3.2%) and loses on Azure code and ShareGPT (docs/results.md, "slai's
    order in fair"), so it is not the default. With admission off, or no request judged on time, EDF as ever."""
    admission_window_reqs: int = 64
    """With admission on: how many waiting requests whose TTFT deadline is still ahead are judged each step, the
    oldest (0: all). Requests past their deadline are always judged (demoted unless aged); the others beyond the
    window follow the judged on-time ones unjudged until they reach it. Bounds the planning cost of a long queue
    (the judgement is a Python walk, about a microsecond a request); see policies/admission.py."""

    def __post_init__(self) -> None:
        for name in ("min_budget_ms", "max_budget_ms"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not (0 < v < math.inf):
                raise ValueError(f"{name} must be a finite number > 0, got {v!r}")
        if self.max_budget_ms < self.min_budget_ms:
            raise ValueError(f"max_budget_ms ({self.max_budget_ms}) must be >= min_budget_ms ({self.min_budget_ms})")
        check_int_at_least("min_prefill_chunk_tokens", self.min_prefill_chunk_tokens, 1)
        g = self.max_token_gap_tpot
        if isinstance(g, bool) or not isinstance(g, (int, float)) or not g >= 1.0:
            raise ValueError(f"max_token_gap_tpot must be >= 1 (math.inf disables it), got {g!r}")
        check_ratio("kv_reserve_output_ratio", self.kv_reserve_output_ratio)
        check_int_at_least("prefill_window_reqs", self.prefill_window_reqs, 0)
        check_int_at_least("catchup_tokens", self.catchup_tokens, 0)
        check_int_at_least("admission_window_reqs", self.admission_window_reqs, 0)
        if self.decode_anchor not in ("first_token", "arrival"):
            raise ValueError(f"decode_anchor must be 'first_token' or 'arrival', got {self.decode_anchor!r}")
        for name in ("full_kv_progress", "recover_tpot", "gap_caps_budget"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name} must be a bool, got {getattr(self, name)!r}")
        m = self.tpot_margin
        if isinstance(m, bool) or not isinstance(m, (int, float)) or not 0.0 <= m < 0.5:
            raise ValueError(f"tpot_margin must be in [0, 0.5), got {m!r}")
        w = self.demote_max_wait_ttft
        if isinstance(w, bool) or not isinstance(w, (int, float)) or not w > 0:
            raise ValueError(f"demote_max_wait_ttft must be > 0 (math.inf: no bound), got {w!r}")
        s = self.aged_share
        if isinstance(s, bool) or not isinstance(s, (int, float)) or not 0.0 <= s <= 1.0:
            raise ValueError(f"aged_share must be in [0, 1], got {s!r}")
        if self.partial_slot not in ("alternate", "on_time"):
            raise ValueError(f"partial_slot must be 'alternate' or 'on_time', got {self.partial_slot!r}")
        if self.lost_decode not in ("envelope", "gap"):
            raise ValueError(f"lost_decode must be 'envelope' or 'gap', got {self.lost_decode!r}")
        if self.demoted_slot not in ("after_aged", "before_aged"):
            raise ValueError(f"demoted_slot must be 'after_aged' or 'before_aged', got {self.demoted_slot!r}")
        if self.prefill_order not in ("edf", "sjf"):
            raise ValueError(f"prefill_order must be 'edf' or 'sjf', got {self.prefill_order!r}")
        if self.admission not in ("off", "demote", "demote-longest"):
            raise ValueError(f"admission must be 'off', 'demote' or 'demote-longest', got {self.admission!r}")
