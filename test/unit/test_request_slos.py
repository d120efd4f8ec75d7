"""Per-request SLOs: the pure validator (hypothesis-fuzzed) and the ASGI middleware that turns its errors into HTTP 400
before a request reaches SGLang (driven here with a stub app, no server)."""

from __future__ import annotations

import asyncio
import math

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sglang_fair.config import SloConfig
from sglang_fair.engine.http import RequestSloValidator, request_slo_problem
from sglang_fair.config import MAX_SLO_MS, MIN_SLO_MS, SLO_KEYS, TPOT_KEY, TTFT_KEY, parse_request_slos

DFLT = SloConfig(ttft_slo_ms=1000.0, tpot_slo_ms=100.0)

# ---- the validator -------------------------------------------------------------------------------------------------
json_scalars = st.one_of(st.none(), st.booleans(), st.integers(-10**12, 10**12), st.text(max_size=8),
                         st.floats(allow_nan=True, allow_infinity=True))
slo_values = st.one_of(json_scalars, st.lists(st.integers(), max_size=2), st.dictionaries(st.text(max_size=3),
                                                                                          st.integers(), max_size=2))


def _valid_ms(v) -> bool:
    return (not isinstance(v, bool) and isinstance(v, (int, float)) and math.isfinite(v) and MIN_SLO_MS <= v <= MAX_SLO_MS)


@settings(max_examples=400, deadline=None)
@given(ttft=slo_values, tpot=slo_values, strict=json_scalars,
       present=st.tuples(st.booleans(), st.booleans(), st.booleans()),
       extra=st.dictionaries(st.text(max_size=12), json_scalars, max_size=3))
def test_validator_accepts_exactly_the_valid_slos(ttft, tpot, strict, present, extra):
    params = dict(extra)
    for key, value, on in zip(SLO_KEYS, (ttft, tpot, strict), present):
        if on:
            params[key] = value
        else:
            params.pop(key, None)
    typo = [k for k in params if k.startswith(("ttft", "tpot")) and k not in SLO_KEYS]
    bad = ([k for k in (TTFT_KEY, TPOT_KEY) if k in params and not _valid_ms(params[k])]
           + (["strict"] if "strict" in params and not isinstance(params["strict"], bool) else []))
    if typo or bad:
        with pytest.raises(ValueError) as exc:
            parse_request_slos(params, DFLT)
        assert any(repr(k) in str(exc.value) or k in str(exc.value) for k in typo + bad)
    else:
        ttft_s, tpot_s, strict_out = parse_request_slos(params, DFLT)
        assert ttft_s == pytest.approx(params.get(TTFT_KEY, DFLT.ttft_slo_ms) / 1000.0)
        assert tpot_s == pytest.approx(params.get(TPOT_KEY, DFLT.tpot_slo_ms) / 1000.0)
        assert strict_out is params.get("strict", False)
        assert 0 < ttft_s <= 3600 and 0 < tpot_s <= 3600


@pytest.mark.parametrize("params, key", [
    ({"ttft_slo_ms": 0}, "ttft_slo_ms"),
    ({"ttft_slo_ms": -5.0}, "ttft_slo_ms"),
    ({"tpot_slo_ms": float("inf")}, "tpot_slo_ms"),
    ({"tpot_slo_ms": float("nan")}, "tpot_slo_ms"),
    ({"ttft_slo_ms": MAX_SLO_MS + 1}, "ttft_slo_ms"),
    ({"ttft_slo_ms": 5e-324}, "ttft_slo_ms"),  # positive, but 0.0 once in seconds
    ({"tpot_slo_ms": MIN_SLO_MS / 2}, "tpot_slo_ms"),
    ({"tpot_slo_ms": "50"}, "tpot_slo_ms"),
    ({"tpot_slo_ms": True}, "tpot_slo_ms"),
    ({"ttft_slo_ms": None}, "ttft_slo_ms"),
    ({"ttft_ms": 500}, "ttft_ms"),
    ({"tpot_slo": 50}, "tpot_slo"),
    ({"strict": 1}, "strict"),
])
def test_each_invalid_kind_names_its_key(params, key):
    with pytest.raises(ValueError, match=key):
        parse_request_slos(params, DFLT)


def test_unrelated_custom_params_pass_and_take_the_defaults():
    assert parse_request_slos({"thinking_budget": 5, "my_key": "x"}, DFLT) == (1.0, 0.1, False)
    assert parse_request_slos({"ttft_slo_ms": MAX_SLO_MS, "tpot_slo_ms": 0.5}, DFLT) == (3600.0, 0.0005, False)


# ---- body extraction -------------------------------------------------------------------------------------------------
def test_problem_is_found_where_each_endpoint_carries_custom_params():
    bad = {"tpot_slo_ms": -1}
    assert "tpot_slo_ms" in request_slo_problem("/generate", {"sampling_params": {"custom_params": bad}}, DFLT)
    batch = {"sampling_params": [{"custom_params": {"ttft_slo_ms": 10}}, {"custom_params": bad}]}
    assert "tpot_slo_ms" in request_slo_problem("/generate", batch, DFLT)
    assert "tpot_slo_ms" in request_slo_problem("/v1/completions", {"custom_params": bad}, DFLT)
    assert "tpot_slo_ms" in request_slo_problem("/v1/chat/completions", {"custom_params": bad}, DFLT)
    # in the wrong place it is not ours to judge; a non-object body is SGLang's to reject
    assert request_slo_problem("/v1/completions", {"sampling_params": {"custom_params": bad}}, DFLT) is None
    assert request_slo_problem("/generate", [1, 2], DFLT) is None
    assert request_slo_problem("/generate", {"sampling_params": None}, DFLT) is None
    assert "custom_params" in request_slo_problem("/v1/completions", {"custom_params": [1]}, DFLT)


# ---- the middleware --------------------------------------------------------------------------------------------------
def _call(path: str, body: bytes, method: str = "POST", chunk: int = 7):
    """Run one request through RequestSloValidator in front of a stub app (the body arrives in `chunk`-byte pieces);
    returns (status, response json, the body the app received or None, the middleware)."""
    seen = {}

    async def app(scope, receive, send):
        parts = []
        while True:
            msg = await receive()
            parts.append(msg.get("body", b""))
            if not msg.get("more_body"):
                break
        seen["body"] = b"".join(parts)
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b'{"ok": true}'})

    pieces = [body[i:i + chunk] for i in range(0, len(body), chunk)] or [b""]
    messages = [{"type": "http.request", "body": p, "more_body": i < len(pieces) - 1} for i, p in enumerate(pieces)]
    sent = []

    async def receive():
        return messages.pop(0) if messages else {"type": "http.disconnect"}

    async def send(msg):
        sent.append(msg)

    mw = RequestSloValidator(app, default=DFLT)
    asyncio.run(mw({"type": "http", "method": method, "path": path}, receive, send))
    status = sent[0]["status"]
    return status, orjson.loads(b"".join(m.get("body", b"") for m in sent[1:])), seen.get("body"), mw


def test_middleware_rejects_invalid_slos_with_400_naming_the_key():
    body = orjson.dumps({"input_ids": [1, 2], "sampling_params": {"custom_params": {"ttft_slo_ms": -3}}})
    status, doc, app_body, mw = _call("/generate", body)
    assert status == 400 and app_body is None and mw.rejected == 1
    assert "ttft_slo_ms" in doc["error"]["message"]
    status, doc, app_body, _ = _call("/v1/chat/completions", orjson.dumps({"custom_params": {"tpot_ms": 5}}))
    assert status == 400 and doc["object"] == "error" and "tpot_ms" in doc["message"] and app_body is None


@pytest.mark.parametrize("literal", [b"NaN", b"Infinity", b"-Infinity", b"1e999"])
def test_middleware_rejects_non_finite_literals_that_only_the_lenient_json_parser_reads(literal):
    body = b'{"prompt": "x", "custom_params": {"tpot_slo_ms": ' + literal + b"}}"
    status, doc, app_body, _ = _call("/v1/completions", body)
    assert status == 400 and "tpot_slo_ms" in doc["message"] and app_body is None


@pytest.mark.parametrize("path, body", [
    ("/generate", {"input_ids": [1], "sampling_params": {"custom_params": {"ttft_slo_ms": 800, "strict": True}}}),
    ("/v1/completions", {"prompt": "hi", "custom_params": {"tpot_slo_ms": 40}}),
    ("/generate", {"input_ids": [1, 2, 3]}),
])
def test_middleware_passes_valid_requests_with_the_body_intact(path, body):
    raw = orjson.dumps(body)
    status, doc, app_body, mw = _call(path, raw)
    assert status == 200 and doc == {"ok": True} and app_body == raw and mw.rejected == 0


def test_middleware_leaves_other_routes_and_malformed_json_to_sglang():
    bad = orjson.dumps({"sampling_params": {"custom_params": {"ttft_slo_ms": -1}}})
    assert _call("/encode", bad)[0] == 200
    assert _call("/generate", bad, method="GET")[0] == 200
    assert _call("/generate", b'{"custom_params": ')[0] == 200
