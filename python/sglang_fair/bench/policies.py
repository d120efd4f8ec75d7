"""The server configurations a live benchmark compares. Each is `sglang-fair serve` flags on top of the CPU defaults;
`off` is stock SGLang (our plugin inert), at the settings a user would pick:

- `stock`: SGLang's default scheduling, chunked prefill 2048, no mixed chunk (a prompt's chunks run back to back and
  running decodes wait);
- `stock-mixed-512`: `--enable-mixed-chunk --chunked-prefill-size 512`, SGLang's own stall-free (Sarathi-style)
  batching with a 512-token budget;
- every registered policy by its name (`fair`, `slai`, `sarathi`, ...) through the plugin; `sarathi-512`: our Sarathi
  policy with a 512-token budget;
  on a CPU `serve` gives `fair` its CPU parameters (`config.CPU_FAIR_PARAMS`: catch-up 16 tokens);
- `fair-strict`: `fair` with `catchup_tokens=0`, per-token decode deadlines (the policy default, as the paper);
- `fair-admission-off`: `fair` without its SLO-aware admission (the default before the ninth session).
"""

from __future__ import annotations

from ..config import CPU_FAIR_PARAMS, OFF
from ..policies import policy_names

LIVE_POLICIES: dict[str, list[str]] = {
    "stock": ["--fair-policy", OFF, "--chunked-prefill-size", "2048"],
    "stock-mixed-512": ["--fair-policy", OFF, "--chunked-prefill-size", "512", "--enable-mixed-chunk"],
    **{name: ["--fair-policy", name, "--chunked-prefill-size", "2048"] for name in policy_names()},
    "fair-strict": ["--fair-policy", "fair", "--fair-param", "catchup_tokens=0", "--chunked-prefill-size", "2048"],
    "fair-admission-off": ["--fair-policy", "fair", "--fair-param", "admission=off", "--chunked-prefill-size", "2048"],
    "sarathi-512": ["--fair-policy", "sarathi", "--fair-param", "token_budget=512", "--chunked-prefill-size", "2048"],
}
"""Every registered policy under its own name through the plugin, plus the stock configurations and named
variants (a new policy file is a live benchmark choice with no edit here)."""
STOCK = ("stock", "stock-mixed-512")
"""Policies with our plugin inert (no cost model, no status route)."""
_CPU_FAIR = "@".join(f"{k}={v}" for k, v in CPU_FAIR_PARAMS.items())
SIM_SPECS = {"fair": f"fair@{_CPU_FAIR}", "fair-strict": "fair@catchup_tokens=0", "slai": "slai",
             "sarathi-512": "sarathi-512", "fair-admission-off": f"fair@admission=off@{_CPU_FAIR}"}
"""Live policy -> the simulator's spec for the same policy code (stock SGLang has no simulator twin); the live
servers run on the CPU, so `fair` carries serve's CPU parameters."""


def policy_args(name: str, *, ttft_slo_ms: float, tpot_slo_ms: float, cost_model: str | None = None,
                save_cost_model: str | None = None) -> list[str]:
    if name not in LIVE_POLICIES:
        raise ValueError(f"unknown live policy {name!r}; choose from {', '.join(LIVE_POLICIES)}")
    args = [*LIVE_POLICIES[name], "--ttft-slo-ms", f"{ttft_slo_ms:g}", "--tpot-slo-ms", f"{tpot_slo_ms:g}"]
    if name not in STOCK:
        if cost_model:
            args += ["--fair-cost-model", cost_model]
        if save_cost_model:
            args += ["--fair-save-cost-model", save_cost_model]
    return args
