"""Live (one `sglang-fair serve --fair-policy fair` server): per-request SLOs through /generate and the
OpenAI-compatible endpoints reach the scheduler's snapshot; invalid ones get HTTP 400 naming the key before they reach
it (streaming too) and the server keeps serving; `--fair-save-cost-model` leaves a file `--fair-cost-model` loads; the
planner sees first-token times."""

from __future__ import annotations

import concurrent.futures as cf
import json
import time

import pytest
import requests

from server import cpu_server_args, sglang_server
from sglang_fair.live.compare import post_generate, prompt_ids

pytestmark = pytest.mark.live

@pytest.fixture(scope="module")
def cost_path(tmp_path_factory):
    return tmp_path_factory.mktemp("cost") / "online-fit.json"


@pytest.fixture(scope="module")
def srv(cost_path, model_path, serve_command):
    args = ["--fair-policy", "fair", "--fair-save-cost-model", str(cost_path), *cpu_server_args(8192)]
    env = {"SGLANG_ENABLE_REQUEST_DECOMPRESSION": "1"}  # zstd bodies (x-body-compressed), for the intake test
    with sglang_server(model_path, args, command=serve_command, env=env, startup_timeout_s=600) as s:
        yield s


def _status(srv) -> dict:
    body = srv.get("/sglang_fair/status").json()
    assert len(body["ranks"]) == 1
    return body["ranks"][0]


def _generate(srv, n_prompt=24, max_new=8, custom_params=None, rid=None, seed=0):
    return post_generate(srv.url, prompt_ids(n_prompt, seed), max_new, custom_params=custom_params, rid=rid, timeout_s=240)


def _openai(srv, path, custom_params, rid=None, stream=False):
    body = {"model": "default", "max_tokens": 4, "temperature": 0.0, "stream": stream,
            "custom_params": custom_params}
    if path.endswith("chat/completions"):
        body["messages"] = [{"role": "user", "content": "def main():"}]
    else:
        body["prompt"] = "import os\nimport sys\n"
    if rid:
        body["rid"] = rid
    return srv.post(path, json=body, timeout=240)


def test_valid_request_slos_reach_the_scheduler(srv):
    r = _generate(srv, custom_params={"ttft_slo_ms": 750, "tpot_slo_ms": 60, "strict": True}, rid="slo-gen")
    assert r.status_code == 200, r.text
    r = _openai(srv, "/v1/completions", {"tpot_slo_ms": 80.5}, rid="slo-cmp")
    assert r.status_code == 200, r.text
    r = _openai(srv, "/v1/chat/completions", {"ttft_slo_ms": 2500, "thinking_budget": 3}, rid="slo-chat")
    assert r.status_code == 200, r.text
    seen = {e["rid"]: e for e in _status(srv)["recent_request_slos"]}
    assert (seen["slo-gen"]["ttft_slo_ms"], seen["slo-gen"]["tpot_slo_ms"], seen["slo-gen"]["strict"]) == \
        pytest.approx((750.0, 60.0, True))
    cfg = srv.get("/sglang_fair/status").json()["config"]
    assert seen["slo-cmp"]["tpot_slo_ms"] == pytest.approx(80.5)
    assert seen["slo-cmp"]["ttft_slo_ms"] == pytest.approx(cfg["ttft_slo_ms"])  # missing key: the default
    assert seen["slo-chat"]["ttft_slo_ms"] == pytest.approx(2500.0) and not seen["slo-chat"]["strict"]


BAD = [  # (raw JSON text of custom_params, the key the reason must name)
    ('{"ttft_slo_ms": -5}', "ttft_slo_ms"),
    ('{"tpot_slo_ms": 0}', "tpot_slo_ms"),
    ('{"tpot_slo_ms": NaN}', "tpot_slo_ms"),
    ('{"ttft_slo_ms": Infinity}', "ttft_slo_ms"),
    ('{"ttft_slo_ms": 1e999}', "ttft_slo_ms"),
    ('{"ttft_slo_ms": 7200000}', "ttft_slo_ms"),
    ('{"tpot_slo_ms": "50"}', "tpot_slo_ms"),
    ('{"tpot_slo_ms": true}', "tpot_slo_ms"),
    ('{"tpot_slo_ms": [50]}', "tpot_slo_ms"),
    ('{"ttft_ms": 500}', "ttft_ms"),
    ('{"strict": "yes"}', "strict"),
]


def _raw_post(srv, path, text):
    return requests.post(srv.url + path, data=text, headers={"content-type": "application/json"}, timeout=60)


def test_each_invalid_kind_gets_400_naming_the_key_and_the_server_keeps_serving(srv):
    before = _status(srv)
    failures = []
    for params, key in BAD:
        bodies = {
            "/generate": f'{{"input_ids": [11, 12, 13], "sampling_params": {{"max_new_tokens": 2, '
                         f'"custom_params": {params}}}}}',
            "/generate stream": f'{{"input_ids": [11, 12], "stream": true, "sampling_params": '
                                f'{{"max_new_tokens": 2, "custom_params": {params}}}}}',
            "/v1/completions": f'{{"model": "default", "prompt": "x", "max_tokens": 2, "custom_params": {params}}}',
            "/v1/chat/completions": f'{{"model": "default", "stream": true, "max_tokens": 2, "messages": '
                                    f'[{{"role": "user", "content": "x"}}], "custom_params": {params}}}',
        }
        for name, text in bodies.items():
            r = _raw_post(srv, name.split()[0], text)
            if r.status_code != 400 or key not in r.text:
                failures.append((name, params, r.status_code, r.text[:200]))
    assert not failures, failures
    ok = _generate(srv, custom_params={"ttft_slo_ms": 900})
    assert ok.status_code == 200 and len(ok.json()["output_ids"]) == 8
    after = _status(srv)
    assert after["bad_slo_requests"] == before["bad_slo_requests"] == 0  # none reached the scheduler
    assert not after["faults"]


def test_invalid_slo_that_passes_the_http_check_is_aborted_at_the_scheduler_intake(srv):
    """Bodies the HTTP check cannot read (a JSON escape in the key, a zstd-compressed body) still reach the scheduler,
    whose intake finishes the request with an error naming the key instead of serving it with the defaults."""
    import zstandard

    before = _status(srv)
    hidden = '"custom\\u005fparams"'  # the key, spelled so the body never contains the bytes custom_params
    gen = f'{{"input_ids": [11, 12, 13], "sampling_params": {{"max_new_tokens": 2, {hidden}: {{"ttft_slo_ms": -5}}}}}}'
    r = _raw_post(srv, "/generate", gen)
    assert r.status_code == 400 and "ttft_slo_ms" in r.text, r.text
    stream = gen.replace('{"input_ids"', '{"stream": true, "input_ids"')
    r = _raw_post(srv, "/generate", stream)
    events = [json.loads(line[6:]) for line in r.text.splitlines() if line.startswith("data: {")]
    reason = events[-1]["meta_info"]["finish_reason"]  # a stream ends with SGLang's abort event
    assert (reason["type"], reason["status_code"]) == ("abort", 400) and "ttft_slo_ms" in reason["message"], r.text
    cmp = f'{{"model": "default", "prompt": "x", "max_tokens": 2, {hidden}: {{"tpot_slo_ms": 0}}}}'
    r = _raw_post(srv, "/v1/completions", cmp)
    assert r.status_code == 400 and "tpot_slo_ms" in r.text, r.text
    packed = zstandard.ZstdCompressor().compress(
        b'{"input_ids": [11, 12], "sampling_params": {"max_new_tokens": 2, "custom_params": {"tpot_ms": 9}}}')
    r = requests.post(srv.url + "/generate", data=packed, timeout=60,
                      headers={"content-type": "application/json", "x-body-compressed": "zstd"})
    assert r.status_code == 400 and "tpot_ms" in r.text, r.text
    ok = _generate(srv, custom_params={"tpot_slo_ms": 300})
    assert ok.status_code == 200 and len(ok.json()["output_ids"]) == 8
    after = _status(srv)
    assert after["bad_slo_requests"] == before["bad_slo_requests"]  # the snapshot never saw an invalid SLO
    assert not after["faults"]


def test_fitted_cost_model_is_saved_and_loads_and_plans_see_first_tokens(srv, cost_path):
    from sglang_fair.core.presets import load_preset, load_preset_doc

    deadline = time.monotonic() + 150
    rounds = 0
    while _status(srv)["cost_model_saves"] == 0:
        assert time.monotonic() < deadline, _status(srv)["cost_fit_samples"]
        with cf.ThreadPoolExecutor(6) as ex:  # mixed prefill sizes and decode batch sizes for the fit
            outs = list(ex.map(lambda i: _generate(srv, 40 + 150 * i, 24, seed=rounds * 10 + i), range(6)))
        assert all(o.status_code == 200 for o in outs)
        rounds += 1
    st = _status(srv)
    model = load_preset(cost_path)
    assert model.to_dict() == pytest.approx(st["cost_model"])  # idle server: the saved fit is the current one
    doc = load_preset_doc(cost_path)
    assert "live online fit" in doc["source"] and doc["fit"]["n_samples"] > 0
    assert json.loads(cost_path.read_text())["model"] == doc["model"]
    # the saved file is accepted where --fair-cost-model reads it
    from sglang_fair.serve import build_parser, runtime_config
    assert runtime_config(build_parser().parse_known_args(["--fair-cost-model", str(cost_path)])[0])
    plans = st["recent_plans"]
    assert plans and all(0 <= p["first_token_known"] <= p["running"] for p in plans)
    assert any(p["first_token_known"] > 0 for p in plans)
