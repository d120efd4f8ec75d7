"""One simulated serving replica: continuous batching over a KV pool, each iteration planned by a registered policy.

Per iteration the replica builds a frozen Snapshot (now = the simulated clock), asks the policy for a Plan, validates
it (unknown rid, bad chunk, KV overflow -> ValueError), applies preemptions (the victim loses its KV and later
re-prefills its prompt plus the outputs it had, i.e. recompute), and runs the batch for the cost model's predicted
time of exactly that batch, times optional seeded log-normal noise. A plan's prefill runs as SGLang forms it
(`EngineConfig.one_partial_prefill`, core/prefill_shape.py): one partially prefilled request at a time, as live.

KV accounting follows the snapshot: a resident request holds its view's `context_tokens` (prefilled + outputs), and a
plan is checked with the arithmetic a policy can do from the snapshot alone: kv_used - context of the preempted +
sum(chunks) + len(decode) <= capacity. The final chunk of a prefill also samples a token (the first, or after a
recompute the next one); that token's slot is counted from the next snapshot on, so kv_used may exceed the capacity
by a few tokens, which the policy must then resolve (kv_free_tokens is clamped at 0). Per-iteration work is proportional to the batch plus the
waiting-queue view (`waiting_view_limit` oldest waiting requests), never to the whole trace.
"""

from __future__ import annotations

import heapq
import math
from collections import deque
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from ..core.checks import check_int_at_least, check_non_negative, check_positive
from ..core.cost_model import CostModel
from ..core.fit import OnlineCostFitter
from ..core.headroom import Headroom
from ..core.plan_check import plan_problem
from ..core.prefill_shape import realised_chunks
from ..core.types import Plan, ReqView, Snapshot, fast_view  # noqa: F401  (fast_view: re-exported)
from ..core.metrics import RequestTimes
from ..policies.admission import policy_arrival_verdict

IterationTime = Callable[[list, list], float]
"""(prefill chunks [(new tokens, prefix tokens)], decode contexts) -> seconds."""

DEFAULT_KV_CAPACITY_TOKENS = 400_000


@dataclass(frozen=True, slots=True)
class EngineConfig:
    kv_capacity_tokens: int = DEFAULT_KV_CAPACITY_TOKENS
    """KV pool size in tokens. Default: Llama-3-8B on one A100-80GB (128 KiB/token, ~52 GB left for KV)."""
    ttft_slo_ms: float = 2000.0
    tpot_slo_ms: float = 100.0
    noise_cv: float = 0.0
    """Coefficient of variation of the multiplicative log-normal noise on iteration time (0 = exact cost model)."""
    seed: int = 0
    waiting_view_limit: int = 512
    """How many of the oldest waiting requests a snapshot shows (bounds per-step work under overload)."""
    recent_window: int = 8
    """Iterations averaged into Snapshot.recent_iter_s."""
    record_token_times: bool = False
    idle_tick_ms: float = 5.0
    """After an empty plan with work pending, the replica re-plans this much later (or at its next arrival)."""
    max_idle_steps: int = 100_000
    """Consecutive empty plans tolerated before the run is declared stuck (RuntimeError)."""
    reject_at_arrival: bool = False
    """`sglang-fair serve --fair-admission reject`: an arriving request whose first token cannot meet its TTFT SLO
    behind the queued work (policies.admission.arrival_verdict on the replica's snapshot when it arrives) is refused
    (HTTP 429 live): never served, counted as an SLO miss (and as a late first token for `stop_after_late`)."""
    shed_demoted: bool = False
    """`sglang-fair serve --fair-admission shed` (with `reject_at_arrival`): a waiting request a plan demotes, and does
    not prefill in that step, is refused then (HTTP 429 live, engine/reject.py): never served, an SLO miss."""
    cost_headroom: bool = True
    """Plan as the live adapter does: with the planning cost model scaled by the headroom factor (core/headroom.py:
    a high quantile of true/predicted iteration time over the recent iterations). Where the planner's model is exact
    (no noise, no separate `iteration_time` or `planning_cost`) the factor is 1 and nothing is computed."""
    online_fit: bool = False
    """Plan as the live adapter does with its online fit (core/fit.py OnlineCostFitter, the prior being the planning
    cost model): every iteration's true time refines the planner's model (the headroom then scales the fit). Only
    where the planner's model is not exact (as `cost_headroom`); `sim --online-fit`."""
    one_partial_prefill: bool = True
    """Run each plan's prefill as SGLang forms it (core/prefill_shape.py): one partially prefilled request at a time,
    continued first, at most one request cut per step; a planned cut SGLang cannot run is dropped for the step
    (counted in `dropped_prefill_tokens`), as it is live. False: every planned chunk runs as written."""
    max_new_tokens: int | None = None
    """The `max_new_tokens` the policies see for every request, as a client's bound (a request still ends at its own
    output length; a bound below it is raised to it). None: each request's own output length, as a benchmark that
    sends max_new_tokens = the output it forces (bench_serving with ignore_eos) shows the server. A server serving
    real clients knows only the bound; `sim --max-new-tokens`."""

    def __post_init__(self) -> None:
        for name in ("kv_capacity_tokens", "waiting_view_limit", "recent_window"):
            check_int_at_least(name, getattr(self, name), 1)
        for name in ("ttft_slo_ms", "tpot_slo_ms", "idle_tick_ms"):
            check_positive(name, getattr(self, name))
        check_non_negative("noise_cv", self.noise_cv)
        if self.max_new_tokens is not None:
            check_int_at_least("max_new_tokens", self.max_new_tokens, 1)


class SimRequest:
    """Mutable per-request state owned by one replica."""

    __slots__ = ("rid", "arrival", "prompt", "target", "ttft_slo", "tpot_slo", "strict", "prefill_len",
                 "prefilled", "outputs", "first", "last", "times", "preemptions", "demoted", "rejected", "max_new")

    def __init__(self, rid: str, arrival: float, prompt: int, target: int, ttft_slo: float, tpot_slo: float,
                 strict: bool = False, record_times: bool = False, max_new: int | None = None):
        self.rid, self.arrival, self.prompt, self.target = rid, arrival, prompt, target
        self.max_new = target if max_new is None else max(max_new, target)
        """What the policies see as max_new_tokens (EngineConfig.max_new_tokens); the request ends at `target`."""
        self.ttft_slo, self.tpot_slo, self.strict = ttft_slo, tpot_slo, strict
        self.prefill_len, self.prefilled, self.outputs = prompt, 0, 0
        self.first = self.last = None
        self.times = [] if record_times else None
        self.preemptions = 0
        self.demoted = False
        """Set once a plan lists the request in `Plan.demoted` (then it counts as an SLO miss)."""
        self.rejected = False
        """Refused at arrival (EngineConfig.reject_at_arrival): never served, an SLO miss."""

    def pending_view(self) -> ReqView:
        return fast_view(self.rid, self.arrival, self.prefill_len, self.ttft_slo, self.tpot_slo, self.prefilled,
                         self.outputs, self.max_new, self.last, self.strict, self.first)

    def running_view(self) -> ReqView:
        return fast_view(self.rid, self.arrival, self.prompt, self.ttft_slo, self.tpot_slo, self.prompt,
                         self.outputs, self.max_new, self.last, self.strict, self.first)

    def record(self) -> RequestTimes:
        return RequestTimes(self.rid, self.arrival, self.first, self.last, self.outputs, self.ttft_slo,
                            self.tpot_slo, self.target, tuple(self.times) if self.times is not None else None,
                            self.demoted, self.rejected)


class Replica:
    """One engine instance. The owner adds arrived requests and calls step() at `now` while `has_work`."""

    def __init__(self, policy, cost: CostModel, config: EngineConfig = EngineConfig(), *, index: int = 0,
                 planning_cost: CostModel | None = None, iteration_time: IterationTime | None = None):
        self.policy, self.cost, self.config, self.index = policy, cost, config, index
        self.planning_cost = planning_cost or cost
        self.iteration_time = iteration_time
        self.now = 0.0
        self.running: dict[str, SimRequest] = {}
        self._run_views: dict[str, ReqView] = {}
        self.prefilling: dict[str, SimRequest] = {}
        self._pf_views: dict[str, ReqView] = {}
        self.waiting: dict[str, SimRequest] = {}
        self.requeued: dict[str, SimRequest] = {}
        self._wait_views: dict[str, ReqView] = {}
        self._wview: tuple[ReqView, ...] | None = ()
        self.kv_used = 0
        self.waiting_prompt_tokens = 0
        self.finished: list[SimRequest] = []
        self.iterations = 0
        self.busy_s = 0.0
        self.batches: dict[str, list] = {}  # `SimResult.batches`, as lists [iterations, busy_s, prompt tokens, rows]
        self.late_first_tokens = 0
        self.rejected = 0
        self.dropped_prefill_tokens = 0
        self._recent: deque[float] = deque(maxlen=config.recent_window)
        self._idle_steps = 0
        self._zero_steps = 0
        self._rng = np.random.default_rng([config.seed, index])
        self._noise = np.empty(0)
        self._noise_i = 0
        cv = config.noise_cv
        self._sigma = math.sqrt(math.log1p(cv * cv)) if cv > 0 else 0.0
        exact = cv == 0 and iteration_time is None and self.planning_cost is cost
        self.headroom = Headroom() if config.cost_headroom and not exact else None
        self.fitter = OnlineCostFitter(self.planning_cost) if config.online_fit and not exact else None
        self._plan_cost = self.planning_cost  # the planner's model (the online fit's, if any) x the headroom factor

    # ---- queue state --------------------------------------------------------------------------------------------
    @property
    def has_work(self) -> bool:
        return bool(self.running or self.prefilling or self.waiting or self.requeued)

    @property
    def outstanding(self) -> int:
        return len(self.running) + len(self.prefilling) + len(self.waiting) + len(self.requeued)

    def add(self, req: SimRequest) -> None:
        """Enqueue a request that has arrived (its arrival <= the time it is added), or refuse it
        (`EngineConfig.reject_at_arrival`)."""
        if self.config.reject_at_arrival and self._refuse(req):
            return
        self.waiting[req.rid] = req
        self._wait_views[req.rid] = req.pending_view()
        self.waiting_prompt_tokens += req.prefill_len
        if len(self.waiting) <= self.config.waiting_view_limit:
            self._wview = None

    def _refuse(self, req: SimRequest) -> bool:
        """Judge an arrival as `--fair-admission reject` does live (engine/reject.py): refused when its first token
        would miss the TTFT SLO behind the queued work (only the on-time part when the policy demotes)."""
        params = getattr(self.policy, "params", None)
        late, _ = policy_arrival_verdict(params, self.snapshot(), req.pending_view())
        if late:
            self._count_refused(req)
        return late

    def _count_refused(self, req: SimRequest) -> None:
        """A request answered HTTP 429 (at arrival or shed): never served, an SLO miss and a late first token."""
        req.rejected = True
        self.rejected += 1
        self.late_first_tokens += 1

    def _shed(self, demoted, targets) -> None:
        """Refuse the demoted requests still waiting that this step does not prefill (`shed_demoted`); a preempted
        request coming back (in `requeued`) has streamed tokens and is kept, as live."""
        served = {r.rid for r, _ in targets}
        for rid in demoted:
            r = self.waiting.get(rid)
            if r is None or rid in served:
                continue
            del self.waiting[rid]
            del self._wait_views[rid]
            self.waiting_prompt_tokens -= r.prefill_len
            self._wview = None
            self._count_refused(r)

    def _waiting_view(self) -> tuple[ReqView, ...]:
        if self._wview is None:
            limit = self.config.waiting_view_limit
            views = self._wait_views
            fresh = []
            for rid in self.waiting:
                fresh.append(views[rid])
                if len(fresh) >= limit:
                    break
            if self.requeued:
                req = sorted((views[rid] for rid in self.requeued), key=lambda v: v.arrival_s)
                fresh = list(heapq.merge(req, fresh, key=lambda v: v.arrival_s))[:limit]
            self._wview = tuple(fresh)
        return self._wview

    def snapshot(self) -> Snapshot:
        recent = sum(self._recent) / len(self._recent) if self._recent else 0.0
        return Snapshot(self.now, tuple(self._run_views.values()), tuple(self._pf_views.values()),
                        self._waiting_view(), self.config.kv_capacity_tokens, self.kv_used, self._plan_cost,
                        recent, one_partial_prefill=self.config.one_partial_prefill)

    # ---- one iteration ------------------------------------------------------------------------------------------
    def _noise_factor(self) -> float:
        if not self._sigma:
            return 1.0
        if self._noise_i >= len(self._noise):
            s = self._sigma
            self._noise = self._rng.lognormal(-0.5 * s * s, s, size=4096)
            self._noise_i = 0
        x = self._noise[self._noise_i]
        self._noise_i += 1
        return float(x)

    def _pending(self, rid: str) -> SimRequest | None:
        return self.prefilling.get(rid) or self.waiting.get(rid) or self.requeued.get(rid)

    def _validate(self, plan: Plan, snap: Snapshot) -> list:
        """The shared plan check (core.plan_check), then what only the simulator checks: the KV the step needs
        fits after preemption frees its victims' KV (preemption is binding here). Returns the prefill targets."""
        name = getattr(self.policy, "name", type(self.policy).__name__)
        problem = plan_problem(plan, snap, allow_empty=True)
        if problem:
            raise ValueError(f"{name}: {problem}")
        freed = sum(r.prefilled + r.outputs for r in map(self._resident, plan.preempt))
        targets = [(self._pending(rid), int(chunk)) for rid, chunk in plan.prefill]
        if self.config.one_partial_prefill and targets:
            targets = self._as_sglang_forms(targets, plan.preempt, self.kv_used - freed + len(plan.decode))
        grow = sum(c for _, c in targets) + len(plan.decode)
        if self.kv_used - freed + grow > self.config.kv_capacity_tokens:
            raise ValueError(f"{name}: plan overflows KV: used {self.kv_used} - freed {freed} + {grow} > "
                             f"capacity {self.config.kv_capacity_tokens}")
        return targets

    def _as_sglang_forms(self, targets: list, preempt, kv_after: int) -> list:
        """`targets` as SGLang runs them (`EngineConfig.one_partial_prefill`); `kv_after`: KV in use once the step's
        preemptions and decodes are counted (a left-out chunked request's page needs room)."""
        gone = set(preempt)
        chunked = next((r for rid, r in self.prefilling.items() if rid not in gone), None)
        chunks = [(c, r.prefill_len - r.prefilled) for r, c in targets]
        at = None if chunked is None else next((i for i, (r, _) in enumerate(targets) if r is chunked), -1)
        got, left_out = realised_chunks(chunks, at)
        out = [(r, g) for (r, _), g in zip(targets, got) if g > 0]
        room = self.config.kv_capacity_tokens - kv_after - sum(g for _, g in out)
        left_out = min(left_out, room, chunked.prefill_len - chunked.prefilled) if left_out else 0
        if left_out > 0:
            out.insert(0, (chunked, left_out))
        self.dropped_prefill_tokens += max(0, sum(c for _, c in targets) - sum(g for _, g in out))
        return out

    def _resident(self, rid: str) -> SimRequest:
        return self.running.get(rid) or self.prefilling[rid]

    def _preempt(self, rids) -> None:
        for rid in rids:
            r = self.running.pop(rid, None)
            if r is not None:
                del self._run_views[rid]
                r.prefill_len = r.prompt + r.outputs  # recompute prompt + all outputs, then sample the next one
            else:
                r = self.prefilling.pop(rid)
                del self._pf_views[rid]
            self.kv_used -= r.prefilled + r.outputs
            r.prefilled = 0
            r.preemptions += 1
            self.requeued[rid] = r
            self._wait_views[rid] = r.pending_view()
            self.waiting_prompt_tokens += r.prefill_len
        self._wview = None

    def step(self) -> float:
        """Plan and run one iteration starting at self.now; returns its duration (0 for an empty plan)."""
        snap = self.snapshot()
        plan = self.policy.plan(snap)
        targets = self._validate(plan, snap)
        for rid in plan.demoted:  # best effort from now on: an SLO miss whenever it is served
            r = self._pending(rid)
            if r is None:
                raise ValueError(f"plan demotes unknown or running rid {rid!r}")
            r.demoted = True
        if self.config.shed_demoted and plan.demoted:
            self._shed(plan.demoted, targets)
        if plan.preempt:
            self._preempt(plan.preempt)
        if not targets and not plan.decode:
            if plan.preempt:
                self._zero_steps += 1
                if self._zero_steps > 1000:
                    raise RuntimeError("policy keeps preempting without running anything")
                return 0.0
            self._idle_steps += 1
            if self._idle_steps > self.config.max_idle_steps:
                raise RuntimeError(f"policy returned {self._idle_steps} empty plans in a row with "
                                   f"{self.outstanding} requests pending at t={self.now:.3f}s")
            self.now += self.config.idle_tick_ms / 1000.0
            return 0.0
        self._idle_steps = self._zero_steps = 0
        learning = self.headroom is not None or self.fitter is not None
        batch = self._batch(plan.decode, targets) if learning or self.iteration_time is not None else None
        t = self.iteration_time(*batch) if self.iteration_time is not None else self._duration_s(plan.decode, targets)
        t *= self._noise_factor()
        if learning:
            self._learn(batch, t)
        end = self.now + t
        self._run(plan.decode, targets, end)
        self.now = end
        self.iterations += 1
        self.busy_s += t
        kind = self.batches.setdefault("mixed" if targets and plan.decode else "prefill" if targets else "decode",
                                       [0, 0.0, 0, 0])
        kind[0] += 1
        kind[1] += t
        kind[2] += sum([c for _, c in targets])
        kind[3] += len(plan.decode)
        self._recent.append(t)
        return t

    def _learn(self, batch: tuple[list, list], t: float) -> None:
        """What the live adapter does after a forward: the headroom sees true / predicted (by the planner's unscaled
        model, before this iteration refines it), the online fit sees the true time; plans then use the fit x the
        headroom factor."""
        model = self._fitted()
        changed = False
        if self.headroom is not None:
            before = self.headroom.factor
            changed = self.headroom.observe(model.predict(*batch), t) != before
        if self.fitter is not None:
            changed = self.fitter.observe(*batch, t) is not model or changed
        if changed:
            f = self.headroom.factor if self.headroom is not None else 1.0
            self._plan_cost = self._fitted().scaled(f)

    def _fitted(self) -> CostModel:
        """The planner's (unscaled) model: the online fit's when on, else `planning_cost`."""
        return self.fitter.model if self.fitter is not None else self.planning_cost

    def _batch(self, decode, targets) -> tuple[list, list]:
        """(prefill chunks [(tokens, prefix)], decode contexts) of a batch, as the cost models take it."""
        running = self.running
        return ([(chunk, r.prefilled) for r, chunk in targets],
                [running[rid].prompt + running[rid].outputs for rid in decode])

    def _duration_s(self, decode, targets) -> float:
        """The batch's time on the cost model (the device when no `iteration_time` is given)."""
        running = self.running
        c = self.cost
        t = c.base_s
        for r, chunk in targets:
            t += c.prefill_s(chunk, r.prefilled)
        if decode:
            ctx = 0
            for rid in decode:
                r = running[rid]
                ctx += r.prompt + r.outputs
            t += c.per_decode_req_s * len(decode) + c.per_context_token_s * ctx
            if targets:
                t += c.per_mixed_decode_req_s * len(decode)
        return t

    def _run(self, decode, targets, end: float) -> None:
        running, views = self.running, self._run_views
        for rid in decode:
            r = running[rid]
            r.outputs += 1
            r.last = end
            if r.times is not None:
                r.times.append(end)
            if r.outputs >= r.target:
                self._finish(r)
            else:
                views[rid] = r.running_view()
        self.kv_used += len(decode)
        for r, chunk in targets:
            rid = r.rid
            if rid not in self.prefilling:
                src = self.waiting if rid in self.waiting else self.requeued
                del src[rid]
                del self._wait_views[rid]
                self.waiting_prompt_tokens -= r.prefill_len
                self.prefilling[rid] = r
                self._wview = None
            r.prefilled += chunk
            self.kv_used += chunk
            if r.prefilled < r.prefill_len:
                self._pf_views[rid] = r.pending_view()
                continue
            del self.prefilling[rid]
            self._pf_views.pop(rid, None)
            # prompt (plus recomputed outputs) now resident; this forward samples one token
            self.kv_used -= r.prefilled + r.outputs
            r.prefilled = r.prompt
            r.outputs += 1
            self.kv_used += r.prompt + r.outputs
            if r.first is None:
                r.first = end
                if end - r.arrival > r.ttft_slo:
                    self.late_first_tokens += 1
            r.last = end
            if r.times is not None:
                r.times.append(end)
            if r.outputs >= r.target:
                self._finish(r, resident=False)
            else:
                running[rid] = r
                views[rid] = r.running_view()

    def _finish(self, r: SimRequest, resident: bool = True) -> None:
        if resident:
            del self.running[r.rid]
            del self._run_views[r.rid]
        self.kv_used -= r.prompt + r.outputs
        self.finished.append(r)


# ---- single-replica run ---------------------------------------------------------------------------------------------
@dataclass(frozen=True, eq=False)
class SimResult:
    records: list[RequestTimes]
    """One per trace request, in trace order (unfinished ones too when the run was aborted)."""
    sim_s: float
    """Simulated time at the end of the run."""
    iterations: int
    busy_s: float
    """Sum of iteration times (over replicas)."""
    aborted: bool
    preemptions: int
    dropped_prefill_tokens: int = 0
    """Planned prompt tokens SGLang would not have run (`EngineConfig.one_partial_prefill`), over replicas."""
    batches: dict[str, dict] = field(default_factory=dict)
    """Per kind of batch ("mixed", "prefill": no decode row, "decode": no prompt token), over replicas: iterations,
    busy_s, prefill_tokens, decode_rows (where the device time of the same work goes)."""

    def summary(self):
        from ..core.metrics import summarize
        return summarize(self.records)


def make_requests(trace, config: EngineConfig) -> list[SimRequest]:
    ttft, tpot, rec = config.ttft_slo_ms / 1000.0, config.tpot_slo_ms / 1000.0, config.record_token_times
    return [SimRequest(f"r{i}", float(a), int(p), int(o), ttft, tpot, False, rec, config.max_new_tokens)
            for i, (a, p, o) in enumerate(zip(trace.arrival_s, trace.prompt_tokens, trace.output_tokens))]


def simulate(trace, policy, cost: CostModel, config: EngineConfig = EngineConfig(), *,
             planning_cost: CostModel | None = None, stop_after_late: int | None = None,
             progress=None, iteration_time: IterationTime | None = None) -> SimResult:
    """Replay `trace` through one replica run by `policy`. `stop_after_late`: abort once more requests than this
    got their first token after their TTFT SLO (capacity search uses it to cut hopeless overloaded runs short).
    `progress`: optional tqdm-like object, updated by one per finished request. `iteration_time`: the true time of
    a batch ((chunk, prefix) pairs, decode contexts -> seconds) in place of `cost` (the policy plans with
    `planning_cost`, default `cost`)."""
    rep = Replica(policy, cost, config, planning_cost=planning_cost, iteration_time=iteration_time)
    reqs = make_requests(trace, config)
    arrivals = trace.arrival_s.tolist()
    n, i, aborted, done = len(reqs), 0, False, 0
    while i < n or rep.has_work:
        if not rep.has_work and rep.now < arrivals[i]:
            rep.now = arrivals[i]
        while i < n and arrivals[i] <= rep.now:
            rep.add(reqs[i])
            i += 1
        rep.step()
        if progress is not None and len(rep.finished) != done:
            progress.update(len(rep.finished) - done)
            done = len(rep.finished)
        if stop_after_late is not None and rep.late_first_tokens > stop_after_late:
            aborted = True
            break
    return SimResult([r.record() for r in reqs], rep.now, rep.iterations, rep.busy_s, aborted,
                     sum(r.preemptions for r in reqs), rep.dropped_prefill_tokens, batch_kinds([rep]))


def batch_kinds(reps) -> dict[str, dict]:
    """`SimResult.batches` summed over replicas."""
    out: dict[str, list] = {}
    for rep in reps:
        for kind, row in rep.batches.items():
            acc = out.setdefault(kind, [0, 0.0, 0, 0])
            for i, v in enumerate(row):
                acc[i] += v
    return {k: dict(zip(("iterations", "busy_s", "prefill_tokens", "decode_rows"), v)) for k, v in sorted(out.items())}
