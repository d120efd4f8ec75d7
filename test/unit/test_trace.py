"""`--fair-trace`: the writer (core/trace.py) and `sglang-fair trace-report` (bench/trace_report.py). The adapter's
and the padder's records are checked in test_adapter_steps.py and test_emulate_pad.py, the whole path live in
test/live/test_emulated_device.py."""

from __future__ import annotations

import orjson
import pytest

from sglang_fair.bench import trace_report
from sglang_fair.cli import main as cli_main
from sglang_fair.core.trace import TraceWriter, holder_pid


def lines(path) -> list[dict]:
    return [orjson.loads(x) for x in path.read_bytes().splitlines()]


def test_writer_starts_with_a_header_and_truncates_the_old_file(tmp_path):
    path = tmp_path / "t.jsonl"
    path.write_text("old run\n" * 100)
    tw = TraceWriter(path, 1 << 20, header={"policy": "fair", "tpot_slo_ms": 100.0})
    tw.write("plan", {"seq": 1, "t_s": 1.0})
    tw.write("forward", {"plan_seq": 1, "measured_ms": 5.0})
    tw.close()
    recs = lines(path)
    assert [r["kind"] for r in recs] == ["start", "plan", "forward"]
    assert recs[0]["policy"] == "fair" and recs[0]["tpot_slo_ms"] == 100.0 and recs[0]["pid"] > 0
    assert recs[2] == {"kind": "forward", "plan_seq": 1, "measured_ms": 5.0}
    assert tw.status()["records"] == 2 and tw.status()["dropped"] == 0


def test_writer_stops_at_its_size_bound_with_a_truncated_record(tmp_path):
    path = tmp_path / "t.jsonl"
    tw = TraceWriter(path, 2000)
    for i in range(200):
        tw.write("forward", {"plan_seq": i, "measured_ms": 1.5, "predicted_ms": 1.0})
    tw.close()
    recs = lines(path)
    assert recs[-1]["kind"] == "truncated" and sum(r["kind"] == "truncated" for r in recs) == 1
    assert path.stat().st_size <= 2000 + 100  # the bound, plus the one truncated record
    assert tw.records == len(recs) - 2 and tw.records + tw.dropped == 200
    assert trace_report.summarize(trace_report.read_trace(path))["truncated"]


def test_a_write_error_stops_the_trace_without_raising(tmp_path):
    tw = TraceWriter(tmp_path / "missing-folder" / "t.jsonl", 1 << 20)
    tw.write("plan", {"seq": 1})
    tw.write("plan", {"seq": 2})
    st = tw.status()
    assert st["error"] and "FileNotFoundError" in st["error"] and st["dropped"] == 2 and st["records"] == 0


def test_a_second_writer_on_a_held_file_stops_with_an_error_and_leaves_the_first_intact(tmp_path):
    path = tmp_path / "t.jsonl"
    assert holder_pid(path) is None  # no file
    first = TraceWriter(path, 1 << 20, header={"policy": "fair"})
    first.write("plan", {"seq": 1})
    first.flush()
    assert holder_pid(path) == lines(path)[0]["pid"]
    second = TraceWriter(path, 1 << 20)  # another server given the same path (a thread stands in for its process)
    second.write("plan", {"seq": 99})
    first.write("plan", {"seq": 2})
    first.close()
    assert "being written by another process" in second.status()["error"] and second.status()["records"] == 0
    assert [r.get("seq") for r in lines(path)] == [None, 1, 2]  # the first writer's records only, none truncated
    assert holder_pid(path) is None  # closed: the lock went with the file


def write_trace(path, plans, forwards, device=(), tpot=100.0):
    tw = TraceWriter(path, 1 << 20, header={"policy": "fair", "tpot_slo_ms": tpot, "ttft_slo_ms": 2000.0,
                                           "emulated_device": "a100-llama3-8b:6" if device else None,
                                           "dilation": 6.0 if device else 1.0})
    for p in plans:
        tw.write("plan", p)
    for f in forwards:
        tw.write("forward", f)
    for d in device:
        tw.write("device", d)
    tw.close()
    return path


def plan(seq, *, prefill=0, decode=0, deferred=0, budget=50.0, predicted=40.0, demoted=0):
    return {"seq": seq, "t_s": seq * 0.1, "running": decode + deferred, "waiting": 3, "prefill_tokens": prefill,
            "decode": decode, "deferred": deferred, "budget_ms": budget, "predicted_ms": predicted,
            "demoted": demoted, "overhead_ms": 0.5}


def forward(seq, measured, predicted=40.0, n_decode=4, gap=0.0):
    return {"plan_seq": seq, "t_start_s": seq * 0.1, "measured_ms": measured, "predicted_ms": predicted,
            "n_decode": n_decode, "max_token_gap_ms": gap}


def test_report_counts_plan_shapes_and_forwards_past_their_plan(tmp_path):
    plans = [plan(1, prefill=512, decode=0, deferred=4), plan(2, decode=4), plan(3, prefill=64, decode=4),
             plan(4, decode=4, demoted=2), {"seq": 4, "t_s": 0.5, "stock": True}]
    forwards = [forward(1, 60.0, n_decode=0),  # past its budget (50) and 1.1 x its prediction (40)
                forward(2, 43.0, gap=250.0),  # within 1.1 x; one token gap past 2 x the TPOT SLO
                forward(3, 30.0, gap=120.0),
                forward(4, 43.0, predicted=30.0, gap=90.0),  # 43 > 1.1 x 30 (its own) but not 1.1 x its plan's 40
                forward(99, 500.0)]  # no such plan: not linked
    s = trace_report.summarize(trace_report.read_trace(write_trace(tmp_path / "t.jsonl", plans, forwards)))
    p, f = s["plans"], s["forwards"]
    assert p["n"] == 5 and p["shapes"] == {"prefill-only": 1, "decode-only": 2, "mixed": 1, "stock": 1}
    assert p["with_deferred_rows"] == 1 and p["deferred_rows"]["max"] == 4 and p["with_demoted"] == 1
    assert f["n"] == 5 and f["linked_to_plan"] == 4 and f["with_decode_rows"] == 4
    assert f["over_plan_budget"] == pytest.approx(1 / 4) and f["over_plan_prediction"] == pytest.approx(1 / 4)
    assert f["slow_by_shape"] == {"prefill-only": 1}
    assert f["under_predicted"] == pytest.approx(3 / 5)  # 60 vs 40, 43 vs 30, 500 vs 40
    assert f["token_gaps_over_tpot"] == 2 and f["token_gaps_over_2x_tpot"] == 1
    assert f["decode_forwards_over_tpot"] == pytest.approx(1 / 4)  # 500 ms
    text = trace_report.render(s)
    assert "plans: 5" in text and "past the plan's budget 25.0%" in text and "EMULATED" not in text


def test_report_budget_counts_only_plans_protecting_decodes(tmp_path):
    plans = [plan(1, prefill=4000, budget=1000.0),  # nothing running: the budget is at its cap, not a decision
             plan(2, decode=4, budget=100.0), plan(3, decode=4, budget=140.0),
             plan(4, decode=4, budget=92.5)]  # a decode behind its envelope lowered it (recover_tpot)
    s = trace_report.summarize(trace_report.read_trace(write_trace(tmp_path / "t.jsonl", plans, [])))
    p = s["plans"]
    assert p["without_running"] == 1 and p["budget_below_tpot"] == 1
    assert p["budget_ms"]["max"] == 140.0 and p["budget_ms"]["p50"] == pytest.approx(100.0)
    text = trace_report.render(s)
    assert "below the TPOT SLO (a decode behind its envelope): 1" in text and "budget at its cap): 1" in text


def test_report_on_an_emulated_trace_counts_overruns_and_cost_by_kind(tmp_path):
    device = [{"batch": "decode", "prefill_tokens": 0, "decode_rows": 4, "emulated_ms": 60.0, "real_ms": 30.0,
               "credit_ms": 3.0, "overrun": False},
              {"batch": "mixed", "prefill_tokens": 100, "decode_rows": 4, "emulated_ms": 90.0, "real_ms": 95.0,
               "credit_ms": 0.0, "overrun": True},
              {"batch": "mixed", "prefill_tokens": 500, "decode_rows": 4, "emulated_ms": 150.0, "real_ms": 45.0,
               "credit_ms": 0.0, "overrun": False}]
    s = trace_report.summarize(trace_report.read_trace(write_trace(tmp_path / "t.jsonl", [], [], device)))
    d = s["device"]
    assert d["n"] == 3 and d["overruns"] == 1 and d["overrun_fraction"] == pytest.approx(1 / 3)
    assert {k: (v["forwards"], v["overruns"]) for k, v in d["by_kind"].items()} == {"decode": (1, 0), "mixed": (2, 1)}
    # emulated GPU time = the server clock's / the dilation (6): decode 10 ms; mixed 15 + 25 ms for 600 prompt tokens
    dec, mixed = d["by_kind"]["decode"], d["by_kind"]["mixed"]
    assert dec["emulated_gpu_ms_mean"] == pytest.approx(10.0) and dec["emulated_gpu_ms_per_1000_prompt_tokens"] is None
    assert mixed["prefill_tokens_mean"] == 300 and mixed["emulated_gpu_ms_mean"] == pytest.approx(20.0)
    assert mixed["emulated_gpu_ms_per_1000_prompt_tokens"] == pytest.approx(1000.0 * 40.0 / 600)
    assert d["credit_ms_mean"] == pytest.approx(1.0)
    text = trace_report.render(s)
    assert "EMULATED a100-llama3-8b:6" in text
    assert "mixed: 300 prompt tokens, 20.0 emulated GPU ms mean; 66.7 emulated GPU ms per 1000 prompt tokens" in text
    assert "decode:" not in text


def test_a_torn_last_line_is_skipped_and_a_bad_line_elsewhere_is_an_error(tmp_path, capsys):
    path = write_trace(tmp_path / "t.jsonl", [plan(1, decode=2)], [forward(1, 10.0)])
    with open(path, "ab") as f:
        f.write(b'{"kind": "forw')  # the writer was killed mid-line
    assert trace_report.summarize(trace_report.read_trace(path))["forwards"]["n"] == 1
    bad = tmp_path / "bad.jsonl"
    bad.write_bytes(b'{"kind": "start"}\nnot json\n{"kind": "plan", "seq": 1}\n')
    assert cli_main(["trace-report", str(bad)]) == 2
    assert "line 2 is not JSON" in capsys.readouterr().err
    assert cli_main(["trace-report", str(tmp_path / "none.jsonl")]) == 2
    assert cli_main(["trace-report", "--json", str(path)]) == 0
    assert orjson.loads(capsys.readouterr().out)["plans"]["n"] == 1


def test_a_window_on_the_wall_clock_selects_one_probes_records(tmp_path):
    """`bench --trace` summarises each probe from the records within its replay: wall-clock times are placed on the
    scheduler's clock by the start record."""
    path = tmp_path / "t.jsonl"
    tw = TraceWriter(path, 1 << 20, clock=lambda: 100.0)  # the start record: t_s 100 on the scheduler's clock
    tw.write("plan", plan(1, decode=2) | {"t_s": 101.0})
    tw.write("plan", plan(2, decode=2, deferred=3) | {"t_s": 105.0})
    tw.write("forward", forward(1, 10.0) | {"t_start_s": 101.1})
    tw.write("forward", forward(2, 700.0, gap=700.0) | {"t_start_s": 105.1})
    tw.write("device", {"t_s": 105.1, "batch": "decode", "emulated_ms": 700.0, "real_ms": 20.0, "credit_ms": 0.0,
                        "overrun": False})
    tw.close()
    recs = trace_report.read_trace(path)
    wall0 = recs["start"][0]["wall_s"]  # = t_s 100
    s = trace_report.summarize(recs, window_wall_s=(wall0 + 4.0, wall0 + 6.0))
    assert s["window_wall_s"] == [wall0 + 4.0, wall0 + 6.0]
    assert s["plans"]["n"] == 1 and s["plans"]["with_deferred_rows"] == 1
    assert s["forwards"]["n"] == 1 and s["forwards"]["measured_ms"]["max"] == 700.0 and s["device"]["n"] == 1
    assert trace_report.summarize(recs)["forwards"]["n"] == 2
    assert "forwards" not in trace_report.summarize(recs, window_wall_s=(wall0 + 10.0, wall0 + 20.0))
    with pytest.raises(ValueError, match="no start record"):
        trace_report.summarize({"plan": [plan(1)]}, window_wall_s=(0.0, 1.0))


def test_bench_traces_plugin_servers_and_stock_only_on_an_emulated_device(tmp_path):
    from sglang_fair.bench.runner import Bench, add_trace_summaries, emulated_config, quick_config
    cpu = quick_config()
    cpu.trace = True
    bench = Bench(cpu, tmp_path, "model")
    fair_args = bench.server_args("fair")
    assert fair_args[fair_args.index("--fair-trace") + 1] == str((tmp_path / "trace-fair.jsonl").resolve())
    assert "--fair-trace" not in bench.server_args("stock")  # --fair-policy off traces only an emulated device
    emu = emulated_config("a100-llama3-8b:6")
    emu.trace = True
    stock = Bench(emu, tmp_path, "model").server_args("stock")
    assert stock[stock.index("--fair-trace") + 1].endswith("trace-stock.jsonl")
    emu.trace = False
    assert "--fair-trace" not in Bench(emu, tmp_path, "model").server_args("fair")
    # each probe gets the summary of its own replay
    path = write_trace(tmp_path / "t.jsonl", [plan(1, decode=2)], [forward(1, 10.0)])
    recs = trace_report.read_trace(path)
    wall0, t0 = recs["start"][0]["wall_s"], recs["start"][0]["t_s"]
    out = {"azure-conv": {"probes": {"1": {"started_wall_s": wall0 - 5.0, "wall_s": 4.0},
                                     "2": {"started_wall_s": wall0 - t0, "wall_s": 1e9}}}}
    add_trace_summaries(out, recs, ["azure-conv"])
    assert out["trace_summary"]["plans"]["n"] == 1
    assert "plans" not in out["azure-conv"]["probes"]["1"]["trace"]  # before the server's first record
    assert out["azure-conv"]["probes"]["2"]["trace"]["plans"]["n"] == 1


def test_bench_traces_each_server_of_a_two_server_run(tmp_path):
    from sglang_fair.bench.runner import Bench, add_server_trace_summaries, emulated_config, quick_config
    emu = emulated_config("a100-llama3-8b:6", cluster=[("stock", "cache_aware")])
    emu.trace = True
    paths = Bench(emu, tmp_path, "model").cluster_trace_paths("stock", "cache_aware")
    assert [p.name for p in paths] == ["trace-2xstock-cache_aware-0.jsonl", "trace-2xstock-cache_aware-1.jsonl"]
    cpu = quick_config()
    cpu.trace = True
    assert Bench(cpu, tmp_path, "model").cluster_trace_paths("stock", "cache_aware") == [None, None]  # stock on a CPU
    emu.trace = False
    assert Bench(emu, tmp_path, "model").cluster_trace_paths("fair", "power_of_two") == [None, None]
    a = trace_report.read_trace(write_trace(tmp_path / "a.jsonl", [plan(1, decode=2)], [forward(1, 10.0)]))
    b = trace_report.read_trace(write_trace(tmp_path / "b.jsonl", [plan(1), plan(2)], [forward(1, 5.0)]))
    wall0, t0 = a["start"][0]["wall_s"], a["start"][0]["t_s"]
    res = {"probes": {"2": {"started_wall_s": wall0 - t0, "wall_s": 1e9}, "4": {"started_wall_s": None}}}
    add_server_trace_summaries(res, [a, b])
    assert [s["plans"]["n"] for s in res["trace_summary"]] == [1, 2]  # one summary per server, in server order
    assert [s["plans"]["n"] for s in res["probes"]["2"]["trace"]] == [1, 2]
    assert "trace" not in res["probes"]["4"]  # a probe without a replay window


def test_a_traced_probe_keeps_each_requests_prompt_due_time_and_client_ttft():
    from sglang_fair.bench.client import Probe
    from sglang_fair.bench.runner import request_details
    from sglang_fair.core.metrics import RequestTimes

    recs = [RequestTimes("r0", 1.5, 1.75, 3.0, 5, 2.0, 0.1, 5),
            RequestTimes("r1", 2.0, None, None, 0, 2.0, 0.1, 5, demoted=True)]
    d = request_details(Probe(scale=1.0, records=recs, aborted=False, wall_s=9.0, input_lens=[120, 7]))
    assert d == {"input_lens": [120, 7], "due_s": [1.5, 2.0], "ttft_ms": [250.0, None], "demoted": [1]}
    orjson.dumps(d)  # it goes into results.json as it is


def test_overruns_projected_to_other_dilations_from_the_real_times(tmp_path):
    # at dilation 6, forwards of 10 emulated GPU ms (60 ms on the clock) that took 20 / 45 / 59 / 61 / 70 ms on the
    # host, the last with 8 ms of overlap credit: each overruns below dilation (real + credit) / 10 = 2, 4.5, 5.9,
    # 6.1, 7.8; as recorded, 61 and 70 overrun at 6
    device = [{"batch": "decode", "prefill_tokens": 0, "emulated_ms": 60.0, "real_ms": r, "credit_ms": c,
               "overrun": r > 60.0 - c} for r, c in ((20.0, 0.0), (45.0, 0.0), (59.0, 0.0), (61.0, 0.0), (70.0, 8.0))]
    recs = trace_report.read_trace(write_trace(tmp_path / "t.jsonl", [], [], device))
    need = trace_report.dilation_needed(device, 6.0)
    assert need == pytest.approx([2.0, 4.5, 5.9, 6.1, 7.8])
    assert trace_report.projected_overruns(need, 6.0) == pytest.approx(0.4)  # the recorded overruns
    assert trace_report.projected_overruns(need, 4.0) == pytest.approx(0.8)
    assert trace_report.projected_overruns(need, 8.0) == 0.0
    assert trace_report.min_dilation(need) == 8  # 7 leaves the 7.8 one overrunning: 20% > 2%
    assert trace_report.min_dilation(need, limit=0.2) == 7 and trace_report.min_dilation(need, 1.0) == 1
    assert trace_report.min_dilation(trace_report.dilation_needed([], 6.0)) is None
    d = trace_report.summarize(recs)["device"]
    assert d["overrun_fraction_at_dilation"]["6"] == pytest.approx(d["overrun_fraction"])
    assert d["overrun_fraction_at_dilation"]["4"] == pytest.approx(0.8) and d["min_dilation"] == 8
    assert "k 4 80.00%, k 6 40.00%, k 8 0.00%" in trace_report.render(trace_report.summarize(recs))
    assert "smallest k with at most 2% overruns: 8" in trace_report.render(trace_report.summarize(recs))
