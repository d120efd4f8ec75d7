"""Live: a setting `sglang-fair serve`'s command-line check cannot see (SGLang started directly with the plugin's
configuration, as a `--config` file or the Engine API would set it) is still refused by the scheduler, naming the flag,
and the server does not come up."""

from __future__ import annotations

import os
import sys

import pytest

from server import cpu_server_args, free_port, run_in_own_group

pytestmark = pytest.mark.live


@pytest.mark.parametrize("flag", ["--enable-priority-scheduling"])
def test_scheduler_refuses_a_flag_set_past_serve(flag, tmp_path):
    from sglang_fair.live.server import server_slots
    from sglang_fair.data.model import make_model
    from sglang_fair.config import ENV_VAR, RuntimeConfig

    env = {**os.environ, ENV_VAR: RuntimeConfig(policy="fair").to_json(), "SGLANG_USE_CPU_ENGINE": "1"}
    argv = [sys.executable, "-m", "sglang.launch_server", "--model-path", str(make_model()), "--host", "127.0.0.1",
            "--port", str(free_port()), *cpu_server_args(4096), flag]
    log = tmp_path / "server.log"
    with server_slots(1):
        returncode = run_in_own_group(argv, log, timeout_s=400, env=env)
    text = log.read_text(errors="replace")
    assert returncode != 0, text[-2000:]
    assert "does not support" in text and flag in text, text[-2000:]
