"""WindServe-style phase disaggregation (ISCA 2025; no public code: our reading of the paper): one prefill instance
(P) and one decode instance (D), i.e. the same two GPUs as a 2-replica cluster.

- P runs FCFS prefill batches of up to `prefill_batch_tokens` prompt tokens (long prompts are chunked). The last
  chunk samples the first token (TTFT); the KV then moves to D, taking `kv_transfer_s_per_token` x prompt tokens.
- D decodes every resident request each iteration (continuous batching, no token budget).
- Dynamic prefill dispatch, decided at arrival: when the predicted TTFT on P (P's queued prefill time, plus this
  prompt, plus what is left of P's current iteration) exceeds `dispatch_threshold` x ttft_slo and D can hold the
  request's prompt plus its output reservation, the prefill runs on D instead, in chunks sized so that D's iteration
  stays within `decode_tpot_fraction` x tpot_slo.
- Prefill and decode co-located on D run on separate streams: the iteration takes
  base + interference x max(decode part, prefill part) (their Fig. 8: both phases ~1.5x slower when overlapped).
- D out of KV: requests wait for the transfer (queued by ready time); a decode that cannot grow is preempted
  (latest arrival first) and recomputed on P - a simplification of WindServe's background KV migration.
"""

from __future__ import annotations

import heapq
import math
from collections import deque
from dataclasses import dataclass

from ..core.cost_model import CostModel
from .engine import EngineConfig, SimRequest, SimResult, make_requests


@dataclass(frozen=True, slots=True)
class WindServeConfig:
    prefill_batch_tokens: int = 8192
    kv_transfer_s_per_token: float = 128 * 1024 / 25e9
    """Llama-3-8B KV is 128 KiB/token; default 25 GB/s (NVLink-class) -> ~5.2 us per token."""
    dispatch_threshold: float = 0.8
    decode_tpot_fraction: float = 0.9
    interference: float = 1.5
    output_reserve_ratio: float = 0.1

    def __post_init__(self) -> None:
        if self.prefill_batch_tokens < 1 or not self.interference >= 1 or not self.kv_transfer_s_per_token >= 0:
            raise ValueError("prefill_batch_tokens >= 1, interference >= 1, kv_transfer_s_per_token >= 0 required")
        if not (0 < self.dispatch_threshold and 0 < self.decode_tpot_fraction <= 1):
            raise ValueError("dispatch_threshold > 0 and 0 < decode_tpot_fraction <= 1 required")


class _WindServe:
    def __init__(self, cost: CostModel, cfg: EngineConfig, ws: WindServeConfig):
        self.cost, self.cfg, self.ws = cost, cfg, ws
        self.p_queue: deque[SimRequest] = deque()
        self.p_queued_s = 0.0
        self.p_now = 0.0
        self.d_now = 0.0
        self.d_prefill: deque[SimRequest] = deque()
        self.incoming: list[tuple[float, int, SimRequest]] = []
        self.running: dict[str, SimRequest] = {}
        self.kv_used = 0
        self.kv_promised = 0
        self.iterations = 0
        self.busy_s = 0.0
        self.late = 0
        self.finished = 0
        self._seq = 0

    def _kv_need(self, r: SimRequest) -> int:
        return r.prefill_len + math.ceil(self.ws.output_reserve_ratio * (r.target - r.outputs))

    def dispatch(self, r: SimRequest, now: float) -> None:
        pred = max(self.p_now - now, 0.0) + self.p_queued_s + self.cost.base_s + self.cost.prefill_s(r.prefill_len)
        need = self._kv_need(r)
        cap = self.cfg.kv_capacity_tokens
        if (pred > self.ws.dispatch_threshold * r.ttft_slo and self.kv_used + self.kv_promised + need <= cap):
            self.d_prefill.append(r)
            self.kv_promised += need
        else:
            self.p_queue.append(r)
            self.p_queued_s += self.cost.prefill_s(r.prefill_len)

    def _first_token(self, r: SimRequest, end: float) -> bool:
        r.outputs += 1
        r.last = end
        if r.first is None:
            r.first = end
            self.late += end - r.arrival > r.ttft_slo
        if r.times is not None:
            r.times.append(end)
        if r.outputs >= r.target:
            self.finished += 1
            return True
        return False

    def p_step(self) -> None:
        budget, batch = self.ws.prefill_batch_tokens, []
        while self.p_queue and budget > 0:
            r = self.p_queue[0]
            c = min(budget, r.prefill_len - r.prefilled)
            batch.append((r, c))
            budget -= c
            if r.prefilled + c < r.prefill_len:
                break
            self.p_queue.popleft()
        t = self.cost.base_s + sum(self.cost.prefill_s(c, r.prefilled) for r, c in batch)
        end = self.p_now + t
        for r, c in batch:
            self.p_queued_s -= self.cost.prefill_s(r.prefill_len - r.prefilled, r.prefilled)
            r.prefilled += c
            if r.prefilled < r.prefill_len:
                self.p_queued_s += self.cost.prefill_s(r.prefill_len - r.prefilled, r.prefilled)
                continue
            if not self._first_token(r, end):
                self._seq += 1
                ready = end + self.ws.kv_transfer_s_per_token * (r.prompt + r.outputs)
                heapq.heappush(self.incoming, (ready, self._seq, r))
        self.p_queued_s = max(self.p_queued_s, 0.0) if self.p_queue else 0.0
        self.p_now = end
        self.iterations += 1
        self.busy_s += t

    def d_step(self) -> None:
        cap = self.cfg.kv_capacity_tokens
        while self.incoming and self.incoming[0][0] <= self.d_now:
            r = self.incoming[0][2]
            if self.kv_used + self.kv_promised + r.prompt + r.outputs > cap:
                break
            heapq.heappop(self.incoming)
            r.prefilled = r.prompt
            self.running[r.rid] = r
            self.kv_used += r.prompt + r.outputs
        while self.running and self.kv_used + len(self.running) > cap:  # preempt latest arrival, recompute on P
            r = max(self.running.values(), key=lambda x: x.arrival)
            del self.running[r.rid]
            self.kv_used -= r.prompt + r.outputs
            r.prefill_len, r.prefilled = r.prompt + r.outputs, 0
            r.preemptions += 1
            self.p_queue.appendleft(r)
            self.p_queued_s += self.cost.prefill_s(r.prefill_len)
        c = self.cost
        dec = list(self.running.values())
        t_dec = c.per_decode_req_s * len(dec) + c.per_context_token_s * sum(r.prompt + r.outputs for r in dec)
        chunk, r_pf = 0, None
        if self.d_prefill:
            r_pf = self.d_prefill[0]
            room = self.ws.decode_tpot_fraction * min((x.tpot_slo for x in dec), default=r_pf.tpot_slo) - c.base_s
            chunk = min(r_pf.prefill_len - r_pf.prefilled, c.max_chunk(room / self.ws.interference, r_pf.prefilled))
            chunk = max(chunk, 1) if not dec else chunk
        t_pf = c.prefill_s(chunk, r_pf.prefilled) if chunk else 0.0
        if not dec and not chunk:
            self.d_now = max(self.d_now, self.incoming[0][0]) if self.incoming else self.d_now + 1e-3
            return
        t = c.base_s + (self.ws.interference * max(t_dec, t_pf) if dec and chunk else t_dec + t_pf)
        end = self.d_now + t
        for r in dec:
            self.kv_used += 1
            if self._first_token(r, end):
                del self.running[r.rid]
                self.kv_used -= r.prompt + r.outputs
        if chunk:
            r_pf.prefilled += chunk
            if r_pf.prefilled == r_pf.prefill_len:
                self.d_prefill.popleft()
                self.kv_promised -= self._kv_need(r_pf)
                if not self._first_token(r_pf, end):
                    r_pf.prefilled = r_pf.prompt
                    self.running[r_pf.rid] = r_pf
                    self.kv_used += r_pf.prompt + r_pf.outputs
        self.d_now = end
        self.iterations += 1
        self.busy_s += t

    @property
    def d_has_work(self) -> bool:
        return bool(self.running or self.d_prefill or self.incoming)


def simulate_windserve(trace, cost: CostModel, config: EngineConfig = EngineConfig(),
                       ws: WindServeConfig = WindServeConfig(), *, stop_after_late: int | None = None,
                       progress=None) -> SimResult:
    """Replay `trace` through a WindServe prefill/decode pair (see the module docstring)."""
    sim = _WindServe(cost, config, ws)
    reqs = make_requests(trace, config)
    arrivals = trace.arrival_s.tolist()
    n, i, aborted, done = len(reqs), 0, False, 0
    while i < n or sim.p_queue or sim.d_has_work:
        t_arr = arrivals[i] if i < n else math.inf
        t_p = sim.p_now if sim.p_queue else math.inf
        t_d = max(sim.d_now, sim.incoming[0][0]) if (not sim.running and not sim.d_prefill and sim.incoming) \
            else (sim.d_now if sim.d_has_work else math.inf)
        if t_arr <= min(t_p, t_d):
            if not sim.p_queue:
                sim.p_now = max(sim.p_now, t_arr)
            if not sim.d_has_work:
                sim.d_now = max(sim.d_now, t_arr)
            sim.dispatch(reqs[i], t_arr)
            i += 1
        elif t_p <= t_d:
            sim.p_step()
        else:
            sim.d_now = max(sim.d_now, t_d)
            sim.d_step()
        if progress is not None and sim.finished != done:
            progress.update(sim.finished - done)
            done = sim.finished
        if stop_after_late is not None and sim.late > stop_after_late:
            aborted = True
            break
    return SimResult([r.record() for r in reqs], max(sim.p_now, sim.d_now), sim.iterations, sim.busy_s, aborted,
                     sum(r.preemptions for r in reqs))
