"""CostModel arithmetic, max_chunk, serialisation, and the shipped presets (checked against hardware physics)."""

from __future__ import annotations

import json
import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sglang_fair.core.cost_model import FEATURES, MAX_CHUNK_TOKENS, CostModel
from sglang_fair.core.fit import load_model_json, save_model_json
from sglang_fair.core.presets import load_preset, load_preset_doc, preset_names

M = CostModel(base_s=0.01, per_prefill_token_s=1e-4, per_attn_token2_s=1e-8, per_decode_req_s=2e-4,
              per_context_token_s=1e-7)


def test_predict_is_base_plus_pieces():
    prefills, decodes = [(300, 0), (200, 1000)], [100, 2000, 50]
    expected = (0.01 + 300 * (1e-4 + 1e-8 * 300) + 200 * (1e-4 + 1e-8 * 1200)
                + 3 * 2e-4 + 1e-7 * 2150)
    assert M.predict(prefills, decodes) == pytest.approx(expected, rel=1e-12)
    assert M.predict(prefills, decodes) == pytest.approx(float(M.features(prefills, decodes) @ M.coefficients()))


def test_empty_iteration_costs_nothing_and_features_have_fixed_order():
    assert M.predict() == 0.0
    assert M.prefill_s(0, 5000) == 0.0
    assert len(FEATURES) == len(M.coefficients()) == len(M.features([(1, 0)], [1]))


@pytest.mark.parametrize("bad", [-1e-9, math.nan, math.inf])
def test_rejects_negative_or_non_finite_coefficients(bad):
    with pytest.raises(ValueError):
        CostModel(base_s=0.01, per_prefill_token_s=bad)


def test_dict_and_coefficient_round_trip():
    assert CostModel.from_dict(M.to_dict()) == M
    assert CostModel.from_coefficients(M.coefficients()) == M
    assert CostModel.from_coefficients([-1.0, 1e-4, 0, 0, 0]).base_s == 0.0  # clamped, not an error


coef = st.floats(min_value=0.0, max_value=1e-2, allow_nan=False)
small = st.one_of(st.just(0.0), st.floats(min_value=1e-18, max_value=1e-6))


@settings(max_examples=300, deadline=None)
@given(b=coef, a=small, prefix=st.integers(0, 200_000), remaining=st.floats(min_value=1e-6, max_value=30.0))
def test_max_chunk_inverts_prefill_s(b, a, prefix, remaining):
    m = CostModel(base_s=0.01, per_prefill_token_s=b, per_attn_token2_s=a)
    n = m.max_chunk(remaining, prefix)
    if b == 0.0 and a == 0.0:
        assert n == MAX_CHUNK_TOKENS
        return
    assert 0 <= n <= MAX_CHUNK_TOKENS
    assert m.prefill_s(n, prefix) <= remaining
    assert n == MAX_CHUNK_TOKENS or m.prefill_s(n + 1, prefix) > remaining


def test_max_chunk_edges():
    assert M.max_chunk(0.0) == 0 and M.max_chunk(-1.0) == 0 and M.max_chunk(math.nan) == 0
    assert M.max_chunk(math.inf) == MAX_CHUNK_TOKENS
    # a quadratic term far below b^2 / remaining must not lose the answer to cancellation
    m = CostModel(base_s=0.0, per_prefill_token_s=1e-4, per_attn_token2_s=1e-19)
    assert m.max_chunk(0.1) == pytest.approx(1000, abs=1)
    # the attention term makes chunks after a long prefix smaller
    assert M.max_chunk(0.1, prefix_tokens=20_000) < M.max_chunk(0.1)


# ---- presets ------------------------------------------------------------------------------------------------------
# Llama-3-8B: 8.03e9 parameters (bf16, 16.1 GB); KV per token = 32 layers x 2 (K, V) x 8 heads x 128 x 2 bytes.
PARAMS, WEIGHT_BYTES, KV_BYTES_PER_TOKEN = 8.03e9, 16.06e9, 32 * 2 * 8 * 128 * 2
GPU = {  # dense bf16 peak FLOP/s, HBM bytes/s (A100-80GB SXM, H100 SXM)
    "a100-llama3-8b": (312e12, 2.039e12),
    "h100-llama3-8b": (989e12, 3.35e12),
}


def test_preset_names_and_loading():
    assert {"a100-llama3-8b", "h100-llama3-8b", "cpu-tiny-llama"} <= set(preset_names())
    for name in preset_names():
        doc = load_preset_doc(name)
        assert isinstance(load_preset(name), CostModel)
        assert doc["source"] and doc["fit"]["n_samples"] > 0
    assert "Llama-2-7B" in load_preset_doc("h100-llama3-8b")["source"]  # says how it was derived
    assert load_preset("cpu-embedded") == load_preset("cpu-tiny-llama")  # alias
    with pytest.raises(ValueError, match="unknown cost-model preset"):
        load_preset("no-such-preset")


@pytest.mark.parametrize("name", sorted(GPU))
def test_gpu_presets_respect_physics(name):
    peak_flops, hbm = GPU[name]
    m = load_preset(name)
    prefill = m.predict([(2048, 0)])
    # compute-bound: 2 FLOP per parameter per token; no kernel beats peak, and below 25% MFU would be broken
    assert 2 * PARAMS * 2048 / peak_flops < prefill < 2 * PARAMS * 2048 / (0.25 * peak_flops)
    decode = m.predict((), [1024] * 64)
    # memory-bound: every step streams the weights and the batch's KV at least once
    floor = (WEIGHT_BYTES + 64 * 1024 * KV_BYTES_PER_TOKEN) / hbm
    assert floor < decode < 5 * floor
    assert 0.010 < load_preset("a100-llama3-8b").predict((), [1024] * 64) < 0.060
    assert 0.100 < load_preset("a100-llama3-8b").predict([(2048, 0)]) < 0.400


def test_h100_is_faster_than_a100_everywhere():
    a, h = load_preset("a100-llama3-8b"), load_preset("h100-llama3-8b")
    for batch in ([(2048, 0)], [(512, 4096)], ((), [2048] * 128), ([(256, 0)], [1024] * 32)):
        pf, dec = (batch, ()) if isinstance(batch, list) else batch
        assert h.predict(pf, dec) < a.predict(pf, dec)


def test_cpu_preset_is_a_live_fit_that_knows_mixed_forwards_are_slow():
    """The embedded model's prior is a live online fit (float32, 2-core AVX2): iterations measured there were a
    367-token prefill 105-170 ms, 6 decodes ~45 ms, and the same prefill with 6 decodes riding along 360 ms."""
    m = load_preset("cpu-tiny-llama")
    doc = load_preset_doc("cpu-tiny-llama")
    assert 0.09 <= m.predict([(367, 0)]) <= 0.25
    assert 0.02 <= m.predict((), [400] * 6) <= 0.08
    assert m.predict([(367, 0)], [400] * 6) > m.predict([(367, 0)]) + m.predict((), [400] * 6)  # mixing costs extra
    assert m.per_mixed_decode_req_s > 3 * m.per_decode_req_s
    assert doc["fit"]["n_samples"] >= 24 and doc["fit"]["median_abs_pct_err"] < 15 and "online fit" in doc["source"]


def test_preset_from_json_path_and_bad_files(tmp_path):
    path = tmp_path / "mine.json"
    save_model_json(path, M, source="unit test")
    assert load_preset(path) == M and load_preset(str(path)) == M
    assert load_model_json(path)[1]["source"] == "unit test"
    (tmp_path / "bare.json").write_text(json.dumps(M.to_dict()))
    assert load_preset(tmp_path / "bare.json") == M
    (tmp_path / "broken.json").write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        load_preset(tmp_path / "broken.json")
    (tmp_path / "neg.json").write_text(json.dumps({"model": {"base_s": -1, "per_prefill_token_s": 0}}))
    with pytest.raises(ValueError, match="bad cost model"):
        load_preset(tmp_path / "neg.json")
    (tmp_path / "nofields.json").write_text(json.dumps({"model": {"base_s": 0.1}}))
    with pytest.raises(ValueError, match="lacks"):
        load_preset(tmp_path / "nofields.json")
    with pytest.raises(FileNotFoundError):
        load_preset(tmp_path / "missing.json")
