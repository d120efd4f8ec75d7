"""--fair-save-cost-model: the online fit written by the scheduler loads back through --fair-cost-model's loader."""

from __future__ import annotations

import json

import numpy as np
import pytest

from sglang_fair.core.cost_model import CostModel
from sglang_fair.core.fit import OnlineCostFitter, OnlineFitConfig
from sglang_fair.core.presets import load_preset, load_preset_doc
from sglang_fair.engine.cost_store import CostModelSaver, write_cost_model

TRUE = CostModel(base_s=0.01, per_prefill_token_s=2e-4, per_attn_token2_s=0.0, per_decode_req_s=3e-3,
                 per_context_token_s=0.0)
PRIOR = CostModel(base_s=0.02, per_prefill_token_s=1e-4, per_attn_token2_s=0.0, per_decode_req_s=1e-3,
                  per_context_token_s=0.0)


def _feed(fitter: OnlineCostFitter, saver: CostModelSaver, n: int, seed: int = 0) -> int:
    rng = np.random.default_rng(seed)
    writes = 0
    for _ in range(n):
        prefills = [(int(rng.integers(16, 512)), 0)] if rng.random() < 0.5 else []
        decodes = [int(c) for c in rng.integers(10, 400, size=int(rng.integers(1, 16)))]
        fitter.observe(prefills, decodes, TRUE.predict(prefills, decodes) * float(rng.uniform(0.97, 1.03)))
        writes += saver.maybe_save(fitter)
    return writes


def test_saver_writes_each_accepted_refit_and_the_file_loads_as_a_preset(tmp_path):
    path = tmp_path / "fit.json"
    fitter = OnlineCostFitter(PRIOR, OnlineFitConfig(refit_every=16, min_samples=16))
    saver = CostModelSaver(path)
    assert not saver.maybe_save(fitter) and not path.exists()  # nothing fitted yet: no file
    writes = _feed(fitter, saver, 100)
    assert 1 <= writes == saver.saves <= fitter.n_refits
    loaded = load_preset(path)
    assert loaded == fitter.model and loaded != PRIOR
    assert loaded.per_decode_req_s == pytest.approx(TRUE.per_decode_req_s, rel=0.2)
    doc = load_preset_doc(path)
    assert "live online fit" in doc["source"] and doc["fit"]["n_samples"] > 0
    assert list(tmp_path.iterdir()) == [path]  # no temporary file left behind
    assert not saver.maybe_save(fitter)  # unchanged model: no rewrite


def test_write_is_atomic_and_replaces_an_existing_file(tmp_path):
    path = tmp_path / "fit.json"
    path.write_text("not json")
    write_cost_model(path, TRUE, None, "test")
    assert load_preset(path) == TRUE and json.loads(path.read_text())["source"] == "test"
    with pytest.raises(OSError):
        write_cost_model(tmp_path / "missing" / "fit.json", TRUE, None, "x")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fit.json"]


def test_serve_flag_reaches_the_runtime_config_as_an_absolute_path(tmp_path, monkeypatch):
    from sglang_fair.config import ENV_VAR, RuntimeConfig
    from sglang_fair.serve import build_parser, runtime_config

    monkeypatch.chdir(tmp_path)
    ns, _ = build_parser().parse_known_args(["--fair-save-cost-model", "fit.json"])
    cfg = runtime_config(ns)
    assert cfg.save_cost_model == str(tmp_path / "fit.json")
    assert RuntimeConfig.from_env({ENV_VAR: cfg.to_json()}) == cfg
    for argv in (["--fair-save-cost-model", str(tmp_path / "no" / "fit.json")],
                 ["--fair-save-cost-model", str(tmp_path)],
                 ["--fair-save-cost-model", "fit.json", "--fair-no-online-fit"]):
        with pytest.raises(ValueError, match="--fair-save-cost-model"):
            runtime_config(build_parser().parse_known_args(argv)[0])
