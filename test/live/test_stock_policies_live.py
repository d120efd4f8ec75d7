"""Live: the issue-16 policies (`sglang-default`, `sglang-mixed`, `rad`) plan inside SGLang's real scheduler through
the plugin like the others (they only return Plans), and the requests complete."""

from __future__ import annotations

import concurrent.futures as cf

import pytest

from server import cpu_server_args, sglang_server

pytestmark = pytest.mark.live


@pytest.mark.parametrize("policy, params", [("sglang-default", ["--fair-param", "token_budget=256"]),
                                            ("sglang-mixed", ["--fair-param", "token_budget=256"]),
                                            ("rad", ["--fair-param", "max_batch_tokens=256"])])
def test_stock_and_rad_policies_plan_inside_the_scheduler(policy, params, model_path, serve_command, generate_ok,
                                                          prompt_ids):
    with sglang_server(model_path, ["--fair-policy", policy, *params, *cpu_server_args(8192)],
                       command=serve_command, startup_timeout_s=600) as srv:
        before = srv.get("/sglang_fair/status").json()
        assert before["active"] and before["policy"] == policy and before["hooks_verified"]
        with cf.ThreadPoolExecutor(4) as ex:
            outs = list(ex.map(lambda i: generate_ok(srv.url, prompt_ids(300 + 100 * i, i), 8), range(4)))
        assert all(len(o["output_ids"]) == 8 for o in outs)
        after = srv.get("/sglang_fair/status").json()
        # a 600-token prompt under a 256-token cap needs >= 3 planned steps on its own
        assert after["planned_iterations"] >= before["planned_iterations"] + 3
