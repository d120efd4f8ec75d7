"""Measure the embedded model on this machine: prefill cost by prompt length and decode step cost by batch size.

Starts one stock server (`sglang-fair serve --fair-policy off`, so the numbers are SGLang's own) on loopback, then
  - TTFT of a single request for prompts of 512 / 1024 / 2048 tokens (idle server, median of 3),
  - TPOT with N = 1 / 8 / 32 requests decoding together (median over requests),
prints a table and, with --write, puts it in docs/results.md under "Embedded model".

    .venv/bin/python benchmark/calibrate_model.py --write
"""

from __future__ import annotations

import argparse
import platform
import statistics
import sys
from pathlib import Path

from sglang_fair.bench.docs_section import replace_section  # noqa: E402

from sglang_fair.live.replay import ReplayRequest, replay  # noqa: E402
from sglang_fair.live.server import cpu_server_args, exit_on_sigterm, sglang_server  # noqa: E402
from sglang_fair.data.model import make_model  # noqa: E402

PROMPTS = (512, 1024, 2048)
BATCHES = (1, 8, 32)


def measure(url: str) -> tuple[dict, dict]:
    ttft = {}
    for n in PROMPTS:
        samples = []
        for rep in range(3):
            rec = replay(url, [ReplayRequest(0.0, n, 1)], seed=rep + 1)[0]
            assert rec.ok, rec.error
            samples.append(rec.token_times_s[0] - rec.sent_s)
        ttft[n] = statistics.median(samples) * 1e3
    tpot = {}
    for n in BATCHES:
        recs = replay(url, [ReplayRequest(0.0, 64, 64) for _ in range(n)], seed=7)
        assert all(r.ok for r in recs)
        # steady state: tokens 8..end, after every request's prefill is done
        per = [(r.token_times_s[-1] - r.token_times_s[8]) / (len(r.token_times_s) - 9) for r in recs]
        tpot[n] = statistics.median(per) * 1e3
    return ttft, tpot


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--write", action="store_true", help="update docs/results.md")
    ap.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"), help="model dtype (default float32)")
    args = ap.parse_args()
    exit_on_sigterm()
    model = make_model()
    cmd = [sys.executable, "-m", "sglang_fair.cli", "serve"]
    with sglang_server(model, ["--fair-policy", "off", "--disable-radix-cache", *cpu_server_args(32768, float32=False),
                             "--dtype", args.dtype],
                       command=cmd, startup_timeout_s=600) as srv:
        replay(srv.url, [ReplayRequest(0.0, 256, 4)])  # warm-up
        ttft, tpot = measure(srv.url)
    lines = [
        f"Machine: {platform.machine()}, {__import__('os').cpu_count()} cores, SGLang on the CPU (torch_native "
        f"attention, {args.dtype}), `--fair-policy off`, radix cache off. Client-side times over loopback.",
        "",
        "| prompt tokens | " + " | ".join(str(n) for n in PROMPTS) + " |",
        "|---|" + "---|" * len(PROMPTS),
        "| TTFT, ms (median of 3) | " + " | ".join(f"{ttft[n]:.0f}" for n in PROMPTS) + " |",
        "",
        "| requests decoding together | " + " | ".join(str(n) for n in BATCHES) + " |",
        "|---|" + "---|" * len(BATCHES),
        "| TPOT, ms (median) | " + " | ".join(f"{tpot[n]:.1f}" for n in BATCHES) + " |",
        "",
        f"A 2048-token prefill costs {ttft[2048] / tpot[32]:.1f}x a decode step of 32 requests.",
        "",
        "Command: `.venv/bin/python benchmark/calibrate_model.py --write`",
    ]
    text = "\n".join(lines)
    print(text)
    if args.write:
        replace_section(Path(__file__).resolve().parents[1] / "docs" / "results.md", "Embedded model", text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
