"""Live: with the plugin installed, `sglang-fair serve --fair-policy off` returns the same greedy tokens (fp32) as plain
`python -m sglang.launch_server` (plugin inactive) for a fixed prompt set. Throughput is compared by
benchmark/off_vs_stock.py, not here. The two servers run one after the other."""

from __future__ import annotations

import pytest

from server import cpu_server_args, sglang_server
from sglang_fair.live.compare import fixed_prompts, mismatches, run_workload

pytestmark = pytest.mark.live

MAX_NEW = 12


def _outputs(model_path, command, env) -> tuple[list, list, str]:
    prompts = fixed_prompts(8, seed=3, max_tokens=700)
    with sglang_server(model_path, cpu_server_args(16384), command=command, env=env, startup_timeout_s=600) as srv:
        together = run_workload(srv.url, prompts, MAX_NEW, len(prompts)).outputs
        alone = [run_workload(srv.url, [p], MAX_NEW, 1).outputs[0] for p in prompts]
        status = srv.get("/sglang_fair/status")
        body = status.json() if status.status_code == 200 else None
    return together, alone, srv.log_text(), body


def test_fair_policy_off_gives_stock_greedy_outputs(model_path, serve_command):
    stock_together, stock_alone, stock_log, stock_status = _outputs(model_path, None, {"SGLANG_FAIR_CONFIG": None})
    off_together, off_alone, off_log, off_status = _outputs(model_path, [*serve_command, "--fair-policy", "off"], None)
    assert "sglang-fair plugin active" not in stock_log and stock_status is None
    assert "sglang-fair plugin active" in off_log and "hooks verified: policy=off" in off_log
    assert off_status["policy"] == "off" and not off_status["active"] and off_status["hooks_verified"]
    # idle after the last answer, as live.monitor.wait_idle reads it (the soak's stock runs wait on this)
    rank = off_status["ranks"][0]
    assert (rank["kv_used_tokens"], rank["num_running_reqs"], rank["num_waiting_reqs"], rank["deferred_now"]) == \
        (0, 0, 0, 0)
    assert all(len(o) == MAX_NEW for o in off_together + off_alone)
    # One at a time the batch is the request alone: the tokens must be identical.
    assert not mismatches(stock_alone, off_alone)
    # Concurrently, arrival timing may batch differently; fp32 greedy can then only flip a near-tie, and the
    # flipped request must match what it gets alone.
    diff = mismatches(stock_together, off_together)
    assert all(off_together[i] == off_alone[i] or stock_together[i] == stock_alone[i] for i in diff)
    assert len(diff) <= 1, diff
