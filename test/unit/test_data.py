"""Shipped data (traces, profiles) without any folder outside the package; traces as users bring them; capacity
explains a capacity of 0; bad trace files give one error line (exit 2)."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import numpy as np
import pytest
from factories import make_trace

import sglang_fair
from sglang_fair.cli import main
from sglang_fair.core.cost_model import CostModel
from sglang_fair.data import SHARED_ENV, TRACE_FILES, find_csv, profiles_dir
from sglang_fair.sim.capacity import explain_no_capacity
from sglang_fair.sim.traces import load_trace, resolve_trace_path

PACKAGE = Path(sglang_fair.__file__).resolve().parent


@pytest.fixture
def no_shared(monkeypatch):
    monkeypatch.delenv(SHARED_ENV, raising=False)


@pytest.mark.parametrize("name, n", [("azure-code", 8819), ("azure-conv", 19366), ("sharegpt", 30731)])
def test_shipped_traces_load_from_the_package(no_shared, name, n):
    path = resolve_trace_path(name)
    assert PACKAGE in path.parents and path.suffix == ".gz"
    t = load_trace(name)
    assert len(t) == n and t.name == name and t.arrival_s[0] == 0.0
    assert np.all(np.diff(t.arrival_s) >= 0) and t.prompt_tokens.min() >= 1


def test_shipped_profiles_and_licences(no_shared):
    vidur = profiles_dir()
    assert PACKAGE in vidur.parents and "MIT License" in (vidur / "LICENSE").read_text()
    for model in ("a100_meta-llama_Meta-Llama-3-8B", "a100_meta-llama_Llama-2-7b-hf", "h100_meta-llama_Llama-2-7b-hf"):
        assert find_csv(vidur / model, "mlp.csv").name == "mlp.csv.gz"
    notice = (PACKAGE / "data" / "NOTICE.md").read_text()
    assert "CC-BY-4.0" in notice and all(f in notice for f in TRACE_FILES.values())


def test_shared_override_replaces_the_shipped_copy(tmp_path, monkeypatch):
    monkeypatch.setenv(SHARED_ENV, str(tmp_path))
    with pytest.raises(FileNotFoundError, match=f"unset {SHARED_ENV}"):
        resolve_trace_path("azure-conv")


def test_gzip_trace_file(tmp_path):
    p = tmp_path / "mine.csv.gz"
    p.write_bytes(gzip.compress(b"TIMESTAMP,ContextTokens,GeneratedTokens\n2023-11-16 18:17:03,10,3\n"
                                b"2023-11-16 18:17:04,20,4\n"))
    t = load_trace(p)
    assert t.name == "mine" and list(t.prompt_tokens) == [10, 20] and t.arrival_s == pytest.approx([0.0, 1.0])


def test_spread_arrivals_up_to_the_next_distinct_timestamp():
    t = make_trace([(0.0, 10, 2), (0.0, 10, 2), (0.0, 10, 2), (3.0, 10, 2), (5.0, 10, 2), (5.0, 10, 2)])
    s = t.spread_arrivals()
    # the group at 0 spreads over [0, 3); the last group over the median distinct gap (median(3, 2) = 2.5)
    assert s.arrival_s == pytest.approx([0.0, 1.0, 2.0, 3.0, 5.0, 6.25])
    assert list(s.prompt_tokens) == list(t.prompt_tokens)
    distinct = make_trace([(0.0, 10, 2), (1.0, 10, 2)])
    assert distinct.spread_arrivals() is distinct


def test_clip_context_counts_what_it_clipped():
    t = make_trace([(0.0, 7000, 2000), (1.0, 100, 50), (2.0, 10, 9000)]).clip_context(8192)
    assert list(t.prompt_tokens) == [6192, 100, 1] and list(t.output_tokens) == [2000, 50, 8191]
    assert t.context_clipped == 2 and np.all(t.prompt_tokens + t.output_tokens <= 8192)
    assert t.scaled(2.0).context_clipped == 2
    with pytest.raises(ValueError, match="max_context_tokens"):
        t.clip_context(1)


AZURE_HEAD = "TIMESTAMP,ContextTokens,GeneratedTokens\n"


@pytest.mark.parametrize("body, where, field", [
    ("2023-11-16 18:17:05,10,3\n2023-11-16 18:17:04,10,3\n", ":3:", "non-decreasing"),
    ("2023-11-16 18:17:05,-10,3\n", ":2:", "ContextTokens"),
    ("2023-11-16 18:17:05,ten,3\n", ":2:", "ContextTokens"),
    ("2023-11-16 18:17:05,10,3\n", ":1:", "GeneratedTokens"),
])
def test_bad_trace_one_line_exit_2(tmp_path, capsys, body, where, field):
    text = AZURE_HEAD + body if field != "GeneratedTokens" else "TIMESTAMP,ContextTokens\n2023-11-16 18:17:05,10\n"
    p = tmp_path / "bad.csv"
    p.write_text(text)
    with pytest.raises(SystemExit) as exc:
        main(["capacity", "--trace", str(p), "--policies", "fair", "--no-progress"])
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err
    assert err.startswith("sglang-fair capacity: --trace: ") and f"bad.csv{where}" in err and field in err


COST = CostModel(base_s=0.01, per_prefill_token_s=1e-4, per_decode_req_s=1e-3)


def test_explain_no_capacity_names_bursts_and_lone_misses():
    # 2 requests whose prefill alone takes 1.01 s (> TTFT 0.5 s); a burst of 30 x 0.1 s prefills at t = 5 s
    rows = [(0.0, 10000, 2), (1.0, 10000, 2)] + [(5.0, 1000, 2)] * 30 + [(6.0 + i, 100, 2) for i in range(70)]
    why = explain_no_capacity(make_trace(rows), COST, 0.5, 0.1, 1, "P99")
    assert why[0].startswith("2 requests miss the TTFT SLO (500 ms) even when served alone")
    assert "a burst of 30 simultaneous requests at t=5.0 s" in why[1] and "at least 26 of them" in why[1]
    assert "together 28 of 102 requests" in why[2]


def test_capacity_zero_says_why_in_text_and_json(tmp_path, capsys):
    p = tmp_path / "burst.csv"
    p.write_text(AZURE_HEAD + "".join(f"2023-11-16 18:17:0{1 + i // 40},4000,4\n" for i in range(80)))
    assert main(["capacity", "--trace", str(p), "--policies", "fair", "--json", "--no-progress"]) == 0
    out = json.loads(capsys.readouterr().out)["policies"]["fair"]
    assert out["capacity"] == 0 and out["why"] and any("burst of 40" in w for w in out["why"])
    # fair demotes most of the burst (a demoted request is a miss: in the P99 at its TTFT, at least over the SLO)
    assert out["figures_at_scale"] > 0 and out["p99_ttft_ms"] > 2000 and out["demoted_at_capacity"] > 0
    assert main(["capacity", "--trace", str(p), "--policies", "fair@admission=off", "--json", "--no-progress"]) == 0
    out = json.loads(capsys.readouterr().out)["policies"]["fair@admission=off"]
    assert out["capacity"] == 0 and out["figures_at_scale"] > 0 and out["p99_ttft_ms"] is not None
    assert main(["capacity", "--trace", str(p), "--policies", "fair", "--no-progress"]) == 0
    text = capsys.readouterr().out
    assert "fair: no rate scale meets the tail criterion:" in text and "burst of 40" in text


def test_sim_reports_spread_and_clipping(capsys):
    assert main(["sim", "--trace", "azure-code", "--duration-s", "20", "--spread-arrivals", "--max-context-tokens",
                 "2048", "--json", "--no-progress"]) == 0
    cap = capsys.readouterr()
    out = json.loads(cap.out)
    assert out["spread_arrivals"] is True and out["max_context_tokens"] == 2048 and out["context_clipped"] > 0
    assert f"clipped {out['context_clipped']} of {out['requests']} requests" in cap.err


def test_sim_token_gaps_show_the_gap_bound(capsys):
    # Azure conv near fair's capacity: decodes ahead of their envelopes sit out prefill surges. With the gap
    # deadlines capping the budget (the default) no gap passes 5 TPOT SLOs; the old guard let some run a budget past.
    figures = {}
    for spec in ("fair", "fair@gap_caps_budget=false"):
        assert main(["sim", "--trace", "azure-conv", "--duration-s", "60", "--rate-scale", "1.2", "--policy", spec,
                     "--token-gaps", "--json", "--no-progress"]) == 0
        out = json.loads(capsys.readouterr().out)
        figures[spec] = out["token_gaps"]
        assert figures[spec]["gaps"] > 0
    new, old = figures["fair"], figures["fair@gap_caps_budget=false"]
    assert new["max_ms"] <= 500.0 + 1e-6 and new["requests_gap_over_tpot"]["5"] == 0.0
    assert old["max_ms"] > 500.0 and old["requests_gap_over_tpot"]["5"] > 0.0
    assert new["gaps"] == old["gaps"]  # the same tokens, differently timed
    assert new["p50_ms"] <= new["p99_ms"] <= new["p99_9_ms"] <= new["max_ms"]


def test_sim_on_the_emulated_device_model_runs_the_batches_at_its_times(capsys):
    """`--device`: the same plans priced by the emulated A100 (Vidur operator profiles) instead of the planner's
    fitted preset; the run records it, and its device time differs from the preset's (about 4-8% slower on mixed
    batches, docs/results.md)."""
    out = {}
    for extra in ([], ["--device", "a100-llama3-8b"]):
        assert main(["sim", "--trace", "azure-conv", "--limit", "60", "--policy", "sarathi-512", "--json",
                     "--no-progress", *extra]) == 0
        out[bool(extra)] = json.loads(capsys.readouterr().out)
    assert out[True]["device"] == "a100-llama3-8b" and out[False]["device"] is None
    assert out[True]["finished"] == out[False]["finished"] == 60
    assert out[True]["p50_ttft_s"] != out[False]["p50_ttft_s"]
    assert main(["sim", "--trace", "azure-conv", "--limit", "60", "--policy", "fair", "--json", "--no-progress",
                 "--device", "a100-llama3-8b", "--online-fit"]) == 0
    fitted = json.loads(capsys.readouterr().out)
    assert fitted["online_fit"] is True and out[True]["online_fit"] is False and fitted["finished"] == 60


@pytest.mark.parametrize("argv, flag, words", [
    (["capacity", "--policies", "fair,nope"], "--policies", "nope: unknown policy 'nope'"),
    (["capacity", "--policies", "fair@nope=1"], "--policies", "unknown parameter 'nope' for policy 'fair'"),
    (["capacity", "--policies", "windserve@x=1"], "--policies", "unknown parameter 'x' for windserve"),
    (["capacity", "--policies", "fair@min_budget_ms=abc"], "--policies", "min_budget_ms must be"),
    (["capacity", "--policies", ","], "--policies", "no policy given"),
    (["capacity", "--policies", "fair+reject", "--replicas", "2"], "--policies", "one replica only"),
    (["capacity", "--preset", "nope"], "--preset", "unknown cost-model preset 'nope'"),
    (["capacity", "--replicas", "0"], "--replicas", "must be an int >= 1, got 0"),
    (["capacity", "--rel-tol", "-1"], "--rel-tol", "must be a finite number > 0"),
    (["capacity", "--kv-capacity-tokens", "0"], "--kv-capacity-tokens", "must be an int >= 1, got 0"),
    (["capacity", "--noise-cv", "-1"], "--noise-cv", "must be a finite number >= 0"),
    (["capacity", "--ttft-slo-ms", "0"], "--ttft-slo-ms", "must be a finite number > 0"),
    (["capacity", "--tpot-slo-ms", "nan"], "--tpot-slo-ms", "must be a finite number > 0"),
    (["capacity", "--replicas", "2", "--load-poll-interval-s", "-1"], "--load-poll-interval-s", ">= 0"),
    (["sim", "--rate-scale", "0"], "--rate-scale", "must be a finite number > 0"),
    (["sim", "--policy", "fair@x=1"], "--policy", "unknown parameter 'x'"),
    (["sim", "--device", "tpu-v9"], "--device", "unknown emulated device 'tpu-v9'"),
    (["capacity", "--device", "a100-llama3-8b:6"], "--device", "give the preset alone"),
    (["capacity", "--device", "a100-llama3-8b", "--policies", "windserve"], "--policies", "cost model only"),
])
def test_bad_sim_and_capacity_flags_one_line_naming_the_flag_exit_2(capsys, argv, flag, words):
    with pytest.raises(SystemExit) as exc:
        main([*argv, "--trace", "azure-code", "--limit", "20", "--no-progress"])
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err
    assert err.startswith(f"sglang-fair {argv[0]}: {flag}: ") and words in err


@pytest.mark.parametrize("argv, words", [
    (["--requests", "0"], "--requests must be >= 1"),
    (["--rate-scale", "0"], "--rate-scale must be > 0"),
    (["--rate-scale", "nan"], "--rate-scale must be > 0"),
    (["--length-scale", "-1"], "--length-scale must be > 0"),
    (["--max-prompt-tokens", "0"], "--max-prompt-tokens must be >= 1"),
    (["--max-output-tokens", "0"], "--max-output-tokens must be >= 1"),
    (["--trace", "no-such-trace"], "--trace: trace 'no-such-trace'"),
])
def test_bad_demo_flags_exit_before_any_server_starts(argv, words):
    with pytest.raises(SystemExit) as exc:
        main(["demo", *argv])
    assert str(exc.value).startswith("sglang-fair demo: ") and words in str(exc.value)
