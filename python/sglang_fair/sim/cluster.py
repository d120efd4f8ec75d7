"""N simulated replicas behind a router, advanced in lockstep by event time.

Events are request arrivals (routed at their arrival time) and replica iterations (a heap of each busy replica's
next-iteration time); on a tie the arrival goes first, so a replica sees every request that arrived by the start of
its iteration.

Routers: `sim/routers.py` (a registry; what each one reads is documented there).
"""

from __future__ import annotations

import heapq
import math
from dataclasses import dataclass
from typing import Callable

from ..core.checks import check_int_at_least, check_non_negative, check_positive
from ..core.cost_model import CostModel
from .engine import EngineConfig, IterationTime, Replica, SimResult, batch_kinds, make_requests
from .routers import ROUTERS, make_router


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
        check_int_at_least("replicas", self.replicas, 1)
        if self.router not in ROUTERS:
            raise ValueError(f"unknown router {self.router!r}; choose one of {', '.join(ROUTERS)}")
        check_non_negative("load_poll_interval_s", self.load_poll_interval_s)
        if self.admission_horizon_s is not None:
            check_positive("admission_horizon_s", self.admission_horizon_s)


def simulate_cluster(trace, policy_factory: Callable[[], object], cost: CostModel,
                     config: EngineConfig = EngineConfig(), cluster: ClusterConfig = ClusterConfig(), *,
                     stop_after_late: int | None = None, progress=None,
                     iteration_time: IterationTime | None = None) -> SimResult:
    """Replay `trace` through `cluster.replicas` replicas (each with its own policy from `policy_factory`).
    `iteration_time`: every replica's true batch time (e.g. the emulated device), the policies planning with `cost`,
    as `simulate`'s."""
    reps = [Replica(policy_factory(), cost, config, index=k, iteration_time=iteration_time)
            for k in range(cluster.replicas)]
    horizon = cluster.admission_horizon_s or config.ttft_slo_ms / 1000.0
    router = make_router(cluster, reps, horizon)
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
                     sum(r.busy_s for r in reps), aborted, sum(r.preemptions for r in reqs),
                     sum(r.dropped_prefill_tokens for r in reps), batch_kinds(reps))

