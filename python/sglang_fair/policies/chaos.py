"""`chaos`: a testing aid that wraps a real policy and, on a fixed schedule, makes it fail.

Not a scheduling policy and not registered under a name: the adapter builds it only when the runtime config's
`policy_params` carry a `"chaos"` object (`CHAOS_KEY`), e.g.

    RuntimeConfig(policy="fair", policy_params={"chaos": {"every_n_steps": 3}})

`sglang-fair serve` rejects that key (`--fair-param chaos=...` fails the policy's parameter check), so a
production command line cannot switch it on; the reliability tests set the `SGLANG_FAIR_CONFIG` environment
variable directly. Every `every_n_steps`-th call returns a fault instead of the wrapped policy's plan, cycling
through `kinds` in order; all other calls return the wrapped policy's plan unchanged. Deterministic (a call
counter, no clock, no randomness), so a test knows how many faults it injected from the number of calls.

Fault kinds (each must be caught by `core.plan_check.plan_problem` or the adapter's exception guard, except
`kv_overflow`, which is a *valid* plan that asks for more than the KV pool holds: SGLang's own admission check must
absorb it without a fault):
"""

from __future__ import annotations

from dataclasses import dataclass

from ..core.types import Plan, Snapshot

CHAOS_KEY = "chaos"

FAULT_KINDS = {
    "raise": "the policy raises RuntimeError",
    "not_a_plan": "the policy returns None instead of a Plan",
    "unknown_rid": "prefill of a request id the scheduler does not hold",
    "negative_chunk": "a negative prefill chunk (or, with nothing pending, of an unknown request)",
    "oversized_chunk": "a prefill chunk longer than the request's remaining prompt",
    "decode_non_running": "a decode of a request that is not running",
    "duplicate_decode": "the same running request decoded twice",
    "empty_plan": "an empty plan while requests are pending",
    "kv_overflow": "(valid) every pending prompt in full, regardless of free KV",
}
__doc__ += "".join(f"\n- `{k}`: {v}" for k, v in FAULT_KINDS.items())

# Kinds whose plan plan_problem must reject / that must raise, i.e. that the adapter counts as a fault.
COUNTED_KINDS = tuple(k for k in FAULT_KINDS if k != "kv_overflow")


@dataclass(frozen=True, slots=True)
class ChaosParams:
    every_n_steps: int = 4
    """Inject a fault on every n-th call of `plan` (1 = every call)."""
    kinds: tuple[str, ...] = tuple(FAULT_KINDS)
    """Fault kinds, used in this order, cycling."""

    def __post_init__(self) -> None:
        if isinstance(self.every_n_steps, bool) or not isinstance(self.every_n_steps, int) or self.every_n_steps < 1:
            raise ValueError(f"every_n_steps must be an integer >= 1, got {self.every_n_steps!r}")
        object.__setattr__(self, "kinds", tuple(self.kinds))
        if not self.kinds:
            raise ValueError("kinds must name at least one fault kind")
        unknown = [k for k in self.kinds if k not in FAULT_KINDS]
        if unknown:
            raise ValueError(f"unknown chaos kinds {unknown}; choose from {', '.join(FAULT_KINDS)}")


class ChaosPolicy:
    """Wraps `inner`; see the module docstring. `injected` counts faults by kind (inspectable in unit tests)."""

    def __init__(self, inner, params: ChaosParams = ChaosParams()) -> None:
        self.inner = inner
        self.params = params
        self.name = f"chaos({getattr(inner, 'name', type(inner).__name__)})"
        self.calls = 0
        self.injected: dict[str, int] = {}

    def next_kind(self) -> str | None:
        """The fault the next call will inject (None: the wrapped policy's plan)."""
        n = self.calls + 1
        if n % self.params.every_n_steps:
            return None
        return self.params.kinds[(n // self.params.every_n_steps - 1) % len(self.params.kinds)]

    def plan(self, snap: Snapshot) -> Plan:
        kind = self.next_kind()
        self.calls += 1
        if kind is None:
            return self.inner.plan(snap)
        self.injected[kind] = self.injected.get(kind, 0) + 1
        return _FAULTS[kind](self.inner, snap)


def _raise(inner, snap):
    raise RuntimeError("chaos: injected policy exception")


def _pending(snap: Snapshot):
    return (*snap.prefilling, *snap.waiting)


def _negative_chunk(inner, snap):
    pending = _pending(snap)
    rid = pending[0].rid if pending else "chaos-unknown"
    return Plan(prefill=((rid, -5),), decode=tuple(r.rid for r in snap.running), note="chaos negative_chunk")


def _oversized_chunk(inner, snap):
    pending = _pending(snap)
    if not pending:
        return Plan(prefill=(("chaos-unknown", 1),), note="chaos oversized_chunk (nothing pending)")
    r = pending[0]
    return Plan(prefill=((r.rid, r.remaining_prompt_tokens + snap.kv_capacity_tokens + 1),), note="chaos oversized")


def _decode_non_running(inner, snap):
    return Plan(decode=(*(r.rid for r in snap.running), "chaos-not-running"), note="chaos decode_non_running")


def _duplicate_decode(inner, snap):
    if not snap.running:
        return Plan(decode=("chaos-not-running",), note="chaos duplicate_decode (nothing running)")
    rids = tuple(r.rid for r in snap.running)
    return Plan(decode=(*rids, rids[0]), note="chaos duplicate_decode")


def _empty_plan(inner, snap):
    if not (snap.running or snap.prefilling or snap.waiting):
        return Plan(prefill=(("chaos-unknown", 1),), note="chaos empty_plan (nothing pending)")
    return Plan(note="chaos empty_plan")


def _kv_overflow(inner, snap):
    prefill = tuple((r.rid, r.remaining_prompt_tokens) for r in _pending(snap) if r.remaining_prompt_tokens > 0)
    if not prefill and not snap.running:
        return inner.plan(snap)
    return Plan(prefill=prefill, decode=tuple(r.rid for r in snap.running), note="chaos kv_overflow")


_FAULTS = {
    "raise": _raise,
    "not_a_plan": lambda inner, snap: None,
    "unknown_rid": lambda inner, snap: Plan(prefill=(("chaos-unknown", 16),), note="chaos unknown_rid"),
    "negative_chunk": _negative_chunk,
    "oversized_chunk": _oversized_chunk,
    "decode_non_running": _decode_non_running,
    "duplicate_decode": _duplicate_decode,
    "empty_plan": _empty_plan,
    "kv_overflow": _kv_overflow,
}
assert set(_FAULTS) == set(FAULT_KINDS)


def make_configured_policy(name: str, params: dict):
    """The policy a runtime config asks for: `make_policy(name, **params)`, wrapped in ChaosPolicy when `params`
    carry the `chaos` key (a testing aid `serve` refuses; tests set it through the environment)."""
    from .registry import make_policy
    params = dict(params)
    chaos = params.pop(CHAOS_KEY, None)
    policy = make_policy(name, **params)
    return policy if chaos is None else ChaosPolicy(policy, ChaosParams(**chaos))
