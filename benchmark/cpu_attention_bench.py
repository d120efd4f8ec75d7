"""CPU decode attention per row and layer on the micro model's shape (one head of 64): SGLang 0.5.23's torch_native
per-row SDPA against `emulate/cpu_attention.decode_rows`, for a decode batch and for 1-token rows inside an extend
(what a mixed forward carries). Prints ms per call and per row; checks both give the same outputs.

    .venv/bin/python benchmark/cpu_attention_bench.py
"""

from __future__ import annotations

import time

import torch
from sglang.srt.layers.attention.torch_native_backend import TorchNativeAttnBackend as B

from sglang_fair.emulate.cpu_attention import fast_decode, fast_extend

D = 64


def setup(rows: int, ctx: int, pool: int = 450_000):
    kc, vc = torch.randn(pool, 1, D), torch.randn(pool, 1, D)
    table = torch.zeros(rows, 8192, dtype=torch.int64)
    base = torch.randperm(pool // ctx)[:rows] * ctx  # contiguous slots per request, scattered requests
    for i in range(rows):
        table[i, :ctx] = base[i] + torch.arange(ctx)
    return kc, vc, table


def timed(fn, reps: int = 3) -> float:
    fn()
    t = time.perf_counter()
    for _ in range(reps):
        fn()
    return (time.perf_counter() - t) / reps


def main() -> None:
    torch.set_num_threads(1)
    for rows, ctx in [(64, 1000), (256, 1000), (64, 4000)]:
        kc, vc, table = setup(rows, ctx)
        q = torch.randn(rows, 1, D)
        idx, lens = torch.arange(rows), torch.full((rows,), ctx)
        ones = torch.ones(rows, dtype=torch.int64)
        ref, out = torch.empty_like(q), torch.empty_like(q)
        cases = {
            "decode sglang": lambda: B._run_sdpa_forward_decode(None, q, ref, kc, vc, table, idx, lens, scaling=0.125),
            "decode ours": lambda: fast_decode(B._run_sdpa_forward_decode, None, q, out, kc, vc, table, idx, lens,
                                               scaling=0.125),
            "mixed-row sglang": lambda: B._run_sdpa_forward_extend(None, q, ref, kc, vc, table, idx, lens, lens - 1,
                                                                   ones, scaling=0.125, causal=True),
            "mixed-row ours": lambda: fast_extend(B._run_sdpa_forward_extend, None, q, out, kc, vc, table, idx, lens,
                                                  lens - 1, ones, scaling=0.125, causal=True),
        }
        for name, fn in cases.items():
            dt = timed(fn, reps=1 if "mixed-row sglang" == name else 3)
            print(f"{rows:4d} rows, context {ctx}: {name:17s} {dt * 1e3:8.1f} ms  {dt / rows * 1e3:.3f} ms/row")
        torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-4)


if __name__ == "__main__":
    main()
