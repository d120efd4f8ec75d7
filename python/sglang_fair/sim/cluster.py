"""N simulated replicas behind a router, advanced in lockstep by event time.

Events are request arrivals (routed at their arrival time) and replica iterations (a heap of each busy replica's
next-iteration time); on a tie the arrival goes first, so a replica sees every request that arrived by the start of
its iteration.

Routers (what each one reads):
- `round_robin`: nothing.
- `least_outstanding`: the router's own in-flight count per replica (exact, updated on dispatch and completion).
- `cache_aware`: sglang-router 0.3.2's cache_aware balance rule. Loads are the router's in-flight counts; when
  imbalanced, i.e. (max - min) > balance_abs_threshold AND max > min * balance_rel_threshold (defaults 64 and 1.5,
  sglang_router.router_args.RouterArgs), it picks the shortest queue. Otherwise it routes by prefix match; traces carry
  no text, so no prefix ever matches and it picks the "smallest tree", modelled as the replica that has received the
  fewest prompt tokens so far (the tree grows with every routed prompt; eviction of its 2**26-char trees never bites).
- `power_of_two`: two replicas drawn at random (seeded), the one with the lower reported token load wins; the load
  is stock SGLang's `/get_load` figure, KV tokens in use + prompt tokens of the waiting queue.
- `fair` (ours): the replica with the largest prefill admission budget (core.load.prefill_admission_budget over
  the TTFT SLO as horizon).
The reported signals (power_of_two, fair) are polled every `load_poll_interval_s` (sglang-router polls its workers
periodically), so they may be that stale; 0 reads them fresh at every arrival.
"""

from __future__ import annotations

import heapq
import math
from dataclasses import dataclass
from typing import Callable

import numpy as np

from ..core.cost_model import CostModel
from ..core.load import prefill_admission_budget
from .engine import EngineConfig, Replica, SimRequest, SimResult, make_requests

ROUTERS = ("round_robin", "least_outstanding", "cache_aware", "power_of_two", "fair")


@dataclass(frozen=True, slots=True)
class ClusterConfig:
    replicas: int = 4
    router: str = "fair"
    load_poll_interval_s: float = 0.1
    """Staleness of the reported load signals (power_of_two, fair), seconds; 0 = fresh at every arrival."""
    balance_abs_threshold: int = 64
    balance_rel_threshold: float = 1.5
    admission_horizon_s: float | None = None
    """Horizon of the `fair` router's admission budget (None: the TTFT SLO)."""
    seed: int = 0

    def __post_init__(self) -> None:
        if self.replicas < 1:
            raise ValueError("replicas must be >= 1")
        if self.router not in ROUTERS:
            raise ValueError(f"unknown router {self.router!r}; choose one of {', '.join(ROUTERS)}")
        if not self.load_poll_interval_s >= 0:
            raise ValueError("load_poll_interval_s must be >= 0")
        if self.admission_horizon_s is not None and not self.admission_horizon_s > 0:
            raise ValueError("admission_horizon_s must be > 0")


class Router:
    """Picks a replica for each arriving request; told about dispatches and completions."""

    def __init__(self, cfg: ClusterConfig, replicas: list[Replica], horizon_s: float):
        self.cfg, self.replicas, self.horizon_s = cfg, replicas, horizon_s
        n = len(replicas)
        self.in_flight = [0] * n
        self.routed_tokens = [0] * n
        self._rr = 0
        self._rng = np.random.default_rng([cfg.seed, 7])
        self._signals: list[float] = [0.0] * n
        self._polled_at = -math.inf

    def _signal(self, rep: Replica) -> float:
        if self.cfg.router == "power_of_two":
            return float(rep.kv_used + rep.waiting_prompt_tokens)
        return float(prefill_admission_budget(rep.snapshot(), self.horizon_s).tokens)

    def _poll(self, now: float) -> list[float]:
        if now >= self._polled_at + self.cfg.load_poll_interval_s or self.cfg.load_poll_interval_s == 0:
            self._signals = [self._signal(r) for r in self.replicas]
            self._polled_at = now
        return self._signals

    def pick(self, req: SimRequest, now: float) -> int:
        kind, n = self.cfg.router, len(self.replicas)
        if kind == "round_robin":
            k = self._rr
            self._rr = (self._rr + 1) % n
            return k
        if kind == "least_outstanding":
            return min(range(n), key=self.in_flight.__getitem__)
        if kind == "cache_aware":
            loads = self.in_flight
            hi, lo = max(loads), min(loads)
            if hi - lo > self.cfg.balance_abs_threshold and hi > lo * self.cfg.balance_rel_threshold:
                return min(range(n), key=loads.__getitem__)
            return min(range(n), key=self.routed_tokens.__getitem__)
        sig = self._poll(now)
        if kind == "power_of_two":
            if n == 1:
                return 0
            a, b = self._rng.choice(n, size=2, replace=False)
            return int(a) if sig[a] <= sig[b] else int(b)
        return max(range(n), key=sig.__getitem__)  # fair: most admission budget

    def dispatched(self, k: int, req: SimRequest) -> None:
        self.in_flight[k] += 1
        self.routed_tokens[k] += req.prompt
        if self.cfg.router == "fair" and self.cfg.load_poll_interval_s > 0:
            # the router knows what it just sent: charge it against the stale budget until the next poll
            self._signals[k] -= req.prompt

    def completed(self, k: int, count: int) -> None:
        self.in_flight[k] -= count


def simulate_cluster(trace, policy_factory: Callable[[], object], cost: CostModel,
                     config: EngineConfig = EngineConfig(), cluster: ClusterConfig = ClusterConfig(), *,
                     stop_after_late: int | None = None, progress=None) -> SimResult:
    """Replay `trace` through `cluster.replicas` replicas (each with its own policy from `policy_factory`)."""
    reps = [Replica(policy_factory(), cost, config, index=k) for k in range(cluster.replicas)]
    horizon = cluster.admission_horizon_s or config.ttft_slo_ms / 1000.0
    router = Router(cluster, reps, horizon)
    reqs = make_requests(trace, config)
    arrivals = trace.arrival_s.tolist()
    n, i = len(reqs), 0
    heap: list[tuple[float, int]] = []
    queued = [False] * len(reps)
    aborted = False
    while i < n or heap:
        t_arr = arrivals[i] if i < n else math.inf
        if heap and heap[0][0] < t_arr:
            _, k = heapq.heappop(heap)
            rep = reps[k]
            before = len(rep.finished)
            rep.step()
            done = len(rep.finished) - before
            if done:
                router.completed(k, done)
                if progress is not None:
                    progress.update(done)
            if rep.has_work:
                heapq.heappush(heap, (rep.now, k))
            else:
                queued[k] = False
            if stop_after_late is not None and sum(r.late_first_tokens for r in reps) > stop_after_late:
                aborted = True
                break
            continue
        req = reqs[i]
        k = router.pick(req, t_arr)
        rep = reps[k]
        if not queued[k]:
            rep.now = max(rep.now, t_arr)
            heapq.heappush(heap, (rep.now, k))
            queued[k] = True
        rep.add(req)
        router.dispatched(k, req)
        i += 1
    return SimResult([r.record() for r in reqs], max(r.now for r in reps), sum(r.iterations for r in reps),
                     sum(r.busy_s for r in reps), aborted, sum(r.preemptions for r in reqs))

