"""A short prompt alone behind a long decode, live on this machine (docs/results.md, "A prompt alone behind decodes").

Starts `sglang-fair serve --fair-policy POLICY` on the embedded model (CPU defaults, loopback, its own process group),
sends one 100-token request for 300 tokens, and 2 s later an 8-token prompt for 2; prints both latencies. Before the
sixteenth session fair held the short prompt until the long decode finished.

    python benchmark/lone_prompt.py             # fair, about a minute
    python benchmark/lone_prompt.py --policy off
"""

from __future__ import annotations

import argparse
import json
import threading
import time

from sglang_fair.live.compare import generate, prompt_ids
from sglang_fair.live.server import SERVE_COMMAND, cpu_server_args, embedded_model_path, exit_on_sigterm, sglang_server


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--policy", default="fair")
    ap.add_argument("--long-tokens", type=int, default=300)
    ap.add_argument("--short-prompt", type=int, default=8)
    args = ap.parse_args()
    exit_on_sigterm()
    with sglang_server(embedded_model_path(), ["--fair-policy", args.policy, *cpu_server_args(8192)],
                       command=list(SERVE_COMMAND), startup_timeout_s=600) as srv:
        generate(srv.url, prompt_ids(50, 9), 4)  # warm-up
        out: dict[str, float] = {}

        def long() -> None:
            t = time.monotonic()
            generate(srv.url, prompt_ids(100, 1), args.long_tokens)
            out["long_s"] = time.monotonic() - t

        th = threading.Thread(target=long)
        th.start()
        time.sleep(2.0)
        t = time.monotonic()
        generate(srv.url, prompt_ids(args.short_prompt, 2), 2)
        out["short_s"] = time.monotonic() - t
        th.join()
    print(json.dumps({"policy": args.policy, "long_request_s": round(out["long_s"], 3),
                      "short_request_s (sent 2 s after the long one)": round(out["short_s"], 3)}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
