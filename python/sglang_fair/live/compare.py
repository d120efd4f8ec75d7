"""A fixed greedy workload against a running server, shared by benchmark/off_vs_stock.py and the live test that
compares `sglang-fair serve --fair-policy off` with plain `python -m sglang.launch_server`.

Greedy (temperature 0), `ignore_eos`, prompts as token ids drawn from a seeded generator, so two servers with the same
model and dtype should return the same tokens; outputs are compared per request.
"""

from __future__ import annotations

import concurrent.futures as cf
import time
from dataclasses import dataclass

import numpy as np
import requests


def fixed_prompts(n: int, *, seed: int = 0, min_tokens: int = 32, max_tokens: int = 1024,
                  vocab: int = 4000) -> list[list[int]]:
    """`n` prompts of token ids (ids 10..vocab+9), lengths uniform in [min_tokens, max_tokens]."""
    rng = np.random.default_rng(seed)
    lengths = rng.integers(min_tokens, max_tokens + 1, size=n)
    return [[int(t) for t in rng.integers(10, vocab + 10, size=int(k))] for k in lengths]


def prompt_ids(n: int, seed: int = 0) -> list[int]:
    """A deterministic prompt of `n` token ids without a generator (ids 10..4009)."""
    return [(seed * 131 + i * 17) % 4000 + 10 for i in range(n)]


def post_generate(url: str, input_ids: list[int], max_new_tokens: int, *, custom_params: dict | None = None,
                  rid: str | None = None, timeout_s: float = 600.0) -> requests.Response:
    """POST /generate: greedy, exactly `max_new_tokens` tokens (ignore_eos); the raw response."""
    sp = {"temperature": 0.0, "max_new_tokens": max_new_tokens, "ignore_eos": True}
    if custom_params is not None:
        sp["custom_params"] = custom_params
    body = {"input_ids": input_ids, "sampling_params": sp}
    if rid:
        body["rid"] = rid
    return requests.post(url + "/generate", json=body, timeout=timeout_s)


def generate(url: str, input_ids: list[int], max_new_tokens: int, **kw) -> dict:
    """`post_generate`, raising on an HTTP error; the response body."""
    r = post_generate(url, input_ids, max_new_tokens, **kw)
    r.raise_for_status()
    return r.json()


@dataclass(frozen=True)
class WorkloadRun:
    outputs: list[list[int]]
    wall_s: float
    prompt_tokens: int
    output_tokens: int

    @property
    def output_tok_per_s(self) -> float:
        return self.output_tokens / self.wall_s

    @property
    def total_tok_per_s(self) -> float:
        return (self.prompt_tokens + self.output_tokens) / self.wall_s


def run_workload(url: str, prompts: list[list[int]], max_new_tokens: int, concurrency: int) -> WorkloadRun:
    """Send every prompt with at most `concurrency` in flight; outputs in prompt order, wall time of the whole set."""
    t0 = time.perf_counter()
    with cf.ThreadPoolExecutor(max(1, concurrency)) as ex:
        outs = list(ex.map(lambda p: generate(url, p, max_new_tokens)["output_ids"], prompts))
    wall = time.perf_counter() - t0
    return WorkloadRun(outputs=outs, wall_s=wall, prompt_tokens=sum(map(len, prompts)),
                       output_tokens=sum(map(len, outs)))


def mismatches(a: list[list[int]], b: list[list[int]]) -> list[int]:
    """Indices of the requests whose outputs differ."""
    if len(a) != len(b):
        raise ValueError(f"different numbers of outputs: {len(a)} vs {len(b)}")
    return [i for i, (x, y) in enumerate(zip(a, b)) if x != y]
