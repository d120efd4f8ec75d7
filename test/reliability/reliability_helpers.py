"""Shared pieces of the reliability suite: request helpers with a hard client timeout, an outcome tally
(completed / errored with a reason / lost), server-state polling, process-group RSS, and figures printed in one
line per scenario (docs/reliability.md quotes them)."""

from __future__ import annotations

import collections
import concurrent.futures as cf
import json
import random
import time
from dataclasses import dataclass, field

import requests

from sglang_fair.live.monitor import RssSampler, auth, fair_state, group_rss_bytes, wait_idle  # noqa: F401
from sglang_fair.live.server import SERVE_COMMAND, embedded_model_path

SERVE = list(SERVE_COMMAND)
CLIENT_TIMEOUT_S = 120.0
"""No request may take longer than this: a request still open after it counts as lost (a hang)."""


def model_path() -> str:
    return embedded_model_path()


def fair_env(policy: str = "fair", slo=None, **params) -> dict:
    """SGLANG_FAIR_CONFIG for `python -m sglang.launch_server` (how the tests reach policy params `serve` refuses,
    such as the chaos testing aid). `slo`: a config.SloConfig (default SLOs when None)."""
    from sglang_fair.config import SloConfig
    from sglang_fair.config import RuntimeConfig
    cfg = RuntimeConfig(policy=policy, policy_params=params, slo=slo or SloConfig())
    return {"SGLANG_FAIR_CONFIG": cfg.to_json()}


def hang_bound_s(serial_s: float, floor_s: float = CLIENT_TIMEOUT_S) -> float:
    """Client timeout for a batch of requests whose one-at-a-time total is `serial_s`: three times that (plus a
    minute), never below `floor_s`. Run together they must not take longer than run one after another, give or
    take retraction and noise; past this bound a request counts as lost (hung). Scaling with the measured serial
    time keeps the bound meaningful on a slow or shared machine."""
    return max(floor_s, 3.0 * serial_s + 60.0)


def prompt(n: int, rng: random.Random) -> list[int]:
    return [rng.randrange(10, 4000) for _ in range(n)]


def generate(url: str, ids: list[int], max_new: int, *, api_key: str | None = None, custom: dict | None = None,
             timeout: float = CLIENT_TIMEOUT_S) -> requests.Response:
    sp: dict = {"temperature": 0.0, "max_new_tokens": max_new, "ignore_eos": True}
    if custom is not None:
        sp["custom_params"] = custom
    return requests.post(url + "/generate", json={"input_ids": ids, "sampling_params": sp}, timeout=timeout,
                         headers=auth(api_key))


@dataclass
class Outcome:
    ok: bool = False
    error: str | None = None
    """A clear error the client was given (HTTP status + reason, or an in-stream error message)."""
    lost: str | None = None
    """No clear answer: client timeout, connection dropped without an error, wrong number of tokens."""
    latency_s: float = 0.0
    output_ids: list = field(default_factory=list)


def run_request(url: str, ids: list[int], max_new: int, *, api_key: str | None = None,
                timeout: float = CLIENT_TIMEOUT_S) -> Outcome:
    t0 = time.monotonic()
    out = Outcome()
    try:
        r = generate(url, ids, max_new, api_key=api_key, timeout=timeout)
        if r.status_code != 200:
            out.error = f"HTTP {r.status_code}: {r.text[:160]}"
        else:
            body = r.json()
            n = len(body.get("output_ids") or [])
            if n == max_new:
                out.ok, out.output_ids = True, body["output_ids"]
            elif body.get("meta_info", {}).get("finish_reason", {}).get("type") == "abort":
                out.error = f"aborted: {body['meta_info']['finish_reason'].get('message')}"
            else:
                out.lost = f"{n} of {max_new} tokens, finish {body.get('meta_info', {}).get('finish_reason')}"
    except requests.Timeout:
        out.lost = f"client timeout after {timeout:.0f} s"
    except (requests.RequestException, ValueError) as exc:
        out.lost = f"{type(exc).__name__}: {exc}"[:160]
    out.latency_s = time.monotonic() - t0
    return out


@dataclass
class Tally:
    sent: int = 0
    completed: int = 0
    errored: int = 0
    lost: int = 0
    reasons: collections.Counter = field(default_factory=collections.Counter)

    def add(self, o: Outcome) -> None:
        self.sent += 1
        if o.ok:
            self.completed += 1
        elif o.error is not None:
            self.errored += 1
            self.reasons[o.error[:60]] += 1
        else:
            self.lost += 1
            self.reasons["LOST " + (o.lost or "?")[:60]] += 1

    def figures(self) -> dict:
        return {"sent": self.sent, "completed": self.completed, "errored": self.errored, "lost": self.lost,
                "reasons": dict(self.reasons)}


def report(scenario: str, **figures) -> None:
    """One machine-readable line per scenario (run pytest with -s to see them)."""
    print(f"\nRELIABILITY {scenario} {json.dumps(figures, sort_keys=True, default=str)}", flush=True)


def open_loop(url: str, rate_rps: float, duration_s: float, make_ids, max_new: int, *, api_key=None,
              seed: int = 0, timeout: float = CLIENT_TIMEOUT_S) -> list[Outcome]:
    """Poisson arrivals at `rate_rps` for `duration_s`, each request in its own thread."""
    rng = random.Random(seed)
    arrivals, t = [], 0.0
    while True:
        t += rng.expovariate(rate_rps)
        if t >= duration_s:
            break
        arrivals.append(t)
    t0 = time.monotonic()

    def one(i_t):
        i, at = i_t
        delay = t0 + at - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        return run_request(url, make_ids(i), max_new, api_key=api_key, timeout=timeout)

    with cf.ThreadPoolExecutor(max(1, len(arrivals))) as ex:
        return list(ex.map(one, enumerate(arrivals)))
