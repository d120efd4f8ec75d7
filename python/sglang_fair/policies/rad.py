"""`rad`: a throughput-oriented scheduler after the principles of RAD, SLAI's companion (arXiv 2508.01002).

The paper states only two principles, "optimal tiling" and "dynamic resource allocation" between prefill and decode,
and publishes no code. Our interpretation (docs/design.md, "Policies"):

- **Optimal tiling.** Iterations are sized in whole tiles of `tile_tokens` (128: the M-tile of the tensor-core GEMMs
  and of SGLang's extend-attention kernels), so the device never pays for a padded tile it does not fill. The target
  size comes from the cost model: a prefill chunk c after any prefix costs `base + c (b + a (prefix + c))`, i.e.
  `base / c + b + a (prefix + c)` per token, which is smallest at `c* = sqrt(base / a)` whatever the prefix. The target
  `N*` is c* rounded to the nearest tile (clamped to [tile, max_batch_tokens]; max_batch_tokens when a = 0). On the A100
  preset c* = 2059 -> N* = 2048.
- **Dynamic resource allocation.** Every running request decodes every iteration (decode rows are cheap and hold KV;
  deferring them gains no throughput). The prefill share follows the two backlogs: the running set needs about
  `H = outstanding outputs / running requests` more iterations to drain (H = 1 with none running), and the queued
  prompt tokens `P` are spread over the same horizon, so an iteration takes `max(N* - decodes, P / H, tile)` prefill tokens (at most
  `max_batch_tokens - decodes`, never more than is queued). A surge of prompts therefore widens the iteration up to
  `max_batch_tokens`; a large, long-lived decode set keeps it at the efficient size. The total (prefill + decode rows)
  is then rounded up to a whole tile (down when rounding up would pass `max_batch_tokens`).
- Prefills run partial first, then FCFS; admission and preemption are the shared KV rules (whole prompt plus the
  output reservation must fit; latest arrival preempted first). No SLO is looked at: RAD is the throughput baseline,
  meant to reach the stability bound (`sim.capacity.stability_bound_rps`) when no SLO is imposed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from ..core.checks import check_int_at_least, check_ratio
from ..core.cost_model import CostModel
from ..core.kv import DEFAULT_OUTPUT_RESERVE_RATIO
from ..core.types import Plan, ReqView, Snapshot
from .common import admit_fcfs, keep_every_decode, make_plan
from .registry import register_policy


@dataclass(frozen=True, slots=True)
class RadParams:
    tile_tokens: int = 128
    """Tile size in tokens: iteration token counts are whole multiples of it when the backlog allows."""
    max_batch_tokens: int = 8192
    """Cap on new tokens (prefill + decode rows) per iteration."""
    target_batch_tokens: int = 0
    """Efficient iteration size in tokens; 0 derives it from the cost model (sqrt(base / attention coefficient),
    rounded to the tile)."""
    kv_reserve_output_ratio: float = DEFAULT_OUTPUT_RESERVE_RATIO
    """Fraction of admitted requests' outstanding max_new_tokens held back in KV before admitting another."""

    def __post_init__(self) -> None:
        check_int_at_least("tile_tokens", self.tile_tokens, 1)
        check_int_at_least("max_batch_tokens", self.max_batch_tokens, self.tile_tokens)
        check_int_at_least("target_batch_tokens", self.target_batch_tokens, 0)
        check_ratio("kv_reserve_output_ratio", self.kv_reserve_output_ratio)


def efficient_tokens(cost: CostModel, tile: int, cap: int) -> int:
    """N*: the per-token-cheapest prefill chunk sqrt(base / a), rounded to the nearest tile, in [tile, cap]."""
    if cost.per_attn_token2_s <= 0.0:
        return cap // tile * tile
    c = math.sqrt(cost.base_s / cost.per_attn_token2_s)
    return max(tile, min(cap // tile * tile, int(round(c / tile)) * tile))


@register_policy("rad")
class RadPolicy:
    name = "rad"

    def __init__(self, params: RadParams | None = None, **kw) -> None:
        self.params = params if params is not None else RadParams(**kw)

    def prefill_target(self, snap: Snapshot, n_decodes: int) -> int:
        """Prefill tokens this iteration should carry (before KV and backlog limits)."""
        p = self.params
        tile, cap = p.tile_tokens, p.max_batch_tokens
        n_star = p.target_batch_tokens or efficient_tokens(snap.cost, tile, cap)
        backlog = (sum([r.remaining_prompt_tokens for r in snap.prefilling])
                   + sum([r.remaining_prompt_tokens for r in snap.waiting]))
        if snap.running:
            outputs = sum([max(1, r.max_new_tokens - r.output_tokens) for r in snap.running])
            horizon = max(1.0, outputs / len(snap.running))
        else:
            horizon = 1.0
        want = max(n_star - n_decodes, math.ceil(backlog / horizon), tile)
        total = -(-(n_decodes + want) // tile) * tile
        if total > cap:
            total = max(cap // tile * tile, -(-(n_decodes + 1) // tile) * tile)
        return max(0, total - n_decodes)

    def plan(self, snap: Snapshot) -> Plan:
        p = self.params
        preempt, decodes, free = keep_every_decode(snap)
        gone = frozenset(preempt)
        kv_left = free - len(decodes)
        prefill: list[tuple[ReqView, int]] = []
        no_mix = not snap.mixing_allowed and bool(decodes)
        if snap.prefilling or snap.waiting:
            tokens_left = self.prefill_target(snap, 0 if no_mix else len(decodes))
            for r in snap.prefilling:
                if tokens_left <= 0 or kv_left <= 0:
                    break
                if r.rid in gone or r.remaining_prompt_tokens <= 0:
                    continue
                c = min(r.remaining_prompt_tokens, tokens_left, kv_left)
                prefill.append((r, c))
                tokens_left -= c
                kv_left -= c
            if tokens_left > 0 and kv_left > 0 and snap.waiting:
                ratio = p.kv_reserve_output_ratio
                admit_fcfs(snap, prefill, gone, ratio, tokens_left, kv_left)
        if no_mix and prefill:
            decodes = []  # the engine cannot mix: prefill now, the decodes in the next step
        return make_plan(snap.cost, prefill, decodes, preempt, math.inf,
                         note=f"rad prefill={sum(c for _, c in prefill)} decodes={len(decodes)}")
