"""Simulated routers, one class each, registered by name (adding one is one class plus `@register_router`).

What each one reads:
- `round_robin`: nothing.
- `least_outstanding`: the router's own in-flight count per replica (exact, updated on dispatch and completion).
- `cache_aware`: sglang-router 0.3.2's cache_aware balance rule. Loads are the router's in-flight counts; when
  imbalanced, i.e. (max - min) > balance_abs_threshold AND max > min * balance_rel_threshold (defaults 64 and 1.5,
  sglang_router.router_args.RouterArgs), it picks the shortest queue. Otherwise it routes by prefix match; traces carry
  no text, so no prefix ever matches and it picks the "smallest tree", modelled as the replica that has received the
  fewest prompt tokens so far (the tree grows with every routed prompt; eviction of its 2**26-char trees never bites).
- `power_of_two`: two replicas drawn at random (seeded), the one with the lower reported token load wins; the load
  is stock SGLang's `/get_load` figure, KV tokens in use + prompt tokens of the waiting queue.
- `power_of_two_fair`: the same rule on the token load our `/get_load` serves (core.load.router_load_tokens):
  sglang-router 0.3.2 `--policy power_of_two` in front of sglang-fair servers.
- `fair` (ours): the replica with the largest prefill admission budget (core.load.prefill_admission_budget over
  the TTFT SLO as horizon), charging each dispatch against the polled budget until the next poll.
- `smg_least_load`: smg 1.13's `least_load` score on what our `/v1/loads` serves (engine/http.py): per replica
  Q = our token load (`num_waiting_uncached_tokens`), 0 running, T = core.load.prefill_token_rate
  (`gen_throughput`), k = KV in use / capacity (`token_usage`); score (Q + 1024 x dispatched since the poll) / T
  + 0.15 k / (1 - k) seconds (Q = 1024 x waiting requests when 0; T = 2000 when 0), lowest wins, and smg's default
  worker overload protection (>= 8 waiting requests or k >= 0.8 leaves rotation while another replica is under both).
  `smg_least_load_q64`: the same with the thresholds docs/usage.md recommends for fair servers (64, 0.95).
The reported signals (power_of_two, fair) are polled every `load_poll_interval_s` (sglang-router polls its workers
periodically), so they may be that stale; 0 reads them fresh at every arrival.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Protocol

import numpy as np

from ..core.load import prefill_admission_budget, prefill_token_rate, router_load_tokens
from .engine import Replica, SimRequest


class RouterConfig(Protocol):
    """What a router reads of `cluster.ClusterConfig`."""

    router: str
    load_poll_interval_s: float
    balance_abs_threshold: int
    balance_rel_threshold: float
    seed: int

_REGISTRY: dict[str, type["Router"]] = {}


def register_router(name: str) -> Callable[[type["Router"]], type["Router"]]:
    def deco(cls):
        if name in _REGISTRY:
            raise ValueError(f"router {name!r} registered twice")
        _REGISTRY[name] = cls
        return cls
    return deco


class Router:
    """Picks a replica for each arriving request; told about dispatches and completions."""

    def __init__(self, cfg: RouterConfig, replicas: list[Replica], horizon_s: float):
        self.cfg, self.replicas, self.horizon_s = cfg, replicas, horizon_s
        n = len(replicas)
        self.in_flight = [0] * n
        self.routed_tokens = [0] * n

    def pick(self, req: SimRequest, now: float) -> int:
        raise NotImplementedError

    def dispatched(self, k: int, req: SimRequest) -> None:
        self.in_flight[k] += 1
        self.routed_tokens[k] += req.prompt

    def completed(self, k: int, count: int) -> None:
        self.in_flight[k] -= count


@register_router("round_robin")
class RoundRobin(Router):
    def __init__(self, *args) -> None:
        super().__init__(*args)
        self._next = 0

    def pick(self, req: SimRequest, now: float) -> int:
        k = self._next
        self._next = (self._next + 1) % len(self.replicas)
        return k


@register_router("least_outstanding")
class LeastOutstanding(Router):
    def pick(self, req: SimRequest, now: float) -> int:
        return min(range(len(self.replicas)), key=self.in_flight.__getitem__)


@register_router("cache_aware")
class CacheAware(Router):
    def pick(self, req: SimRequest, now: float) -> int:
        n, loads = len(self.replicas), self.in_flight
        hi, lo = max(loads), min(loads)
        if hi - lo > self.cfg.balance_abs_threshold and hi > lo * self.cfg.balance_rel_threshold:
            return min(range(n), key=loads.__getitem__)
        return min(range(n), key=self.routed_tokens.__getitem__)


class PolledRouter(Router):
    """A router on a per-replica signal that it polls every `load_poll_interval_s` (0: fresh at every arrival)."""

    def __init__(self, *args) -> None:
        super().__init__(*args)
        self._signals: list[float] = [0.0] * len(self.replicas)
        self._polled_at = -math.inf

    def signal(self, rep: Replica) -> float:
        raise NotImplementedError

    def poll(self, now: float) -> list[float]:
        if now >= self._polled_at + self.cfg.load_poll_interval_s or self.cfg.load_poll_interval_s == 0:
            self._signals = [self.signal(r) for r in self.replicas]
            self._polled_at = now
        return self._signals


@register_router("power_of_two")
class PowerOfTwo(PolledRouter):
    def __init__(self, *args) -> None:
        super().__init__(*args)
        self._rng = np.random.default_rng([self.cfg.seed, 7])

    def signal(self, rep: Replica) -> float:
        return float(rep.kv_used + rep.waiting_prompt_tokens)

    def pick(self, req: SimRequest, now: float) -> int:
        n = len(self.replicas)
        sig = self.poll(now)
        if n == 1:
            return 0
        a, b = self._rng.choice(n, size=2, replace=False)
        return int(a) if sig[a] <= sig[b] else int(b)


@register_router("power_of_two_fair")
class PowerOfTwoFair(PowerOfTwo):
    """sglang-router 0.3.2's power_of_two in front of sglang-fair servers: the token load our `/get_load` serves
    (core.load's router_load_tokens of the admission budget), polled, with no correction between polls (the router
    charges nothing for what it dispatched since: with two replicas every request until the next poll goes to the
    one that read lower)."""

    def signal(self, rep: Replica) -> float:
        return float(prefill_admission_budget(rep.snapshot(), self.horizon_s).router_load_tokens)


@register_router("fair")
class FairLoad(PolledRouter):
    def signal(self, rep: Replica) -> float:
        return float(prefill_admission_budget(rep.snapshot(), self.horizon_s).tokens)

    def pick(self, req: SimRequest, now: float) -> int:
        sig = self.poll(now)
        return max(range(len(self.replicas)), key=sig.__getitem__)  # most admission budget

    def dispatched(self, k: int, req: SimRequest) -> None:
        super().dispatched(k, req)
        if self.cfg.load_poll_interval_s > 0:
            # the router knows what it just sent: charge it against the stale budget until the next poll
            self._signals[k] -= req.prompt


@dataclass(frozen=True, slots=True)
class SmgLoad:
    """One worker's `/v1/loads` reading, as smg 1.13 keeps it (summed over DP ranks)."""

    waiting_uncached_tokens: int
    waiting_reqs: int
    running_reqs: int
    token_usage: float
    gen_throughput: float


SMG_MEAN_PREFILL_TOKENS = 1024
"""smg's `--least-load-mean-prefill-tokens`: tokens charged per request dispatched since the last poll."""
SMG_DEFAULT_THROUGHPUT = 2000.0
"""smg's `--least-load-default-throughput`, used when a worker reports gen_throughput 0."""
SMG_KV_WEIGHT_S = 0.15
"""smg's `--least-load-kv-pressure-weight`."""


def smg_least_load_score(load: SmgLoad, dispatched_since_poll: int = 0) -> float:
    """smg 1.13's least_load / power_of_two (expected_wait) score, seconds: lower is less loaded."""
    q = load.waiting_uncached_tokens or SMG_MEAN_PREFILL_TOKENS * load.waiting_reqs
    t = load.gen_throughput if load.gen_throughput > 0 else SMG_DEFAULT_THROUGHPUT
    k = min(max(load.token_usage, 0.0), 0.999)
    work = q + SMG_MEAN_PREFILL_TOKENS * (load.running_reqs + dispatched_since_poll)
    return work / t + SMG_KV_WEIGHT_S * k / (1.0 - k)


@register_router("smg_least_load")
class SmgLeastLoad(PolledRouter):
    """smg `--policy least_load` in front of sglang-fair servers (our /v1/loads), with smg's default overload
    protection. Dispatches since the last poll are charged SMG_MEAN_PREFILL_TOKENS each, reset at every poll."""

    overload_waiting_reqs = 8
    overload_token_usage = 0.8

    def __init__(self, *args) -> None:
        super().__init__(*args)
        self._since_poll = [0] * len(self.replicas)

    def signal(self, rep: Replica) -> SmgLoad:
        snap = rep.snapshot()
        b = prefill_admission_budget(snap, self.horizon_s)
        cap = max(1, snap.kv_capacity_tokens)
        return SmgLoad(waiting_uncached_tokens=router_load_tokens(b.tokens, b.idle_tokens),
                       waiting_reqs=len(rep.waiting) + len(rep.requeued), running_reqs=0,
                       token_usage=snap.kv_used_tokens / cap,
                       gen_throughput=prefill_token_rate(snap.cost, self.horizon_s))

    def poll(self, now: float) -> list:
        if now >= self._polled_at + self.cfg.load_poll_interval_s or self.cfg.load_poll_interval_s == 0:
            self._since_poll = [0] * len(self.replicas)
        return super().poll(now)

    def pick(self, req: SimRequest, now: float) -> int:
        loads = self.poll(now)
        n = len(self.replicas)
        ok = [k for k in range(n) if loads[k].waiting_reqs < self.overload_waiting_reqs
              and loads[k].token_usage < self.overload_token_usage]
        return min(ok or range(n), key=lambda k: smg_least_load_score(loads[k], self._since_poll[k]))

    def dispatched(self, k: int, req: SimRequest) -> None:
        super().dispatched(k, req)
        self._since_poll[k] += 1


@register_router("smg_least_load_q64")
class SmgLeastLoadDeepQueue(SmgLeastLoad):
    """smg_least_load with the overload thresholds docs/usage.md recommends for FairBatching's deeper waiting queue
    (`--worker-overload-waiting-requests 64 --worker-overload-token-usage 0.95`)."""

    overload_waiting_reqs = 64
    overload_token_usage = 0.95


ROUTERS = tuple(_REGISTRY)
"""Registered router names."""


def make_router(cfg: RouterConfig, replicas: list[Replica], horizon_s: float) -> Router:
    if cfg.router not in _REGISTRY:
        raise ValueError(f"unknown router {cfg.router!r}; choose one of {', '.join(ROUTERS)}")
    return _REGISTRY[cfg.router](cfg, replicas, horizon_s)
