"""Live, issue-level: `sglang-fair serve` runs our planning code inside SGLang's real scheduler child, and the
installed plugin leaves plain `python -m sglang.launch_server` stock."""

from __future__ import annotations

import concurrent.futures as cf

import pytest
import requests

from server import cpu_server_args, sglang_server

pytestmark = pytest.mark.live


def test_serve_sarathi_plans_inside_the_scheduler(model_path, serve_command, generate_ok, prompt_ids):
    with sglang_server(model_path, ["--fair-policy", "sarathi", "--fair-param", "token_budget=256",
                                    *cpu_server_args(8192)], command=serve_command, startup_timeout_s=600) as srv:
        before = srv.get("/sglang_fair/status").json()
        assert before["active"] and before["policy"] == "sarathi" and before["hooks_verified"]
        assert before["config"]["policy_params"] == {"token_budget": 256}
        assert before["versions"]["sglang"] == "0.5.23"
        with cf.ThreadPoolExecutor(4) as ex:
            outs = list(ex.map(lambda i: generate_ok(srv.url, prompt_ids(300 + 100 * i, i), 8), range(4)))
        assert all(len(o["output_ids"]) == 8 for o in outs)
        after = srv.get("/sglang_fair/status").json()
        # a 600-token prompt under a 256-token budget needs >= 3 planned steps on its own
        assert after["planned_iterations"] >= before["planned_iterations"] + 3
        load = srv.get("/get_load").json()
        assert isinstance(load, list) and len(load) == 1 and isinstance(load[0]["num_tokens"], int)
    assert "sglang-fair serve: ready" in srv.log_text()


def test_installed_plugin_leaves_plain_launch_server_stock(model_path, generate_ok, prompt_ids):
    # The plugin is installed (entry point present) but not activated: no status route, no scheduler hooks.
    from importlib.metadata import entry_points
    assert any(ep.name == "sglang_fair" for ep in entry_points(group="sglang.srt.plugins"))
    with sglang_server(model_path, cpu_server_args(8192), env={"SGLANG_FAIR_CONFIG": None},
                       startup_timeout_s=600) as srv:
        assert srv.get("/sglang_fair/status").status_code == 404
        assert srv.get("/get_load").status_code == 404
        assert len(generate_ok(srv.url, prompt_ids(50, 1), 8)["output_ids"]) == 8
        state = requests.get(srv.url + "/server_info", timeout=30).json()["internal_states"][0]
        assert "sglang_fair" not in state
    assert "sglang-fair plugin active" not in srv.log_text()
