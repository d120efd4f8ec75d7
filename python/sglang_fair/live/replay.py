"""Replay a list of requests against a live SGLang server with streaming /generate, recording token timestamps.

Prompts are token ids (seeded random over the model's vocabulary), so lengths are exact and no tokenizer variance
enters; outputs are forced to their trace length with `ignore_eos`. Times are client-side `time.monotonic()`.
"""

from __future__ import annotations

import json
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np
import requests


@dataclass(frozen=True)
class ReplayRequest:
    arrival_s: float
    """Send time relative to the start of the replay."""
    prompt_tokens: int
    output_tokens: int
    ttft_slo_ms: float | None = None
    tpot_slo_ms: float | None = None


@dataclass
class ReplayRecord:
    request: ReplayRequest
    sent_s: float = 0.0
    token_times_s: list[float] = field(default_factory=list)
    """Arrival time of each output token (a chunk carrying k tokens stamps all k with its time)."""
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None and len(self.token_times_s) >= 1


def _payload(req: ReplayRequest, ids: list[int]) -> dict:
    sp: dict = {"max_new_tokens": req.output_tokens, "ignore_eos": True, "temperature": 0.0}
    custom = {k: v for k, v in (("ttft_slo_ms", req.ttft_slo_ms), ("tpot_slo_ms", req.tpot_slo_ms)) if v is not None}
    if custom:
        sp["custom_params"] = custom
    return {"input_ids": ids, "sampling_params": sp, "stream": True}


def abort_reason(msg: dict) -> str | None:
    """"HTTP <code>: <message>" when a stream event finishes its request with SGLang's abort (what a non-streaming
    request gets as its HTTP status, e.g. 429 from `--fair-admission reject`, 503 past `--max-queued-requests`);
    None otherwise."""
    reason = (msg.get("meta_info") or {}).get("finish_reason")
    if not isinstance(reason, dict) or reason.get("type") != "abort":
        return None
    return f"HTTP {reason.get('status_code', 500)}: {reason.get('message', '')}"[:200]


def _run_one(base_url: str, req: ReplayRequest, ids: list[int], t0: float, timeout_s: float,
             headers: dict) -> ReplayRecord:
    rec = ReplayRecord(request=req)
    delay = t0 + req.arrival_s - time.monotonic()
    if delay > 0:
        time.sleep(delay)
    rec.sent_s = time.monotonic() - t0
    seen = 0
    try:
        with requests.post(base_url + "/generate", json=_payload(req, ids), stream=True, timeout=timeout_s,
                           headers=headers) as r:
            if r.status_code != 200:
                rec.error = f"HTTP {r.status_code}: {r.text[:200]}"
                return rec
            for line in r.iter_lines():
                if not line.startswith(b"data:"):
                    continue
                body = line[5:].strip()
                if body == b"[DONE]":
                    break
                msg = json.loads(body)
                if "error" in msg:
                    rec.error = str(msg["error"])[:200]
                    break
                if (why := abort_reason(msg)) is not None:  # a stream's status is sent: the abort is in the event
                    rec.error = why
                    break
                n = int(msg.get("meta_info", {}).get("completion_tokens", seen + 1))
                now = time.monotonic() - t0
                rec.token_times_s.extend([now] * max(0, n - seen))
                seen = max(seen, n)
    except (requests.RequestException, ValueError) as exc:
        rec.error = f"{type(exc).__name__}: {exc}"[:200]
    return rec


START_LEAD_S = 0.2
"""`replay` sends on a schedule starting this long after it is called (arrival 0 = call time + START_LEAD_S)."""


def replay(base_url: str, reqs: list[ReplayRequest], *, vocab_size: int = 4096, seed: int = 0,
           timeout_s: float = 600.0, max_workers: int = 256, api_key: str | None = None,
           progress: bool = False) -> list[ReplayRecord]:
    """Send each request at its arrival time; return one record per request, in input order."""
    rng = np.random.default_rng(seed)
    prompts = [rng.integers(10, vocab_size, size=r.prompt_tokens).tolist() for r in reqs]
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    t0 = time.monotonic() + START_LEAD_S
    done = threading.Semaphore(0)
    with ThreadPoolExecutor(max_workers=min(max_workers, max(1, len(reqs)))) as pool:
        futs = [pool.submit(_run_one, base_url, r, ids, t0, timeout_s, headers) for r, ids in zip(reqs, prompts)]
        for f in futs:
            f.add_done_callback(lambda _f: done.release())
        if progress:
            from tqdm import tqdm
            for _ in tqdm(range(len(futs)), desc="requests", unit="req", leave=False):
                done.acquire()
        return [f.result() for f in futs]


def requests_from_trace(trace, *, length_scale: float = 1.0, max_prompt_tokens: int | None = None,
                        max_output_tokens: int | None = None) -> list[ReplayRequest]:
    """Replay requests for a sim.traces.Trace, prompt lengths multiplied by `length_scale` then clipped (explicit
    scaling so a small CPU model can serve a GPU-sized trace; record the factors with the results)."""
    if not length_scale > 0:
        raise ValueError(f"length_scale must be > 0, got {length_scale!r}")
    out = []
    for t, p, o in zip(trace.arrival_s, trace.prompt_tokens, trace.output_tokens):
        p = max(1, int(round(p * length_scale)))
        if max_prompt_tokens is not None:
            p = min(p, max_prompt_tokens)
        o = int(o) if max_output_tokens is None else min(int(o), max_output_tokens)
        out.append(ReplayRequest(arrival_s=float(t), prompt_tokens=p, output_tokens=max(1, o)))
    return out


def request_times(records: list[ReplayRecord], ttft_slo_ms: float, tpot_slo_ms: float) -> list:
    """ReplayRecords as metrics.RequestTimes (the one metrics module shared with the simulator); an answer of HTTP
    429 (`--fair-admission reject`, in the status or in the stream) is a refused request."""
    from ..core.metrics import RequestTimes

    out = []
    for i, rec in enumerate(records):
        req, times = rec.request, rec.token_times_s
        out.append(RequestTimes(
            rid=str(i), arrival_s=rec.sent_s,
            first_token_s=times[0] if times and rec.error is None else None,
            last_token_s=times[-1] if times and rec.error is None else None,
            n_outputs=len(times) if rec.error is None else 0,
            ttft_slo_s=(req.ttft_slo_ms or ttft_slo_ms) / 1000.0, tpot_slo_s=(req.tpot_slo_ms or tpot_slo_ms) / 1000.0,
            expected_outputs=req.output_tokens, token_times_s=tuple(times) if rec.error is None else None,
            rejected=(rec.error or "").startswith("HTTP 429")))
    return out
