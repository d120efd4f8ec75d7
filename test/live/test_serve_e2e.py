"""Live, issue-level: `sglang-fair serve` runs our planning code inside SGLang's real scheduler child, and the
installed plugin leaves plain `python -m sglang.launch_server` stock."""

from __future__ import annotations

import concurrent.futures as cf
import sys

import pytest
import requests

from server import cpu_server_args, sglang_server

pytestmark = pytest.mark.live

SERVE = [sys.executable, "-m", "sglang_fair.cli", "serve"]


@pytest.fixture(scope="module")
def model_path() -> str:
    from sglang_fair.model import make_model
    return str(make_model())


def _generate(url: str, n_prompt: int, seed: int) -> dict:
    ids = [(seed * 7919 + i * 31) % 4000 + 10 for i in range(n_prompt)]
    body = {"input_ids": ids, "sampling_params": {"temperature": 0.0, "max_new_tokens": 8, "ignore_eos": True}}
    r = requests.post(url + "/generate", json=body, timeout=240)
    r.raise_for_status()
    return r.json()


def test_serve_sarathi_plans_inside_the_scheduler(model_path):
    with sglang_server(model_path, ["--fair-policy", "sarathi", "--fair-param", "token_budget=256",
                                    *cpu_server_args(8192)], command=SERVE, startup_timeout_s=600) as srv:
        before = srv.get("/sglang_fair/status").json()
        assert before["active"] and before["policy"] == "sarathi" and before["hooks_verified"]
        assert before["config"]["policy_params"] == {"token_budget": 256}
        assert before["versions"]["sglang"] == "0.5.23"
        with cf.ThreadPoolExecutor(4) as ex:
            outs = list(ex.map(lambda i: _generate(srv.url, 300 + 100 * i, i), range(4)))
        assert all(len(o["output_ids"]) == 8 for o in outs)
        after = srv.get("/sglang_fair/status").json()
        # a 600-token prompt under a 256-token budget needs >= 3 planned steps on its own
        assert after["planned_iterations"] >= before["planned_iterations"] + 3
        load = srv.get("/get_load").json()
        assert isinstance(load, list) and len(load) == 1 and isinstance(load[0]["num_tokens"], int)
    assert "sglang-fair serve: ready" in srv.log_text()


def test_installed_plugin_leaves_plain_launch_server_stock(model_path):
    # The plugin is installed (entry point present) but not activated: no status route, no scheduler hooks.
    from importlib.metadata import entry_points
    assert any(ep.name == "sglang_fair" for ep in entry_points(group="sglang.srt.plugins"))
    with sglang_server(model_path, cpu_server_args(8192), env={"SGLANG_FAIR_CONFIG": None},
                       startup_timeout_s=600) as srv:
        assert srv.get("/sglang_fair/status").status_code == 404
        assert srv.get("/get_load").status_code == 404
        assert len(_generate(srv.url, 50, 1)["output_ids"]) == 8
        state = requests.get(srv.url + "/server_info", timeout=30).json()["internal_states"][0]
        assert "sglang_fair" not in state
    assert "sglang-fair plugin active" not in srv.log_text()
