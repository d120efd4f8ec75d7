"""Trace loading: the three formats, re-basing, rate scaling, windows, and clear errors for malformed files."""

from __future__ import annotations

import numpy as np
import pytest
from factories import make_trace

from sglang_fair.sim.traces import (load_azure, load_mooncake, load_sharegpt, load_trace, resolve_trace_path,
                                    write_mooncake)

AZURE = """TIMESTAMP,ContextTokens,GeneratedTokens
2023-11-16 18:17:03.9799600,4808,10
2023-11-16 18:17:04.0319600,3180,8
2023-11-16 18:17:06.4799600,100,1
"""


def write(tmp_path, name, text):
    p = tmp_path / name
    p.write_text(text)
    return p


def test_azure_rebased_seconds_and_scaling(tmp_path):
    t = load_azure(write(tmp_path, "a.csv", AZURE))
    assert t.arrival_s == pytest.approx([0.0, 0.052, 2.5])
    assert list(t.prompt_tokens) == [4808, 3180, 100] and list(t.output_tokens) == [10, 8, 1]
    assert t.scaled(2.0).arrival_s == pytest.approx([0.0, 0.026, 1.25])
    assert t.rate_rps == pytest.approx(2 / 2.5)


@pytest.mark.parametrize("text, where", [
    (AZURE.replace("2023-11-16 18:17:04.0319600", "yesterday"), ":3:"),
    (AZURE.replace(",3180,", ",x,"), ":3:"),
    (AZURE.replace(",100,1", ",100"), ":4:"),
    (AZURE.replace("GeneratedTokens", "Gen"), ":1:"),
    (AZURE.replace(",8\n", ",0\n"), ":3:"),
])
def test_azure_malformed_names_file_and_line(tmp_path, text, where):
    p = write(tmp_path, "bad.csv", text)
    with pytest.raises(ValueError, match=f"bad.csv{where}"):
        load_azure(p)


def test_sharegpt_seeded_poisson(tmp_path):
    rows = "num_prefill_tokens,num_decode_tokens,num_total_tokens,pd_ratio\n" + "".join(
        f"{10 + i},{5 + i},{15 + 2 * i},0.5\n" for i in range(2000))
    p = write(tmp_path, "s.csv", rows)
    a = load_sharegpt(p, poisson_rate_rps=4.0, seed=3)
    b = load_sharegpt(p, poisson_rate_rps=4.0, seed=3)
    c = load_sharegpt(p, poisson_rate_rps=4.0, seed=4)
    assert np.array_equal(a.arrival_s, b.arrival_s) and not np.array_equal(a.arrival_s, c.arrival_s)
    assert a.arrival_s[0] == 0.0 and a.rate_rps == pytest.approx(4.0, rel=0.1)
    assert list(a.prompt_tokens[:3]) == [10, 11, 12]
    with pytest.raises(ValueError, match="s2.csv:3:"):
        load_sharegpt(write(tmp_path, "s2.csv", rows.replace("11,6,", "11,-6,")))


def test_mooncake_round_trip_and_errors(tmp_path):
    t = make_trace([(0.0, 300, 4), (0.25, 50, 2), (1.5, 129, 1)])
    p = tmp_path / "t.jsonl"
    write_mooncake(p, t)
    back = load_mooncake(p)
    assert back.arrival_s == pytest.approx(t.arrival_s)
    assert list(back.prompt_tokens) == [300, 50, 129] and list(back.output_tokens) == [4, 2, 1]
    lines = p.read_text().splitlines()
    assert '"hash_ids":[0,1,2]' in lines[0] and '"hash_ids":[3]' in lines[1]
    bad = tmp_path / "bad.jsonl"
    bad.write_text(lines[0] + "\n{not json\n")
    with pytest.raises(ValueError, match="bad.jsonl:2: invalid JSON"):
        load_mooncake(bad)
    bad.write_text(lines[0] + '\n{"timestamp": 5, "input_length": 3}\n')
    with pytest.raises(ValueError, match="bad.jsonl:2: missing key 'output_length'"):
        load_mooncake(bad)


def test_window_limit_clip_and_names(tmp_path, monkeypatch):
    traces = tmp_path / "traces"
    traces.mkdir()
    write(traces, "AzureLLMInferenceTrace_code.csv", AZURE)
    monkeypatch.setenv("SGLANG_FAIR_SHARED", str(tmp_path))
    assert resolve_trace_path("azure-code") == traces / "AzureLLMInferenceTrace_code.csv"
    t = load_trace("azure-code", start_s=0.05, duration_s=10, max_prompt_tokens=1000)
    assert t.arrival_s == pytest.approx([0.0, 2.448]) and list(t.prompt_tokens) == [1000, 100]
    assert len(load_trace("azure-code", limit=2)) == 2
    with pytest.raises(FileNotFoundError, match="azure-conv"):
        load_trace("azure-conv")
    with pytest.raises(ValueError, match="unknown trace format"):
        load_trace(write(tmp_path, "x.csv", "a,b\n1,2\n"))
