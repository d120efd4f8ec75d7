"""`bench --emulate`: configuration on the emulated device, invalid (overrun) probes never pass, the summary's keys
and labels, and the simulator driven by an external iteration time (the device model) for the fidelity replay."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
from factories import COST

from sglang_fair.bench.emulated import (EMULATED_POLICIES, MAX_OVERRUN_FRACTION, counter_delta, overrun_fraction,
                                        policy_args)
from sglang_fair.bench.emulated_report import emulated_summary, markdown
from sglang_fair.bench.runner import emulated_config
from sglang_fair.bench.search import live_capacities
from sglang_fair.policies import make_policy
from sglang_fair.sim.engine import EngineConfig, simulate
from sglang_fair.sim.traces import Trace


def test_config_runs_real_lengths_with_gpu_slos_on_the_device():
    cfg = emulated_config("a100-llama3-8b:3")
    assert cfg.dilation == 3.0 and cfg.stock_names[0] == "stock" and cfg.policies == ["stock", "fair"]
    assert (cfg.ttft_slo_ms, cfg.tpot_slo_ms) == (2000.0, 100.0)
    w = cfg.workloads[0]
    assert (w.trace, w.prompt_scale, w.output_scale, w.max_context_tokens) == ("azure-conv", 1.0, 1.0, 8192)
    trace = w.build()
    assert len(trace) == 150 and trace.prompt_tokens.mean() > 1000  # the trace's own lengths
    assert set(emulated_config("h100-llama3-8b", full=True).policies) == set(EMULATED_POLICIES)
    args = policy_args("stock-mixed-512", "a100-llama3-8b:3", ttft_slo_ms=6000, tpot_slo_ms=300)
    assert args[args.index("--emulate-device") + 1] == "a100-llama3-8b:3" and "--enable-mixed-chunk" in args
    assert args[args.index("--tpot-slo-ms") + 1] == "300" and args[args.index("--emulate-overlap") + 1] == "on"
    off = policy_args("fair", "a100-llama3-8b:3", ttft_slo_ms=6000, tpot_slo_ms=300, overlap=False)
    assert off[off.index("--emulate-overlap") + 1] == "off"
    with pytest.raises(ValueError, match="unknown emulated policy"):
        policy_args("fair-strict", "a100-llama3-8b", ttft_slo_ms=1, tpot_slo_ms=1)


def test_window_start_moves_the_quick_window_and_bad_uses_name_the_flag():
    from sglang_fair.bench.cli import _config
    from sglang_fair.sim.traces import load_trace
    cfg = emulated_config("a100-llama3-8b:6", start_request=1150)
    arrivals = load_trace("azure-conv").arrival_s
    w = cfg.workloads[0]
    assert w.start_s == pytest.approx(arrivals[1150]) and w.n_requests == 150
    assert emulated_config("a100-llama3-8b:6", start_request=1000).workloads[0].build().prompt_tokens.tolist() == \
        emulated_config("a100-llama3-8b:6").workloads[0].build().prompt_tokens.tolist()  # the default window
    base = dict(emulate="a100-llama3-8b:6", full=False, policies=None, ttft_slo_ms=None, tpot_slo_ms=None,
                no_cluster=False, max_context_tokens=None, spread_arrivals=False, emulate_overlap="on", trace=False,
                cluster=None)
    assert _config(SimpleNamespace(**base, window_start=1150)).workloads[0].start_s == pytest.approx(arrivals[1150])
    for extra, words in (({"window_start": len(arrivals)}, "must be a request number from 0 to"),
                         ({"window_start": -1}, "must be a request number"),
                         ({"window_start": 5, "full": True}, "quick mode only"),
                         ({"window_start": 5, "emulate": None}, "needs --emulate")):
        with pytest.raises(SystemExit, match="--window-start: " + words):
            _config(SimpleNamespace(**{**base, **extra}))


def test_window_trace_picks_the_full_modes_window_of_another_trace():
    from sglang_fair.bench.cli import _config
    from sglang_fair.bench.emulated import WINDOWS
    from sglang_fair.sim.traces import load_trace
    full = {w.trace: w for w in emulated_config("a100-llama3-8b:6", full=True).workloads}
    assert set(full) == set(WINDOWS)
    for name in WINDOWS:  # the quick mode's window of a trace is the full mode's, lengths as the trace has them
        cfg = _config(_cli(window_trace=name))
        assert cfg.workloads == [full[name]] and cfg.policies == ["stock", "fair"]
    share = _config(_cli(window_trace="sharegpt", window_start=40)).workloads[0]
    arrivals = load_trace("sharegpt").arrival_s
    assert share.start_s == pytest.approx(arrivals[40]) and share.n_requests == 100
    assert share.build().prompt_tokens.tolist()[:5] == load_trace(
        "sharegpt", max_context_tokens=8192).prompt_tokens.tolist()[40:45]
    for extra, words in (({"window_trace": "sharegpt", "full": True}, "--window-trace: quick mode only"),
                         ({"window_trace": "azure-code", "emulate": None}, "--window-trace: needs --emulate"),
                         ({"window_trace": "sharegpt", "window_start": len(arrivals) - 99},
                          "--window-start: must be a request number from 0 to")):
        with pytest.raises(SystemExit, match=words):
            _config(_cli(**extra))


def test_overrun_fraction_counts_only_the_probe():
    before = [{"decode": [100, 5], "mixed": [10, 0]}, {}]
    after = [{"decode": [250, 8], "mixed": [60, 1]}, {"prefill": [40, 0]}]  # the second server's first forwards
    delta = counter_delta(before, after)
    assert delta == {"decode": [150, 3], "mixed": [50, 1], "prefill": [40, 0]}
    assert overrun_fraction(delta) == pytest.approx(4 / 240)
    assert overrun_fraction(counter_delta([{"decode": [7, 1]}], [{"decode": [7, 1]}])) == 0.0


def test_an_overrunning_probe_says_which_batches_overran_and_which_flag_fixes_it():
    from sglang_fair.bench.emulated import overrun_hint
    hint = overrun_hint({"decode": [3438, 283], "mixed": [543, 1], "prefill": [6, 0]}, "a100-llama3-8b:6")
    assert "decode 283/3438, mixed 1/543" in hint and "prefill" not in hint
    assert "--emulate a100-llama3-8b:9" in hint and "dilation 6" in hint and "2%" in hint
    assert "--trace" in hint and "min_dilation" in hint


def test_an_invalid_probe_never_counts_as_a_pass():
    def ev(x):  # every probe meets the SLOs, but the clock overran at 2.0
        if x == 2.0:
            return None
        return SimpleNamespace(n=10, finished=10, p99_ttft_s=0.1, p99_tpot_s=0.01, attainment=1.0, rejected=0)

    res = live_capacities(ev, 1.0, 0.2, 1.0, max_probes=3)
    assert res["capacity"] == pytest.approx(1.414) and res["first_failing_scale"] == 2.0
    assert res["probes"][2.0] is None and res["capacity_attainment_lower_bound"] == pytest.approx(1.414)


def _probe(ttft_s, tpot_s, overruns):
    return {"p50_ttft_s": ttft_s, "p99_ttft_s": ttft_s, "p50_tpot_s": tpot_s, "p99_tpot_s": tpot_s,
            "attainment": 1.0, "overrun_fraction": overruns, "invalid": overruns > MAX_OVERRUN_FRACTION,
            "emulated_gpu": {"p50_ttft_ms": ttft_s * 1e3 / 3, "p99_ttft_ms": ttft_s * 1e3 / 3,
                             "p50_tpot_ms": tpot_s * 1e3 / 3, "p99_tpot_ms": tpot_s * 1e3 / 3}}


def test_summary_carries_the_device_the_ratio_and_the_largest_overrun(tmp_path):
    cfg = emulated_config("a100-llama3-8b:3")
    key = "azure-conv"
    stock = {key: {"capacity": 1.0, "capacity_rps": 5.5, "capacity_attainment_lower_bound": 1.0,
                   "probes": {"1": _probe(3.0, 0.2, 0.0), "2": _probe(30.0, 0.9, 0.0)}}}
    fair = {key: {"capacity": 1.5, "capacity_rps": 8.3, "capacity_attainment_lower_bound": 1.5,
                  "probes": {"1": _probe(1.5, 0.15, 0.01), "1.5": _probe(3.0, 0.27, 0.01),
                             "2": _probe(3.0, 0.2, 0.05)}}}
    results = {"config": cfg.to_json(), "single": {"stock": stock, "fair": fair}, "wall_s": 60.0,
               "machine": {"cores": 2, "cpu": "x", "python_loop_1e7_s": 1.234}, "versions": {"sglang": "0.5.23"},
               "workloads": {key: {"rate_rps": 5.5, "prompt_tokens_sent_mean": 1160.0, "output_tokens_mean": 225.0,
                                   "stability_bound_scale": {"trace_lengths": 2.0, "sent_lengths": 1.875}}}}
    s = emulated_summary(results)
    assert s["emulated_device"] == "a100-llama3-8b:3" and s["dilation"] == 3.0 and "emulated" in s["label"]
    assert s["emulated_overlap"] is True
    assert s["stability_bound_scale"] == 1.875 and s["fair_fraction_of_bound"] == pytest.approx(1.5 / 1.875)
    assert s["capacity_ratio_fair_vs_stock"] == 1.5 and s["overrun_fraction"] == 0.05
    assert s["policies"]["fair"]["invalid_probes"] == ["2"]
    assert s["policies"]["fair"]["p99_ttft_ms"] == pytest.approx(1000.0)  # GPU time: dilated seconds / 3
    assert s["policies"]["fair"]["at_stock_capacity"]["p99_ttft_ms"] == pytest.approx(500.0)
    md = markdown(results, "sglang-fair bench --emulate a100-llama3-8b:3", "img/live")
    assert "**Emulated**" in md and "Not a GPU measurement" in md and "2 (5.0% invalid)" in md
    assert "2 CPU cores (x; 10^7 Python additions in 1.23 s)" in md and "valid on this host from" not in md
    assert "1.875 on the prompts as sent, 2.000 on the trace's lengths" in md
    assert "overlap loop emulated: on" in md and "(img/live/emulated-live-azure-conv.png)" in md
    from sglang_fair.bench.report import plots
    assert [p.name for p in plots(results, tmp_path)] == ["emulated-live-azure-conv.png"]  # not the CPU run's plot
    assert "--fair-trace" not in md  # no traced probe, no trace table
    assert s["min_dilation"] is None  # no traces, no projection
    pct = {"p50": 1.0, "p90": 1.0, "p99": 1.0}
    fair[key]["probes"]["1.5"]["trace"] = {
        "forwards": {"n": 40, "decode_forwards_over_tpot": 0.05, "over_plan_prediction": 0.025,
                     "measured_ms": pct | {"max": 900.0}, "max_token_gap_ms": pct | {"max": 1800.0}},
        "plans": {"with_deferred_rows": 7, "with_demoted": 2}}
    stock[key]["probes"]["1"]["trace"] = {"plans": {}}  # a stock trace window without forwards: no row
    stock[key]["probes"]["2"]["trace"] = {"device": {"n": 30, "emulated_ms": pct | {"max": 1500.0},
                                                     "min_dilation": 3}}  # stock's
    md = markdown(results, "sglang-fair bench --emulate a100-llama3-8b:3 --trace", "img/live")
    assert "| fair | 1.5 | 40 | 5.0% | 2.5% | 300 | 600 | 7 | 2 |" in md  # server-clock ms / dilation 3
    assert emulated_summary(results)["min_dilation"] == 3  # from stock's device window, the only one with records
    assert "(every probe valid on this host from dilation 3, projected from the servers' traces)" in md
    assert md.count("| stock | 1 |") == 1  # its capacity row only, no trace row
    assert "| stock | 2 | 30 | - | - | 500 | - | - | - |" in md  # the emulated device's forwards only


def test_simulator_takes_the_true_iteration_time_from_outside():
    """The fidelity replay: the policy plans with a cost model, time advances by the device's function."""
    trace = Trace("t", np.array([0.0, 0.0]), np.array([100, 50]), np.array([3, 2]))
    seen = []

    def device(prefills, decodes):
        seen.append((tuple(prefills), tuple(decodes)))
        return 0.05

    res = simulate(trace, make_policy("sarathi", token_budget=512), COST, EngineConfig(), iteration_time=device)
    assert seen[0] == (((100, 0), (50, 0)), ())  # both prompts whole, no prefix, in the first batch
    assert res.busy_s == pytest.approx(0.05 * len(seen)) and len(seen) == res.iterations
    assert any(d for _, d in seen)  # later batches carry the decode contexts


def test_stability_bound_of_the_window_on_the_prompts_as_sent():
    from types import SimpleNamespace

    from sglang_fair.bench.emulated_report import stability_bounds
    from sglang_fair.core.presets import load_preset
    from sglang_fair.sim.capacity import stability_bound_scale

    cfg = emulated_config("a100-llama3-8b:6")
    w = cfg.workloads[0]
    trace = w.build()
    longer = [int(p) + 256 for p in trace.prompt_tokens]  # the client sent longer prompts than the trace's
    bench = SimpleNamespace(config=cfg, traces={w.trace: (w, trace, None)},
                            probes={("stock", w.trace): {1.0: SimpleNamespace(input_lens=longer)}})
    results = {"workloads": {w.trace: {}}}
    stability_bounds(bench, results)
    b = results["workloads"][w.trace]["stability_bound_scale"]
    assert b["trace_lengths"] == pytest.approx(stability_bound_scale(trace, load_preset("a100-llama3-8b"), 0.1))
    assert 0 < b["sent_lengths"] < b["trace_lengths"]  # more prefill per request: the device saturates earlier
    bench.probes = {}
    stability_bounds(bench, results)
    assert results["workloads"][w.trace]["stability_bound_scale"]["sent_lengths"] is None


def test_fidelity_counts_a_demoted_request_at_the_ttft_it_got_as_the_live_side_does(tmp_path):
    """bench_serving measures a demoted request's real TTFT; the replay must too, or one demotion makes the
    simulator's P99 TTFT +inf and its error infinite."""
    from sglang_fair.bench.fidelity import compare_probe
    from sglang_fair.core.fit import save_model_json
    from sglang_fair.core.metrics import RequestTimes

    trace = Trace("t", np.zeros(12), np.full(12, 4000), np.full(12, 4))  # a burst no schedule serves on time
    replay = simulate(trace, make_policy("fair"), COST, EngineConfig(ttft_slo_ms=500, tpot_slo_ms=100))
    assert any(r.demoted for r in replay.records)  # fair (demote-longest) demotes part of it
    save_model_json(tmp_path / "cost.json", COST, source="test")
    live = [RequestTimes(f"r{i}", 0.0, 1.0 + i, 1.3 + i, 4, 0.5, 0.1, 4) for i in range(12)]
    probe = SimpleNamespace(scale=1.0, input_lens=[4000] * 12, records=live)
    row = compare_probe("fair", trace, probe, str(tmp_path / "cost.json"), ttft_slo_ms=500, tpot_slo_ms=100,
                        kv_tokens=400_000)
    longest = max(r.first_token_s - r.arrival_s for r in replay.records) * 1e3
    assert 500 < row["p99_ttft_ms"]["sim"] <= longest + 1e-6 and row["p99_ttft_ms"]["rel_err"] is not None


def _cli(**kw):
    base = dict(emulate="a100-llama3-8b:6", full=False, policies=None, ttft_slo_ms=None, tpot_slo_ms=None,
                no_cluster=False, max_context_tokens=None, spread_arrivals=False, emulate_overlap="on", trace=False,
                window_start=None, window_trace=None, cluster=None)
    return SimpleNamespace(**{**base, **kw})


def test_cluster_flag_pairs_servers_with_routers_on_a_double_window_and_bad_uses_name_the_flag():
    from sglang_fair.bench.cli import _config
    from sglang_fair.sim.traces import load_trace
    arrivals = load_trace("azure-conv").arrival_s
    cfg = _config(_cli(cluster="stock/cache_aware, fair/power_of_two", policies="none"))
    assert cfg.cluster == [("stock", "cache_aware"), ("fair", "power_of_two")] and cfg.policies == []
    cw = cfg.cluster_workload
    assert cw.n_requests == 300 and cw.start_s == pytest.approx(arrivals[1000]) and cw.max_context_tokens == 8192
    assert cw.build().prompt_tokens[:150].tolist() == cfg.workloads[0].build().prompt_tokens.tolist()
    assert cfg.cluster_max_probes == cfg.max_probes
    moved = _config(_cli(cluster="fair/cache_aware", window_start=900))
    assert moved.cluster_workload.start_s == pytest.approx(arrivals[900]) and moved.policies == ["stock", "fair"]
    assert _config(_cli()).cluster_workload is None  # no --cluster: no double window
    tuned = _config(_cli(cluster="fair/cache_aware", start_scale=1.189, step=1.19, max_probes=6, rel_tol=0.03))
    assert (tuned.start_scale, tuned.step, tuned.max_probes, tuned.cluster_max_probes, tuned.rel_tol) == \
        (1.189, 1.19, 6, 6, 0.03) and tuned.start_scales == {}
    for extra, words in (({"cluster": "fair/least_load"}, "--cluster: 'fair/least_load' is not SERVER/ROUTER"),
                         ({"cluster": "fair-strict/cache_aware"}, "--cluster: 'fair-strict/cache_aware'"),
                         ({"cluster": "fair"}, "--cluster: 'fair' is not SERVER/ROUTER"),
                         ({"cluster": "fair/power_of_two", "no_cluster": True}, "--cluster: cannot be combined"),
                         ({"policies": "none"}, "--policies: 'none' needs --cluster"),
                         ({"cluster": "fair/power_of_two", "window_start": len(arrivals) - 200},
                          f"--window-start: must be a request number from 0 to {len(arrivals) - 300}")):
        with pytest.raises(SystemExit, match=words):
            _config(_cli(**extra))


def test_cluster_runs_get_their_own_window_device_flags_and_a_poll_in_device_time(tmp_path):
    from sglang_fair.bench.runner import Bench, quick_config
    cfg = emulated_config("a100-llama3-8b:6", cluster=[("fair", "power_of_two")])
    bench = Bench(cfg, tmp_path, "model")
    bench.prepare()
    assert bench.single_keys == ["azure-conv"] and bench.cluster_key == "azure-conv-300"
    assert len(bench.traces["azure-conv"][1]) == 150 and len(bench.traces["azure-conv-300"][1]) == 300
    assert (tmp_path / "traces" / "azure-conv-300.jsonl").exists()
    assert bench.router_poll_s == 6  # /get_load every emulated second
    args = bench.cluster_args("fair")
    assert args[args.index("--emulate-device") + 1] == "a100-llama3-8b:6"
    assert args[args.index("--tpot-slo-ms") + 1] == "600" and "--disable-radix-cache" in args
    assert "--max-total-tokens" not in args and "--enable-metrics" in args  # the emulated GPU's KV pool
    stock = bench.cluster_args("stock")
    assert stock[stock.index("--chunked-prefill-size") + 1] == "8192" and "--fair-save-cost-model" not in stock
    cpu = Bench(quick_config(), tmp_path / "cpu", "model")
    assert cpu.router_poll_s == 1 and cpu.cluster_key == "azure-code"


def test_cluster_summary_ratios_overruns_and_the_bound_on_two_gpus():
    from sglang_fair.bench.emulated_report import cluster_summary, stability_bounds
    from sglang_fair.core.presets import load_preset
    from sglang_fair.sim.capacity import stability_bound_scale

    cfg = emulated_config("a100-llama3-8b:3", cluster=[("stock", "cache_aware"), ("fair", "power_of_two")])
    key = "azure-conv-300"

    def run(server, router, cap, overruns):
        return {"capacity": cap, "capacity_rps": cap * 5.5, "server_policy": server, "router_policy": router,
                "workload": key, "requests_per_worker": [310.0, 290.0], "router_poll_s": 3,
                "probes": {f"{cap:g}": _probe(1.5, 0.25, overruns), "4": _probe(30.0, 0.9, 0.0)}}

    results = {"config": cfg.to_json(), "single": {}, "wall_s": 60.0, "machine": {"cores": 2, "cpu": "x"},
               "versions": {"sglang": "0.5.23"},
               "cluster": {"2xstock/cache_aware": run("stock", "cache_aware", 1.6, 0.0),
                           "2xfair/power_of_two": run("fair", "power_of_two", 2.4, 0.015)},
               "workloads": {"azure-conv": {"rate_rps": 5.5, "prompt_tokens_sent_mean": None,
                                            "output_tokens_mean": 225.0,
                                            "stability_bound_scale": {"trace_lengths": 1.27, "gpus": 1}},
                             key: {"rate_rps": 5.6, "prompt_tokens_sent_mean": 1150.0, "output_tokens_mean": 230.0,
                                   "stability_bound_scale": {"trace_lengths": 2.6, "sent_lengths": 2.5,
                                                             "gpus": 2}}}}
    cs = cluster_summary(results)
    assert cs["ratios"] == {"2xfair/power_of_two vs 2xstock/cache_aware": pytest.approx(1.5)}
    assert cs["runs"]["2xfair/power_of_two"]["p99_ttft_ms"] == pytest.approx(500.0)  # emulated ms: / dilation 3
    results["cluster"]["2xfair/power_of_two"]["probes"]["4"]["trace"] = [{"device": {"min_dilation": 5}},
                                                                           {"device": {"min_dilation": 7}}]
    s = emulated_summary(results)
    assert s["overrun_fraction"] == 0.015 and s["capacity_ratio_fair_vs_stock"] is None and s["policies"] == {}
    assert s["min_dilation"] == 7  # the larger of the two servers' projections
    # no single-server run: no single-server bound at the top; the cluster's own bound (2 GPUs, prompts as sent)
    assert s["stability_bound_scale"] is None and s["cluster"]["stability_bound_scale"] == 2.5
    md = markdown(results, "sglang-fair bench --emulate a100-llama3-8b:3 --cluster ...", "img/live")
    assert "### azure-conv (" not in md  # no single-server runs, no single table
    assert "| 2xfair/power_of_two | 2.4 | 13.20 | 500 / 500 | 83 / 83 | 1.00 | 310 / 290 | 2.4 (1.5%), 4 (0.0%) |" in md
    assert "- capacity 2xfair/power_of_two vs 2xstock/cache_aware: 1.50x" in md
    assert "stability bound of the window on 2 emulated GPUs: 2.500 on the prompts as sent" in md

    bench = SimpleNamespace(config=cfg, cluster_key=key, probes={},
                            traces={key: (cfg.cluster_workload, cfg.cluster_workload.build(), None)})
    out = {"workloads": {key: {}}}
    stability_bounds(bench, out)
    one = stability_bound_scale(bench.traces[key][1], load_preset("a100-llama3-8b"), 0.1)
    assert out["workloads"][key]["stability_bound_scale"]["trace_lengths"] == pytest.approx(2 * one)
    assert out["workloads"][key]["stability_bound_scale"]["gpus"] == 2


def test_each_two_server_probe_records_how_the_router_split_it(tmp_path, monkeypatch):
    from sglang_fair.bench import runner
    from sglang_fair.bench.client import Probe
    from sglang_fair.core.metrics import RequestTimes

    cfg = emulated_config("a100-llama3-8b:6", cluster=[("stock", "cache_aware")])
    bench = runner.Bench(cfg, tmp_path, "model")
    bench.prepare()
    served = {"a": 0, "b": 0}

    def probe(url, key, scale, abort_urls=None, cap_s=None):  # the router sends 2 of 3 requests to a per probe
        served["a"] += 2 * int(scale)
        served["b"] += int(scale)
        recs = [RequestTimes(f"r{i}", 0.0, 0.1, 0.5, 5, 12.0, 0.6, 5) for i in range(10)]
        return Probe(scale / 6, recs, False, 1.0, [100] * 10, started_wall_s=1.0)

    monkeypatch.setattr(bench, "_probe", probe)
    monkeypatch.setattr(runner, "requests_served", lambda url: float(served[url]))
    monkeypatch.setattr(runner.emulated, "read_counters", lambda server: {"decode": [10, 0]})
    servers = [SimpleNamespace(url="a"), SimpleNamespace(url="b")]
    res = bench._search("2xstock/cache_aware", "router", bench.cluster_key, 2.0, 2, servers=servers)
    assert res["probes"]["2"]["requests_per_server"] == [4.0, 2.0]
    assert res["probes"]["4"]["requests_per_server"] == [8.0, 4.0]
    single = bench._search("stock", "srv", "azure-conv", 2.0, 1, servers=servers[:1])
    assert "requests_per_server" not in single["probes"]["2"]  # one server: no split to record
    cpu = runner.Bench(runner.quick_config(), tmp_path / "cpu", "model")  # the CPU's two-server runs too
    cpu.prepare()
    monkeypatch.setattr(cpu, "_probe", probe)
    res = cpu._search("2xstock/cache_aware", "router", cpu.cluster_key, 2.0, 1, servers=servers)
    assert res["probes"]["2"]["requests_per_server"] == [4.0, 2.0] and "overrun_fraction" not in res["probes"]["2"]


def test_a_live_probe_reports_the_demotions_its_servers_counted(tmp_path, monkeypatch):
    # bench_serving cannot see a demotion: the probe's `demoted` is the servers' demotions_total over the probe, and
    # the requests the servers list as demoted (by prompt length and arrival) count as SLO misses
    from sglang_fair.bench import runner
    from sglang_fair.bench.client import Probe
    from sglang_fair.core.metrics import RequestTimes

    bench = runner.Bench(emulated_config("a100-llama3-8b:6", cluster=[("fair", "power_of_two")]), tmp_path, "model")
    bench.prepare()
    total = {"a": 5, "b": 1}
    recent = {"a": [], "b": []}

    def probe(url, key, scale, abort_urls=None, cap_s=None):  # each probe: a demotes 2, b 1; a lists one of them
        total["a"] += 2
        total["b"] += 1
        started = 1000.0 * (total["b"] + 1)
        recent["a"].append({"rid": f"x{total['b']}", "prompt_tokens": 300, "arrival_wall_s": started + 0.5})
        recs = [RequestTimes(f"r{i}", 0.0, 0.1, 0.5, 5, 12.0, 0.6, 5) for i in range(10)]
        return Probe(scale / 6, recs, False, 1.0, [100 * (i + 1) for i in range(10)], started_wall_s=started)

    monkeypatch.setattr(bench, "_probe", probe)
    monkeypatch.setattr(runner.emulated, "read_counters", lambda server: {"decode": [10, 0]})
    monkeypatch.setattr(runner, "requests_served", lambda url: 0.0)
    monkeypatch.setattr(runner, "server_demotions", lambda server: (total[server.url], list(recent[server.url])))
    servers = [SimpleNamespace(url="a"), SimpleNamespace(url="b")]
    res = bench._search("fair", "srv", "azure-conv", 2.0, 2, servers=servers[:1])
    assert [p["demoted"] for p in res["probes"].values()] == [2, 2]
    # each probe finds its own listed demotion (request 2, 300 tokens) and not the earlier probe's
    assert [(p["demoted_matched"], p["demoted_unmatched"], p["attainment"]) for p in res["probes"].values()] == \
        [(1, 0, 0.9)] * 2
    res = bench._search("2xfair/power_of_two", "router", bench.cluster_key, 2.0, 1, servers=servers)
    assert res["probes"]["2"]["demoted"] == 3
    monkeypatch.setattr(runner, "server_demotions", lambda server: (None, []))  # status unreadable: unknown, not 0
    res = bench._search("fair", "srv", "azure-conv", 2.0, 1, servers=servers[:1])
    assert res["probes"]["2"]["demoted"] is None and res["probes"]["2"]["attainment"] == 1.0


def test_server_demotions_reads_the_plugin_status_and_is_none_when_it_cannot():
    from sglang_fair.bench.runner import server_demotions

    class Srv:
        def __init__(self, body):
            self.body = body

        def get(self, path, timeout):
            assert path == "/sglang_fair/status"
            if isinstance(self.body, Exception):
                raise self.body
            return SimpleNamespace(json=lambda: self.body)

    listed = [{"rid": "a", "prompt_tokens": 300, "arrival_wall_s": 5.0}]
    assert server_demotions(Srv({"ranks": [{"demotions_total": 7, "demoted_recent": listed}]})) == (7, listed)
    assert server_demotions(Srv({"ranks": [{"demotions_total": 7}]})) == (7, [])
    assert server_demotions(Srv({"ranks": [{}]})) == (None, [])
    assert server_demotions(Srv(ConnectionError("refused"))) == (None, [])


def test_the_host_speed_probe_times_a_python_loop():
    from sglang_fair.bench.runner import host_loop_s
    assert 0.0 < host_loop_s(1000) < 10.0
