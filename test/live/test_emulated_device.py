"""Live: `sglang-fair serve --emulate-device a100-llama3-8b:5` (micro model, CPU), with the policy off (stock SGLang on
the emulated clock) and with fair. Off: every forward lasts exactly the emulated A100's time for the batch that ran
(x dilation), and /server_info reports the padder's counters. Fair: the same short window is served on the same
clock and the status shows planning from the emulated GPU's prior."""

from __future__ import annotations

import concurrent.futures as cf
import time

import pytest

from server import cpu_server_args, sglang_server

pytestmark = pytest.mark.live

SPEC = "a100-llama3-8b:5"


def _counters(srv) -> dict:
    return srv.get("/server_info").json()["internal_states"][0]["emulated_device"]


def _server(serve_command, policy: str):
    from sglang_fair.emulate.serve_args import split_emulate_args
    _, emu = split_emulate_args(["--emulate-device", SPEC])
    micro = emu.sglang_args([])
    model = micro[micro.index("--model-path") + 1]
    base = cpu_server_args()
    i = base.index("--max-total-tokens")
    args = ["--fair-policy", policy, "--emulate-device", SPEC, *base[:i], *base[i + 2:]]  # serve sizes the KV pool
    return emu, sglang_server(model, args, command=serve_command, startup_timeout_s=600)


def test_stock_forwards_take_exactly_the_emulated_time(serve_command, generate_ok, prompt_ids):
    from sglang_fair.emulate.device import DeviceModel

    emu, server = _server(serve_command, "off")
    dev = DeviceModel(emu.spec)
    with server as srv:
        before = _counters(srv)
        assert before["active"] and before["spec"] == SPEC
        prompt, new = 1000, 4
        t0 = time.perf_counter()
        out = generate_ok(srv.url, prompt_ids(prompt, 3), new)
        wall = time.perf_counter() - t0
        after = _counters(srv)
        log = srv.log_text()
    assert len(out["output_ids"]) == new
    want = dev.iteration_s([(prompt, 0)]) + sum(dev.iteration_s((), [prompt + j]) for j in range(1, new))
    assert after["iterations"] - before["iterations"] == new
    assert after["emulated_s"] - before["emulated_s"] == pytest.approx(want, rel=1e-9)  # exactly this batch's time
    overrun = after["overrun_s"] - before["overrun_s"]  # forwards the CPU could not finish within the emulated time
    # plus HTTP, tokenizer and scheduling (measured 20-60 ms on an idle 2-core machine)
    assert want <= wall < want + overrun + 0.5, (wall, want, after)
    assert after["late_s_max"] < 0.05  # the wait's own precision (sub-ms when the machine is not saturated)
    assert "emulated device a100-llama3-8b:5 active" in log and "KV pool of the emulated GPU 425" in log


def test_fair_plans_on_the_emulated_clock(serve_command, generate_ok, prompt_ids):
    _, server = _server(serve_command, "fair")
    with server as srv:
        status = srv.get("/sglang_fair/status").json()
        assert status["active"] and status["policy"] == "fair"
        assert status["config"]["policy_params"] == {}  # GPU defaults under emulation, not the CPU catch-up
        with cf.ThreadPoolExecutor(6) as ex:  # a short window: long and short prompts together
            outs = list(ex.map(lambda k: generate_ok(srv.url, prompt_ids(200 + 300 * (k % 3), k), 8), range(6)))
        after = srv.get("/sglang_fair/status").json()
        counters = _counters(srv)
    assert all(len(o["output_ids"]) == 8 for o in outs)
    assert after["planned_iterations"] >= 8 and not after["ranks"][0]["faults"]
    assert counters["iterations"] >= 8 and counters["emulated_s"] > 0
