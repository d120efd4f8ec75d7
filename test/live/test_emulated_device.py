"""Live: a real SGLang server (micro model, CPU) with the emulated device: every forward lasts exactly the emulated
A100's time for the batch that ran (x dilation), and /server_info reports the padder's counters.

Until the plugin entry point calls `emulate.hook.register_from_env()`, a `sitecustomize` on PYTHONPATH does that
call in every SGLang process (the same call; registering twice is a no-op)."""

from __future__ import annotations

import time

import pytest

from server import cpu_server_args, sglang_server

pytestmark = pytest.mark.live

HARNESS = """import os
if os.environ.get("SGLANG_FAIR_EMULATE_DEVICE"):
    from sglang_fair.emulate.hook import register_from_env
    register_from_env()
"""


def _counters(srv) -> dict:
    return srv.get("/server_info").json()["internal_states"][0]["emulated_device"]


def test_forwards_take_the_emulated_time(tmp_path):
    from sglang_fair.emulate.device import DeviceModel
    from sglang_fair.emulate.serve_args import split_emulate_args

    (tmp_path / "sitecustomize.py").write_text(HARNESS)
    _, emu = split_emulate_args(["--emulate-device", "a100-llama3-8b:5"])
    dev = DeviceModel(emu.spec)
    base = cpu_server_args(16384)
    i = base.index("--max-total-tokens")
    args = emu.sglang_args(base[:i] + base[i + 2:])  # adds the micro model and the emulated GPU's KV pool
    model = args[args.index("--model-path") + 1]
    rest = args[:args.index("--model-path")] + args[args.index("--model-path") + 2:]
    with sglang_server(model, rest, env={**emu.env(), "PYTHONPATH": str(tmp_path), "SGLANG_FAIR_CONFIG": None},
                       startup_timeout_s=600) as srv:
        before = _counters(srv)
        assert before["active"] and before["spec"] == "a100-llama3-8b:5"
        prompt, new = 1000, 4
        ids = [(17 + 7 * j) % 4000 + 10 for j in range(prompt)]
        t0 = time.perf_counter()
        r = srv.post("/generate", json={"input_ids": ids, "sampling_params": {"max_new_tokens": new,
                                                                            "temperature": 0, "ignore_eos": True}})
        wall = time.perf_counter() - t0
        assert r.status_code == 200, r.text
        after = _counters(srv)
        log = srv.log_text()
    want = dev.iteration_s([(prompt, 0)]) + sum(dev.iteration_s((), [prompt + j]) for j in range(1, new))
    assert after["iterations"] - before["iterations"] == new
    assert after["emulated_s"] - before["emulated_s"] == pytest.approx(want, rel=1e-9)  # exactly this batch's time
    overrun = after["overrun_s"] - before["overrun_s"]  # forwards the CPU could not finish within the emulated time
    # plus HTTP, tokenizer and scheduling (measured 20-60 ms on an idle 2-core machine)
    assert want <= wall < want + overrun + 0.5, (wall, want, after)
    assert after["late_s_max"] < 0.05  # the wait's own precision (sub-ms when the machine is not saturated)
    assert "emulated device a100-llama3-8b:5 active" in log and "KV pool of the emulated GPU 425" in log
