"""benchmark/cluster_fidelity.py: placing each request of a two-server run (client record <-> servers' first_token
records) and the device-over-preset ratio it reports."""

from __future__ import annotations

import orjson
import pytest
from factories import load_benchmark


@pytest.fixture(scope="module")
def cf():
    return load_benchmark("cluster_fidelity")


def rec(prompt, recv, ttft=0.5, out=10):
    return {"prompt_tokens": prompt, "recv_rel_s": recv, "recv_s": 100.0 + recv, "t_s": 100.0 + recv + ttft,
            "max_new_tokens": out}


def test_equal_prompts_on_different_servers_are_matched_in_the_order_they_were_received(cf):
    # requests 0 and 2 share a prompt length (the window's two halves); 0 went to server 1, 2 to server 0.
    client = {"input_lens": [300, 50, 300, 70], "due_s": [0.0, 1.0, 10.0, 11.0], "ttft_ms": [900.0, 400.0, 800.0, None]}
    servers = [[rec(300, 10.2, out=12), rec(50, 1.1)], [rec(300, 0.3, out=11), rec(70, 11.4)]]
    rows = {r["i"]: r for r in cf.match(client, servers)}
    assert {i: (r["server"], r["recv_s"], r["outputs"]) for i, r in rows.items()} == {
        0: (1, 0.3, 11), 1: (0, 1.1, 10), 2: (0, 10.2, 12), 3: (1, 11.4, 10)}
    assert rows[0]["client_ttft_s"] == pytest.approx(0.9) and rows[0]["server_ttft_s"] == pytest.approx(0.5)
    assert rows[3]["client_ttft_s"] is None  # no token at the client: kept, without a client TTFT


def test_a_constant_token_offset_between_client_and_server_is_found(cf):
    client = {"input_lens": [300, 50, 120], "due_s": [0.0, 1.0, 2.0], "ttft_ms": [1.0, 1.0, 1.0]}
    servers = [[rec(301, 0.1), rec(121, 2.1)], [rec(51, 1.1)]]
    assert sorted((r["i"], r["server"]) for r in cf.match(client, servers)) == [(0, 0), (1, 1), (2, 0)]


def test_device_over_preset_prices_the_traced_batches_with_both_models(cf, tmp_path):
    from sglang_fair.core.presets import load_preset
    from sglang_fair.emulate.device import DeviceModel, parse_device_spec

    fwd = [{"kind": "forward", "n_prefill": 0, "prefills": [], "n_decode": 8, "decode_ctx": 8000},
           {"kind": "forward", "n_prefill": 1, "prefills": [[512, 0]], "n_decode": 4, "decode_ctx": 2000},
           {"kind": "forward", "n_prefill": 20, "prefills": [[64, 0]] * 16, "n_decode": 0, "decode_ctx": 0}]
    path = tmp_path / "t.jsonl"
    path.write_bytes(b"\n".join(orjson.dumps(r) for r in fwd))
    got = cf.device_over_preset([cf.read_trace(path)], "a100-llama3-8b")
    dev, pre = DeviceModel(parse_device_spec("a100-llama3-8b")), load_preset("a100-llama3-8b")
    assert set(got) == {"decode-only", "mixed"}  # the forward whose chunk list the trace cut is left out
    assert got["decode-only"] == pytest.approx(dev.undilated_ms([], [1000] * 8) / (pre.predict([], [1000] * 8) * 1e3))
    assert got["mixed"] == pytest.approx(dev.undilated_ms([(512, 0)], [500] * 4)
                                         / (pre.predict([(512, 0)], [500] * 4) * 1e3))
