"""HTTP routes added to SGLang's FastAPI app in the main process.

The scheduler child publishes its state under the key "sglang_fair" of SGLang's internal-state RPC (one dict per DP
rank); these routes read it through `tokenizer_manager.get_internal_state()`, the same channel `/server_info` uses.
Under `--emulate-device` the status also carries the emulated device (top level, labelled "emulated") and each
rank's padder counters (emulate/report.py). SGLang's API-key middleware covers every route of the app, so these honour `--api-key` like SGLang's own.

Per-request SLOs are validated here, in the main process, before a request reaches the tokenizer or the scheduler:
`RequestSloValidator` (a pure ASGI middleware) reads the body of POST /generate, /v1/completions and
/v1/chat/completions and answers HTTP 400 naming the bad key, streaming requests included (SGLang's own checks
inside a stream come back as an in-stream error with status 200). /generate carries the SLOs in
`sampling_params.custom_params` (a list of sampling params for batches); the OpenAI endpoints take `custom_params`
as a top-level body field, which is where the OpenAI client's `extra_body={"custom_params": {...}}` puts it.
"""

from __future__ import annotations

import asyncio
import importlib.metadata
import json
import time
from typing import Any

import orjson

from ..config import SloConfig
from ..config import RuntimeConfig
from ..config import parse_request_slos
from ..emulate.hook import spec_from_env
from ..emulate.report import device_label, status_object
from ..emulate.spec import DeviceSpec

STATUS_PATH = "/sglang_fair/status"
LOAD_PATH = "/get_load"
LOADS_PATH = "/v1/loads"
GENERATE_PATH = "/generate"
OPENAI_SLO_PATHS = ("/v1/completions", "/v1/chat/completions")
SLO_PATHS = (GENERATE_PATH, *OPENAI_SLO_PATHS)


def request_slo_problem(path: str, body: Any, default: SloConfig) -> str | None:
    """Why the per-request SLOs in a request body are invalid (None when valid or absent). Bodies that are not JSON
    objects are left to SGLang's own validation."""
    if not isinstance(body, dict):
        return None
    if path == GENERATE_PATH:
        sp = body.get("sampling_params")
        candidates = [s.get("custom_params") for s in (sp if isinstance(sp, list) else [sp]) if isinstance(s, dict)]
    else:
        candidates = [body.get("custom_params")]
    for params in candidates:
        if params is None:
            continue
        try:
            parse_request_slos(params, default)
        except ValueError as exc:
            return str(exc)
    return None


def _error_body(path: str, message: str) -> bytes:
    if path in OPENAI_SLO_PATHS:  # the OpenAI-compatible ErrorResponse shape SGLang uses there
        return orjson.dumps({"object": "error", "message": message, "type": "BadRequest", "param": None,
                             "code": 400})
    return orjson.dumps({"error": {"message": message, "type": "invalid_request_error", "code": 400}})


class RequestSloValidator:
    """ASGI middleware: HTTP 400 for invalid per-request SLOs on SLO_PATHS; every other request passes untouched.
    A body without the bytes `custom_params` is not parsed."""

    def __init__(self, app, default: SloConfig) -> None:
        self.app = app
        self.default = default
        self.rejected = 0

    async def __call__(self, scope, receive, send) -> None:
        if (scope.get("type") != "http" or scope.get("method") not in ("POST", "PUT")
                or scope.get("path") not in SLO_PATHS):
            await self.app(scope, receive, send)
            return
        chunks = []
        while True:
            msg = await receive()
            if msg["type"] != "http.request":  # client went away before the body arrived: let the app see it
                await self.app(scope, _replay(b"".join(chunks), receive, first=msg), send)
                return
            chunks.append(msg.get("body", b""))
            if not msg.get("more_body", False):
                break
        body = b"".join(chunks)
        problem = None
        if b"custom_params" in body:
            problem = request_slo_problem(scope["path"], _loads(body), self.default)
        if problem is None:
            await self.app(scope, _replay(body, receive), send)
            return
        self.rejected += 1
        payload = _error_body(scope["path"], problem)
        headers = [(b"content-type", b"application/json"), (b"content-length", str(len(payload)).encode())]
        await send({"type": "http.response.start", "status": 400, "headers": headers})
        await send({"type": "http.response.body", "body": payload})


def _loads(body: bytes) -> Any:
    """The body as SGLang's FastAPI will read it (the standard json module also takes NaN, Infinity and 1e999,
    which orjson refuses); None when it is not JSON at all (SGLang answers that)."""
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError:
        pass
    try:
        return json.loads(body)
    except ValueError:
        return None


def _replay(body: bytes, receive, first: dict | None = None):
    """An ASGI receive() that returns the already-read body once (then `first`, if given), then the real receive()."""
    pending = [{"type": "http.request", "body": body, "more_body": False}] + ([first] if first else [])

    async def replay():
        if pending:
            return pending.pop(0)
        return await receive()
    return replay


def _version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


async def scheduler_states() -> list[dict]:
    from sglang.srt.entrypoints.http_server import get_global_state

    states = await get_global_state().tokenizer_manager.get_internal_state()
    return [rank_state(s) for s in states]


def rank_state(state: dict) -> dict:
    """One rank's entry: the scheduler's "sglang_fair" dict, plus the emulated device's counters (the internal
    state's "emulated_device", hook.py) as `emulated_device` when the server runs on an emulated device."""
    rank = dict(state.get("sglang_fair") or {})
    emulated = status_object(state.get("emulated_device"))
    if emulated is not None:
        rank["emulated_device"] = emulated
    return rank


def build_status(cfg: RuntimeConfig, ranks: list[dict], emulated: DeviceSpec | None = None) -> dict:
    """`emulated`: the server's emulated device (None on real hardware); shown as the top-level `emulated_device`
    (labelled "emulated"), its counters per rank."""
    return {
        "active": cfg.active,
        "policy": cfg.policy,
        "emulated_device": device_label(emulated),
        "config": {"ttft_slo_ms": cfg.slo.ttft_slo_ms, "tpot_slo_ms": cfg.slo.tpot_slo_ms,
                   "policy_params": cfg.policy_params, "cost_model": cfg.cost_model, "online_fit": cfg.online_fit,
                   "load_horizon_ms": cfg.load_horizon_ms, "trace_path": cfg.trace_path},
        "versions": {"sglang_fair": _version("sglang-fair"), "sglang": _version("sglang"),
                     "sglang_router": _version("sglang-router")},
        "hooks_verified": bool(ranks) and all(r.get("hooks_verified") for r in ranks),
        "planned_iterations": sum(int(r.get("planned_iterations", 0)) for r in ranks),
        "ranks": ranks,
    }


def build_load(ranks: list[dict], age_s: float | None = 0.0) -> list[dict]:
    """The shape sglang-router's power_of_two reads: a JSON array whose entries' num_tokens add up to the load.
    `age_s`: how old the figures are (None: the scheduler has not answered yet, the entry reads 0)."""
    if not ranks:
        return [{"dp_rank": 0, "num_tokens": 0, "admission_budget_tokens": None, "num_running_reqs": None,
                 "num_waiting_reqs": None, "age_s": None}]
    return [{"dp_rank": i, "num_tokens": int(r.get("token_load", 0)),
             "admission_budget_tokens": r.get("admission_budget_tokens"),
             "num_running_reqs": r.get("num_running_reqs"), "num_waiting_reqs": r.get("num_waiting_reqs"),
             "age_s": age_s}
            for i, r in enumerate(ranks)]


class LoadCache:
    """/get_load's figures: the scheduler's latest answer, never an error while the server is up.

    sglang-router 0.3.2 reads a failed or timed-out /get_load as -1, i.e. as the least loaded worker, so the endpoint
    must not wait on a scheduler that is busy with a long forward (the internal-state RPC is answered between
    iterations only). `get()` starts one refresh (never more than one in flight), waits for it at most `wait_s`
    (`first_wait_s` before any answer) and otherwise answers with the last figures; a refresh that fails keeps them.
    """

    def __init__(self, fetch, *, wait_s: float = 0.5, first_wait_s: float = 10.0, clock=time.monotonic) -> None:
        self.fetch = fetch
        self.wait_s, self.first_wait_s = wait_s, first_wait_s
        self.clock = clock
        self.ranks: list[dict] | None = None
        self.updated: float | None = None
        self.refresh_failures = 0
        self._task = None

    async def _refresh(self) -> None:
        try:
            ranks = await self.fetch()
        except Exception:  # noqa: BLE001  (the last figures stay; the next request tries again)
            self.refresh_failures += 1
            return
        self.ranks, self.updated = ranks, self.clock()

    async def latest(self) -> tuple[list[dict], float | None]:
        """(the scheduler's per-rank figures, their age in seconds); ([], None) before its first answer."""
        if self._task is None or self._task.done():
            self._task = asyncio.ensure_future(self._refresh())
        wait = self.wait_s if self.ranks is not None else self.first_wait_s
        try:
            await asyncio.wait_for(asyncio.shield(self._task), timeout=wait)
        except asyncio.TimeoutError:
            pass
        if self.ranks is None:
            return [], None
        return self.ranks, round(self.clock() - self.updated, 3)

    async def get(self) -> list[dict]:
        return build_load(*await self.latest())


def rank_prefill_rate(rank: dict) -> float:
    """The `gen_throughput` our /v1/loads serves for one rank: core.load.prefill_token_rate of the cost model the
    rank plans with (its fit times its headroom) over its load horizon, tokens/s; 0 when the rank reports none."""
    from ..core.cost_model import CostModel
    from ..core.load import prefill_token_rate

    try:
        cost = CostModel.from_dict(rank["cost_model"]).scaled(float(rank.get("cost_headroom") or 1.0))
        return round(prefill_token_rate(cost, float(rank["load_horizon_ms"]) / 1000.0), 1)
    except (KeyError, TypeError, ValueError):
        return 0.0


def fair_load_fields(rank: dict) -> dict:
    """What our /v1/loads writes over SGLang's entry for one rank (smg 1.13 scores
    (num_waiting_uncached_tokens + 1024 x num_running_reqs + ...) / gen_throughput + KV term): the token load /get_load
    reports, no running requests (the estimate already holds the decode work the horizon owes), and the rank's
    prompt-token rate, so the quotient is seconds of the load horizon already spoken for."""
    return {"num_waiting_uncached_tokens": int(rank.get("token_load", 0) or 0), "num_running_reqs": 0,
            "gen_throughput": rank_prefill_rate(rank)}


def overlay_loads(snapshots: list, ranks: list[dict], dp_rank: int | None = None) -> list:
    """SGLang's per-rank LoadSnapshots with `fair_load_fields` written over them (other fields pass through).
    A rank SGLang did not answer for (its shared-memory slot not yet published) gets a fresh LoadSnapshot with our
    fields and the scheduler's request counts."""
    import msgspec
    from sglang.srt.managers.load_snapshot import LoadSnapshot

    out, seen = [], set()
    for snap in snapshots:
        seen.add(snap.dp_rank)
        rank = ranks[snap.dp_rank] if 0 <= snap.dp_rank < len(ranks) else None
        out.append(msgspec.structs.replace(snap, **fair_load_fields(rank)) if rank is not None else snap)
    for i, rank in enumerate(ranks):
        if i not in seen and dp_rank in (None, i):
            out.append(LoadSnapshot(dp_rank=i, num_waiting_reqs=int(rank.get("num_waiting_reqs") or 0),
                                    **fair_load_fields(rank)))
    return sorted(out, key=lambda s: s.dp_rank)


class FairLoadsSource:
    """A tokenizer-manager stand-in handed to SGLang's own /v1/loads handler: `get_loads()` returns SGLang's
    snapshots overlaid with our figures, so SGLang's handler keeps its query parameters, validation (HTTP 400 for a
    bad `include`), JSON and Prometheus formats and its timing metric. Everything else is the real manager's."""

    def __init__(self, tokenizer_manager, ranks: list[dict]) -> None:
        self._tm, self._ranks = tokenizer_manager, ranks

    async def get_loads(self, include=None, dp_rank=None):
        try:
            snaps = await self._tm.get_loads(include=include, dp_rank=dp_rank)
        except ValueError:
            raise
        except Exception:  # noqa: BLE001  (a load endpoint answers whenever the server is up: ours alone)
            snaps = []
        return overlay_loads(snaps, self._ranks, dp_rank)

    def __getattr__(self, name):
        return getattr(self._tm, name)


def loads_info(ranks: list[dict], age_s: float | None) -> dict:
    """The `sglang_fair` object our /v1/loads adds beside `loads`: where its figures come from and how old they are."""
    return {"signal": "fair", "age_s": age_s,
            "ranks": [{"dp_rank": i, "token_load": r.get("token_load"),
                       "admission_budget_tokens": r.get("admission_budget_tokens"),
                       "prefill_tokens_per_s": rank_prefill_rate(r)} for i, r in enumerate(ranks)]}


def replace_route(app, path: str, endpoint, methods=("GET",)):
    """Serve `endpoint` at `path` instead of the app's own route for it. Routes are tried in list order and the first
    full match wins (Starlette; FastAPI's app router too), so a duplicate appended after SGLang's route would never be
    reached. Ours goes first in the app's list, and every other route for that path and method is removed, at the top
    level or inside an included router (FastAPI 0.165 keeps `include_router` routers as lazy branches whose cached
    view is rebuilt when the router's routes version changes). Returns the first replaced endpoint (None if none)."""
    app.add_api_route(path, endpoint, methods=list(methods))
    new = app.router.routes.pop()
    replaced = []

    def prune(router) -> None:
        kept = []
        for r in router.routes:
            if getattr(r, "path", None) == path and set(methods) & set(getattr(r, "methods", None) or ()):
                replaced.append(r.endpoint)
                continue
            inner = getattr(r, "original_router", None)
            if inner is not None:
                prune(inner)
            kept.append(r)
        if len(kept) != len(router.routes):
            router.routes[:] = kept
            getattr(router, "_mark_routes_changed", lambda: None)()

    prune(app.router)
    app.router.routes.insert(0, new)
    getattr(app.router, "_mark_routes_changed", lambda: None)()
    return replaced[0] if replaced else None


def make_loads_endpoint(stock, load_cache: LoadCache, tokenizer_manager):
    """Our /v1/loads: SGLang's handler `stock` run on `FairLoadsSource`, from the LoadCache's last figures (never
    waiting on a busy scheduler); `tokenizer_manager()` returns SGLang's manager."""
    from fastapi import HTTPException
    from fastapi.responses import ORJSONResponse, Response

    async def v1_loads(dp_rank: int | None = None, include: str | None = None, format: str | None = None):
        ranks, age_s = await load_cache.latest()
        source = FairLoadsSource(tokenizer_manager(), ranks)
        try:
            out = await stock(dp_rank=dp_rank, include=include, format=format, tokenizer_manager=source)
        except HTTPException:
            raise
        except Exception:  # noqa: BLE001  (never an error while the server is up: our figures alone)
            out = {"loads": [s.to_dict() for s in overlay_loads([], ranks, dp_rank)]}
        if isinstance(out, Response):
            return out
        out["sglang_fair"] = loads_info(ranks, age_s)
        return ORJSONResponse(out)
    return v1_loads


def install(cfg: RuntimeConfig) -> None:
    from fastapi.responses import ORJSONResponse
    from sglang.srt.entrypoints.http_server import app

    emulated = spec_from_env()  # `sglang-fair serve --emulate-device` sets it for every process of the server

    async def status():
        return ORJSONResponse(build_status(cfg, await scheduler_states(), emulated))

    load_cache = LoadCache(scheduler_states)

    async def get_load():
        return ORJSONResponse(await load_cache.get())

    app.add_api_route(STATUS_PATH, status, methods=["GET"])
    app.add_api_route(LOAD_PATH, get_load, methods=["GET"])
    if cfg.active and cfg.loads == "fair":  # --fair-loads stock keeps SGLang's /v1/loads
        from sglang.srt.entrypoints import v1_loads
        from sglang.srt.entrypoints.http_server import get_global_state

        replace_route(app, LOADS_PATH, make_loads_endpoint(v1_loads.get_loads, load_cache,
                                                           lambda: get_global_state().tokenizer_manager))
    if cfg.active:  # --fair-policy off leaves request handling stock
        app.add_middleware(RequestSloValidator, default=cfg.slo)
        if cfg.admission != "off":
            from .reject import RetryAfter
            app.add_middleware(RetryAfter)  # Retry-After on the 429s of engine/reject.py
