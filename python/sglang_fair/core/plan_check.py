"""The one plan checker: what every engine (the live adapter, the simulator) and the tests require of a Plan.

`plan_problem(plan, snap)` says why a plan cannot be carried out against the snapshot it was made from, or None.
The simulator adds what only it can check (KV capacity after the step, the tokens preemption frees); the live
adapter adds nothing (SGLang's own admission absorbs a plan that asks for more KV than is free).
"""

from __future__ import annotations

from numbers import Integral

from .types import Plan, Snapshot


def plan_problem(plan: Plan, snap: Snapshot, *, allow_empty: bool = False) -> str | None:
    """Why `plan` cannot be carried out against `snap` (None when it can).

    - every rid exists in the snapshot's view, in the right state, and appears once: prefill names a prefilling or
      waiting request, decode a running one, preempt a running or prefilling one, and a preempted rid is neither
      prefilled nor decoded;
    - each prefill chunk is an int in 1..remaining prompt (1 for a request whose prompt is all cached);
    - a plan with prefill and decodes only where the engine can mix (`snap.mixing_allowed`);
    - an empty plan only when nothing is pending, unless `allow_empty` (the simulator idles a tick instead).
    """
    if not isinstance(plan, Plan):
        return f"policy returned {type(plan).__name__}, not Plan"
    running = {r.rid for r in snap.running}
    prefilling = {r.rid for r in snap.prefilling}
    pending = _pending(snap, {rid for rid, _ in plan.prefill})
    preempt = set(plan.preempt)
    if len(preempt) != len(plan.preempt):
        return "a preemption planned twice"
    for rid in plan.preempt:
        if rid not in running and rid not in prefilling:
            return f"preemption of unknown or not-resident request {rid}"
    seen: set[str] = set()
    for rid, chunk in plan.prefill:
        if rid in seen:
            return f"request {rid} planned twice"
        seen.add(rid)
        req = pending.get(rid)
        if req is None:
            return f"prefill of unknown or running request {rid}"
        if rid in preempt:
            return f"request {rid} both prefilled and preempted"
        if isinstance(chunk, bool) or not isinstance(chunk, Integral) or not 1 <= chunk <= max(
                req.remaining_prompt_tokens, 1):
            return f"prefill chunk {chunk!r} of {rid} outside 1..{req.remaining_prompt_tokens}"
    if len(set(plan.decode)) != len(plan.decode):
        return "a decode planned twice"
    for rid in plan.decode:
        if rid not in running:
            return f"decode of non-running request {rid}"
        if rid in preempt:
            return f"request {rid} both decoded and preempted"
    if not allow_empty and plan.is_empty and (snap.running or snap.prefilling or snap.waiting):
        return "empty plan while requests are pending"
    if plan.prefill and plan.decode and not snap.mixing_allowed:
        return "mixed plan where the engine cannot mix"
    return None


def _pending(snap: Snapshot, wanted: set) -> dict:
    """rid -> view of the partial prefills and waiting requests named in `wanted`. The waiting queue is read only
    until all are found: policies admit from its head, and reading a long queue's views every step is most of the
    check's cost."""
    pending = {r.rid: r for r in snap.prefilling if r.rid in wanted}
    if len(pending) < len(wanted):
        for r in snap.waiting:
            if r.rid in wanted:
                pending[r.rid] = r
                if len(pending) == len(wanted):
                    break
    return pending
