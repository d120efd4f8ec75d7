"""Live: `sglang-fair serve --emulate-device a100-llama3-8b:5` (micro model, CPU), with the policy off (stock SGLang on
the emulated clock) and with fair. Off: every forward lasts exactly the emulated A100's time for the batch that ran
(x dilation), and /server_info reports the padder's counters. Fair: the same short window is served on the same
clock and the status shows planning from the emulated GPU's prior. Both (with --enable-metrics): /sglang_fair/status
carries the emulated device (top level and per rank, labelled "emulated") and /metrics the sglang_fair:emulated_*
gauges with the spec and dilation as labels, equal to /server_info's counters."""

from __future__ import annotations

import concurrent.futures as cf
import json
import re
import subprocess
import sys
import time

import pytest

from server import cpu_server_args, sglang_server

pytestmark = pytest.mark.live

SPEC = "a100-llama3-8b:5"


def _counters(srv) -> dict:
    return srv.get("/server_info").json()["internal_states"][0]["emulated_device"]


def _metric(text: str, name: str) -> float:
    """The value of `sglang_fair:NAME` for the emulated SPEC (spec and dilation labels), from /metrics' text."""
    found = [float(m.group(2)) for m in re.finditer(rf"^sglang_fair:{name}\{{([^}}]*)\}} (\S+)$", text, re.M)
             if 'emulated_device="a100-llama3-8b:5"' in m.group(1) and 'dilation="5"' in m.group(1)]
    assert len(found) == 1, (name, [line for line in text.splitlines() if "emulated" in line])
    return found[0]


def _check_reports(srv, policy: str) -> dict:
    """/sglang_fair/status and /metrics agree with /server_info's counters, everything labelled emulated (the
    server is idle, so no forward runs between the reads)."""
    counters = _counters(srv)
    status = srv.get("/sglang_fair/status").json()
    metrics = srv.get("/metrics").text
    assert status["policy"] == policy
    top = status["emulated_device"]
    assert top["label"] == "emulated" and top["spec"] == SPEC and top["dilation"] == 5.0
    assert "not a GPU measurement" in top["note"]
    rank = status["ranks"][0]["emulated_device"]
    assert rank["label"] == "emulated" and rank["spec"] == SPEC and rank["dilation"] == 5.0 and rank["active"]
    for k in ("iterations", "overruns", "overrun_fraction", "emulated_s", "real_s"):
        assert rank[k] == pytest.approx(counters[k], rel=1e-12), k
    assert rank["overrun_fraction"] == pytest.approx(rank["overruns"] / rank["iterations"])
    assert _metric(metrics, "emulated_iterations_total") == rank["iterations"]
    assert _metric(metrics, "emulated_overruns_total") == rank["overruns"]
    assert _metric(metrics, "emulated_overrun_fraction") == pytest.approx(rank["overrun_fraction"])
    assert _metric(metrics, "emulated_seconds_total") == pytest.approx(rank["emulated_s"])
    assert _metric(metrics, "emulated_real_forward_seconds_total") == pytest.approx(rank["real_s"])
    assert "# HELP sglang_fair:emulated_iterations_total Emulated device (device-model time, not a GPU" in metrics
    print(f"\n{policy}: emulated {SPEC}: {rank['iterations']} iterations, {rank['overruns']} overruns "
          f"({rank['overrun_fraction']:.0%}), emulated {rank['emulated_s']:.2f} s, real {rank['real_s']:.2f} s")
    return rank


def _server(serve_command, policy: str, trace=None):
    from sglang_fair.emulate.serve_args import split_emulate_args
    _, emu = split_emulate_args(["--emulate-device", SPEC])
    micro = emu.sglang_args([])
    model = micro[micro.index("--model-path") + 1]
    args = ["--fair-policy", policy, "--emulate-device", SPEC, "--enable-metrics", *cpu_server_args(None)]  # serve sizes the KV pool
    if trace is not None:
        args += ["--fair-trace", str(trace)]
    return emu, sglang_server(model, args, command=serve_command, startup_timeout_s=600)


def _trace(path, counts: dict, timeout_s: float = 20.0, quiet_s: float = 1.0) -> dict:
    """The trace's records once it holds at least `counts` records of each kind and has not grown for `quiet_s` (the
    writer flushes every 0.25 s)."""
    from sglang_fair.bench.trace_report import read_trace
    deadline = time.monotonic() + timeout_s
    size, since = -1, time.monotonic()
    while True:
        now_size = path.stat().st_size if path.exists() else 0
        if now_size != size:
            size, since = now_size, time.monotonic()
        recs = read_trace(path) if path.exists() else {}
        enough = all(len(recs.get(k, ())) >= n for k, n in counts.items())
        if (enough and time.monotonic() - since >= quiet_s) or time.monotonic() > deadline:
            return recs
        time.sleep(0.2)


def test_stock_forwards_take_exactly_the_emulated_time(serve_command, generate_ok, prompt_ids, tmp_path):
    from sglang_fair.emulate.device import DeviceModel

    emu, server = _server(serve_command, "off", trace=tmp_path / "off.jsonl")
    dev = DeviceModel(emu.spec)
    with server as srv:
        before = _counters(srv)
        assert before["active"] and before["spec"] == SPEC
        prompt, new = 1000, 4
        t0 = time.perf_counter()
        out = generate_ok(srv.url, prompt_ids(prompt, 3), new)
        wall = time.perf_counter() - t0
        after = _counters(srv)
        rank = _check_reports(srv, "off")
        log = srv.log_text()
        recs = _trace(tmp_path / "off.jsonl", {"device": after["iterations"]})
    # --fair-trace with the policy off: the emulated device's forwards only, each as the counters booked it
    assert set(recs) == {"start", "device"} and recs["start"][0]["policy"] == "off"
    assert recs["start"][0]["emulated_device"] == SPEC and recs["start"][0]["dilation"] == 5.0
    fwd = recs["device"]
    assert len(fwd) == after["iterations"] and sum(d["overrun"] for d in fwd) == after["overruns"]
    assert sum(d["emulated_ms"] for d in fwd) == pytest.approx(after["emulated_s"] * 1e3, rel=1e-9)
    assert [d["batch"] for d in fwd[-new:]] == ["prefill"] + ["decode"] * (new - 1)
    assert fwd[-new]["prefill_tokens"] == prompt
    assert rank["iterations"] == after["iterations"] > 0
    assert len(out["output_ids"]) == new
    want = dev.iteration_s([(prompt, 0)]) + sum(dev.iteration_s((), [prompt + j]) for j in range(1, new))
    assert after["iterations"] - before["iterations"] == new
    assert after["emulated_s"] - before["emulated_s"] == pytest.approx(want, rel=1e-9)  # exactly this batch's time
    # the GPU overlap loop is emulated (the default): the decode steps after the prefill follow a busy loop pass, so
    # the host work before each is hidden behind the previous forward (and can be at most that forward's time)
    credit = after["overlap_credit_s"] - before["overlap_credit_s"]
    assert after["overlap"] is True and 0 < credit <= want
    overrun = after["overrun_s"] - before["overrun_s"]  # forwards the CPU could not finish within the emulated time
    # plus HTTP, tokenizer and scheduling (measured 20-60 ms on an idle 2-core machine)
    assert want <= wall < want + overrun + 0.5, (wall, want, after)
    assert after["late_s_max"] < 0.05  # the wait's own precision (sub-ms when the machine is not saturated)
    assert "emulated device a100-llama3-8b:5 active" in log and "KV pool of the emulated GPU 425" in log


def test_fair_plans_on_the_emulated_clock(serve_command, generate_ok, prompt_ids, tmp_path):
    path = tmp_path / "fair.jsonl"
    _, server = _server(serve_command, "fair", trace=path)
    with server as srv:
        status = srv.get("/sglang_fair/status").json()
        assert status["active"] and status["policy"] == "fair"
        # GPU defaults under emulation (not the CPU catch-up), the policy's own times on the dilated clock
        assert status["config"]["policy_params"] == {"min_budget_ms": 5.0 * 5, "max_budget_ms": 1000.0 * 5}
        with cf.ThreadPoolExecutor(6) as ex:  # a short window: long and short prompts together
            outs = list(ex.map(lambda k: generate_ok(srv.url, prompt_ids(200 + 300 * (k % 3), k), 8), range(6)))
        after = srv.get("/sglang_fair/status").json()
        counters = _counters(srv)
        rank = _check_reports(srv, "fair")
        metrics = srv.get("/metrics").text
        r0 = after["ranks"][0]
        recs = _trace(path, {"forward": r0["measured_iterations"], "device": counters["iterations"]})
        report = subprocess.run([sys.executable, "-m", "sglang_fair.cli", "trace-report", "--json", str(path)],
                                capture_output=True, text=True, timeout=120)
    # --fair-trace: every plan with work (an idle scheduler's wake-ups are left out), every measured forward (linked
    # to its plan) and every emulated forward
    seq = [p["seq"] for p in recs["plan"] if not p.get("stock")]
    assert seq == sorted(set(seq)) and 8 <= len(seq) and seq[-1] <= r0["planned_iterations"]
    assert all(p["running"] or p["waiting"] or p["prefilling"] for p in recs["plan"])
    assert len(recs["forward"]) >= r0["measured_iterations"] and len(recs["device"]) == counters["iterations"]
    assert all(f["plan_seq"] in set(seq) for f in recs["forward"] if f["plan_seq"] > 0)
    assert sum(p["prefill_tokens"] for p in recs["plan"] if not p.get("stock")) >= sum(
        200 + 300 * (k % 3) for k in range(6)) - 6  # every prompt planned (less a fully cached last token)
    assert report.returncode == 0, report.stderr
    summary = json.loads(report.stdout)
    assert summary["policy"] == "fair" and summary["emulated_device"] == SPEC
    assert summary["plans"]["n"] == len(recs["plan"]) and summary["device"]["n"] == counters["iterations"]
    assert "sglang_fair:planned_iterations" in metrics  # the policy's gauges beside the emulated device's
    assert rank["iterations"] >= counters["iterations"]
    assert all(len(o["output_ids"]) == 8 for o in outs)
    assert after["planned_iterations"] >= 8 and not after["ranks"][0]["faults"]
    assert counters["iterations"] >= 8 and counters["emulated_s"] > 0
