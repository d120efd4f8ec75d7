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
- `fair` (ours): the replica with the largest prefill admission budget (core.load.prefill_admission_budget over
  the TTFT SLO as horizon).
The reported signals (power_of_two, fair) are polled every `load_poll_interval_s` (sglang-router polls its workers
periodically), so they may be that stale; 0 reads them fresh at every arrival.
"""

from __future__ import annotations

import math
from typing import Callable, Protocol

import numpy as np

from ..core.load import prefill_admission_budget
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


ROUTERS = tuple(_REGISTRY)
"""Registered router names."""


def make_router(cfg: RouterConfig, replicas: list[Replica], horizon_s: float) -> Router:
    if cfg.router not in _REGISTRY:
        raise ValueError(f"unknown router {cfg.router!r}; choose one of {', '.join(ROUTERS)}")
    return _REGISTRY[cfg.router](cfg, replicas, horizon_s)
