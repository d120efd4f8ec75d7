"""HTTP routes added to SGLang's FastAPI app in the main process.

The scheduler child publishes its state under the key "sglang_fair" of SGLang's internal-state RPC (one dict per DP
rank); these routes read it through `tokenizer_manager.get_internal_state()`, the same channel `/server_info` uses.
SGLang's API-key middleware covers every route of the app, so these honour `--api-key` like SGLang's own.
"""

from __future__ import annotations

import importlib.metadata

from ..runtime_config import RuntimeConfig

STATUS_PATH = "/sglang_fair/status"
LOAD_PATH = "/get_load"


def _version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


async def scheduler_states() -> list[dict]:
    from sglang.srt.entrypoints.http_server import get_global_state

    states = await get_global_state().tokenizer_manager.get_internal_state()
    return [s.get("sglang_fair") or {} for s in states]


def build_status(cfg: RuntimeConfig, ranks: list[dict]) -> dict:
    return {
        "active": cfg.active,
        "policy": cfg.policy,
        "config": {"ttft_slo_ms": cfg.slo.ttft_slo_ms, "tpot_slo_ms": cfg.slo.tpot_slo_ms,
                   "policy_params": cfg.policy_params, "cost_model": cfg.cost_model, "online_fit": cfg.online_fit,
                   "load_horizon_ms": cfg.load_horizon_ms},
        "versions": {"sglang_fair": _version("sglang-fair"), "sglang": _version("sglang"),
                     "sglang_router": _version("sglang-router")},
        "hooks_verified": bool(ranks) and all(r.get("hooks_verified") for r in ranks),
        "planned_iterations": sum(int(r.get("planned_iterations", 0)) for r in ranks),
        "ranks": ranks,
    }


def build_load(ranks: list[dict]) -> list[dict]:
    """The shape sglang-router's power_of_two reads: a JSON array whose entries' num_tokens add up to the load."""
    return [{"dp_rank": i, "num_tokens": int(r.get("token_load", 0)),
             "admission_budget_tokens": r.get("admission_budget_tokens"),
             "num_running_reqs": r.get("num_running_reqs"), "num_waiting_reqs": r.get("num_waiting_reqs")}
            for i, r in enumerate(ranks)]


def install(cfg: RuntimeConfig) -> None:
    from fastapi.responses import ORJSONResponse
    from sglang.srt.entrypoints.http_server import app

    async def status():
        return ORJSONResponse(build_status(cfg, await scheduler_states()))

    async def get_load():
        return ORJSONResponse(build_load(await scheduler_states()))

    app.add_api_route(STATUS_PATH, status, methods=["GET"])
    app.add_api_route(LOAD_PATH, get_load, methods=["GET"])
