"""/v1/loads (engine/http.py): SGLang's shape with FairBatching's estimate written over it, for smg 1.13, which scores
(num_waiting_uncached_tokens + 1024 x num_running_reqs + ...) / gen_throughput + KV term. Fake scheduler state, no
server: SGLang's own handler runs on a stand-in tokenizer manager inside a bare FastAPI app."""

from __future__ import annotations

import asyncio

import pytest

pytest.importorskip("sglang.srt.entrypoints.v1_loads")
from fastapi import APIRouter, FastAPI  # noqa: E402
from fastapi.testclient import TestClient  # noqa: E402
from sglang.srt.entrypoints import v1_loads  # noqa: E402
from sglang.srt.managers.load_snapshot import LoadSnapshot, QueueMetrics  # noqa: E402

from sglang_fair.core.cost_model import CostModel  # noqa: E402
from sglang_fair.core.load import prefill_token_rate  # noqa: E402
from sglang_fair.engine.http import (LOADS_PATH, LoadCache, fair_load_fields, make_loads_endpoint,  # noqa: E402
                                     overlay_loads, rank_prefill_rate, replace_route)

COST = CostModel(base_s=0.01, per_prefill_token_s=2e-4, per_decode_req_s=1e-3)
RANK = {"token_load": 2500, "admission_budget_tokens": 7500, "num_running_reqs": 3, "num_waiting_reqs": 4,
        "cost_model": COST.to_dict(), "cost_headroom": 1.25, "load_horizon_ms": 2000.0}


def sglang_snapshot(dp_rank=0, **kw):
    base = dict(dp_rank=dp_rank, num_running_reqs=3, num_waiting_reqs=4, num_waiting_uncached_tokens=900,
                num_used_tokens=6000, max_total_num_tokens=16384, token_usage=0.37, gen_throughput=55.0,
                queues=QueueMetrics(waiting=4, grammar=0, paused=0, retracted=0, prealloc_ready=0))
    return LoadSnapshot(**{**base, **kw})


class TokenizerManager:
    def __init__(self, snaps=None, fail=False):
        self.snaps, self.fail, self.metrics_collector = snaps, fail, None

    async def get_loads(self, include=None, dp_rank=None):
        if self.fail:
            raise RuntimeError("shared memory gone")
        return [s for s in self.snaps if dp_rank in (None, s.dp_rank)]


def test_prefill_rate_is_the_idle_budget_per_second_of_the_planning_cost_model():
    want = prefill_token_rate(COST.scaled(1.25), 2.0)
    assert rank_prefill_rate(RANK) == pytest.approx(want, abs=0.1)
    assert 0.8 * 2.0 / (1.25 * 2e-4) / 2.0 < want <= 2.0 / (1.25 * 2e-4) / 2.0  # ~ 1 / (per-token time)
    assert rank_prefill_rate({"token_load": 5}) == 0.0  # a rank without a cost model (policy off)
    assert fair_load_fields(RANK) == {"num_waiting_uncached_tokens": 2500, "num_running_reqs": 0,
                                      "gen_throughput": rank_prefill_rate(RANK)}


def test_overlay_writes_our_fields_and_passes_sglangs_through():
    [out] = overlay_loads([sglang_snapshot()], [RANK])
    d = out.to_dict({"core", "queues"})
    assert d["num_waiting_uncached_tokens"] == 2500 and d["num_running_reqs"] == 0
    assert d["gen_throughput"] == rank_prefill_rate(RANK)
    assert (d["num_waiting_reqs"], d["token_usage"], d["max_total_num_tokens"], d["num_used_tokens"]) == \
        (4, 0.37, 16384, 6000)
    assert d["queues"]["waiting"] == 4
    # a rank SGLang has not published yet still gets an entry; a dp_rank filter is honoured
    two = overlay_loads([sglang_snapshot(0)], [RANK, {**RANK, "token_load": 0, "num_waiting_reqs": 1}])
    assert [(s.dp_rank, s.num_waiting_uncached_tokens, s.num_waiting_reqs) for s in two] == [(0, 2500, 4), (1, 0, 1)]
    assert [s.dp_rank for s in overlay_loads([], [RANK, RANK], dp_rank=1)] == [1]


def _paths(router) -> list:
    """Every route path of a router, included routers' too (FastAPI 0.165 keeps those as branches)."""
    out = []
    for r in router.routes:
        inner = getattr(r, "original_router", None)
        out += _paths(inner) if inner is not None else [getattr(r, "path", None)]
    return out


def _app(tm, ranks, monkeypatch, *, stock_first=True):
    monkeypatch.setattr(v1_loads, "_num_accelerators_per_dp_rank", lambda: 1)  # needs a running server's context
    app = FastAPI()
    if stock_first:  # as SGLang 0.5.23 does at import: its APIRouter with /v1/loads, included before any plugin
        stock_router = APIRouter()
        stock_router.get(LOADS_PATH)(v1_loads.get_loads)
        app.include_router(stock_router)
        app.dependency_overrides[v1_loads._get_tokenizer_manager] = lambda: tm

    async def states():
        return ranks
    cache = LoadCache(states)
    replaced = replace_route(app, LOADS_PATH, make_loads_endpoint(v1_loads.get_loads, cache, lambda: tm))
    return app, replaced


def test_our_route_replaces_sglangs_and_answers_in_its_shape(monkeypatch):
    tm = TokenizerManager([sglang_snapshot()])
    app, replaced = _app(tm, [RANK], monkeypatch)
    assert replaced is v1_loads.get_loads
    assert _paths(app.router).count(LOADS_PATH) == 1 and app.router.routes[0].endpoint is not v1_loads.get_loads
    with TestClient(app) as client:
        body = client.get(LOADS_PATH, params={"include": "core,disagg,queues,memory"}).json()  # what smg sends
        [load] = body["loads"]
        assert load["num_waiting_uncached_tokens"] == 2500 and load["num_running_reqs"] == 0
        assert load["gen_throughput"] == rank_prefill_rate(RANK) > 0
        assert load["num_waiting_reqs"] == 4 and load["token_usage"] == 0.37 and load["queues"]["waiting"] == 4
        assert body["version"] and body["sglang_fair"]["signal"] == "fair"
        assert body["sglang_fair"]["ranks"][0]["token_load"] == 2500
        prom = client.get(LOADS_PATH, params={"format": "prometheus"}).text  # SGLang's own formats still work
        assert 'sglang_num_waiting_uncached_tokens{dp_rank="0"} 2500' in prom
        assert 'sglang_num_running_reqs{dp_rank="0"} 0' in prom


def test_without_a_stock_route_ours_is_added(monkeypatch):
    app, replaced = _app(TokenizerManager([sglang_snapshot()]), [RANK], monkeypatch, stock_first=False)
    assert replaced is None
    with TestClient(app) as client:
        assert client.get(LOADS_PATH).json()["loads"][0]["num_waiting_uncached_tokens"] == 2500


def test_failing_sglang_reader_or_scheduler_never_makes_an_error(monkeypatch):
    app, _ = _app(TokenizerManager(fail=True), [RANK], monkeypatch)
    with TestClient(app) as client:
        r = client.get(LOADS_PATH)
        assert r.status_code == 200
        assert r.json()["loads"][0]["num_waiting_uncached_tokens"] == 2500

    calls = {"n": 0}

    async def flaky():
        calls["n"] += 1
        if calls["n"] > 1:
            raise ConnectionError("scheduler gone")
        return [RANK]
    cache = LoadCache(flaky, wait_s=0.05)
    endpoint = make_loads_endpoint(v1_loads.get_loads, cache, lambda: TokenizerManager([sglang_snapshot()]))

    async def twice():
        return [await endpoint() for _ in range(2)]
    first, second = asyncio.run(twice())
    assert first.body == second.body or b'"num_waiting_uncached_tokens":2500' in second.body
    assert b'"num_waiting_uncached_tokens":2500' in second.body  # the last figures, not an error


def test_fair_loads_flag_reaches_the_runtime_config():
    from sglang_fair.config import RuntimeConfig
    from sglang_fair.core.checks import FieldError
    from sglang_fair.serve import build_parser, runtime_config

    def cfg(*argv):
        return runtime_config(build_parser().parse_known_args(list(argv))[0])
    assert cfg().loads == "fair" and cfg("--fair-loads", "stock").loads == "stock"
    assert RuntimeConfig.from_json(RuntimeConfig(loads="stock").to_json()).loads == "stock"
    with pytest.raises(FieldError):
        RuntimeConfig(loads="bogus")
    with pytest.raises(SystemExit):
        build_parser().parse_known_args(["--fair-loads", "bogus"])
