"""`sglang-fair bench --emulate PRESET[:DILATION]`: the live A/B on the emulated accelerator (docs/emulated-device.md).

Every server is `sglang-fair serve --emulate-device PRESET:DILATION` (the micro model, the emulated GPU's KV pool,
chunked prefill 8192, every forward padded to the device model's time for the batch that ran). Everything else is the
CPU benchmark's (runner.py): SGLang's bench_serving replays trace windows, capacity by budgeted bisection on the rate
scale. What changes:
- time: DILATION k multiplies every device time, so the benchmark divides arrival rates by k and multiplies the SLOs
  by k; figures are reported in the emulated GPU's own time (dilated times / k) and labelled emulated;
- lengths: the traces' real prompt and output lengths, clipped to the model's 8192-token context;
- policies: as users would run them on an 80 GB GPU (`EMULATED_POLICIES`), each with its GPU defaults;
- validity: a probe where more than `MAX_OVERRUN_FRACTION` of the forwards overran (the CPU's real work exceeded the
  emulated time, so the clock was not the device's) is marked invalid and never counts as a pass;
- fidelity: each valid probe is replayed in the simulator with the device model itself as the iteration time
  (fidelity.py), so the gap is what the simulator misses of the real scheduler, not cost-model error.
"""

from __future__ import annotations

import math

from ..config import OFF
from .workload import Workload

MAX_OVERRUN_FRACTION = 0.02
EMULATED_TTFT_SLO_MS = 2000.0
EMULATED_TPOT_SLO_MS = 100.0
"""SLOs in the emulated GPU's time (the benchmark multiplies them by the dilation)."""
CONTEXT_TOKENS = 8192
"""The micro model's context, as Llama-3-8B's."""

EMULATED_POLICIES: dict[str, list[str]] = {
    "stock": ["--fair-policy", OFF, "--chunked-prefill-size", "8192"],
    "stock-mixed-2048": ["--fair-policy", OFF, "--chunked-prefill-size", "2048", "--enable-mixed-chunk"],
    "stock-mixed-512": ["--fair-policy", OFF, "--chunked-prefill-size", "512", "--enable-mixed-chunk"],
    "fair": ["--fair-policy", "fair"],
    "fair-admission-off": ["--fair-policy", "fair", "--fair-param", "admission=off"],
    "slai": ["--fair-policy", "slai"],
    "sarathi-512": ["--fair-policy", "sarathi", "--fair-param", "token_budget=512"],
    "sarathi-2048": ["--fair-policy", "sarathi", "--fair-param", "token_budget=2048"],
}
"""Server flags per policy on top of `--emulate-device` (which sets chunked prefill 8192, SGLang's 80 GB default).
`stock`: SGLang's defaults on that GPU (prefill first, chunks of 8192, no mixed chunk); `stock-mixed-*`: SGLang's
own stall-free batching (`--enable-mixed-chunk`); the rest our policies through the plugin, GPU defaults
(`fair-admission-off`: fair without its SLO-aware admission, the default before the ninth session)."""
EMULATED_STOCK = ("stock", "stock-mixed-2048", "stock-mixed-512")
EMULATED_SIM_SPECS = {"stock": "sglang-default", "stock-mixed-2048": "sglang-mixed-2048",
                      "stock-mixed-512": "sglang-mixed-512", "fair": "fair", "fair-admission-off": "fair@admission=off",
                      "slai": "slai", "sarathi-512": "sarathi-512", "sarathi-2048": "sarathi-2048"}
"""Each live policy's twin in the simulator (the same policy code; stock SGLang by our sglang-default model)."""

CONV_REQUEST_1000_S = 216.174389
"""Azure conv 2023, arrival of request 1000: 150 requests from there arrive at 5.5 req/s, the trace's mean rate
(mean prompt 1157, output 225 tokens; none past 8192 in all)."""


def _real_lengths(trace: str, n: int, start_s: float = 0.0) -> Workload:
    return Workload(trace, n, start_s=start_s, prompt_scale=1.0, output_scale=1.0,
                    max_prompt_tokens=CONTEXT_TOKENS - 1, max_output_tokens=CONTEXT_TOKENS - 1,
                    max_context_tokens=CONTEXT_TOKENS)


QUICK_REQUESTS = 150
"""Requests in the quick window."""

WINDOWS: dict[str, tuple[float, int]] = {"azure-conv": (CONV_REQUEST_1000_S, QUICK_REQUESTS),
                                         "azure-code": (1073.8, 100), "sharegpt": (0.0, 100)}
"""Each trace's window (start in unscaled trace seconds, requests): the full mode runs all three, the quick mode
one (`bench --emulate --window-trace`, Azure conv by default)."""


CLUSTER_SERVERS = 2
"""Servers in the emulated cluster runs (this project's machines run at most two SGLang servers at once)."""


def request_start_s(request: int, n_requests: int = QUICK_REQUESTS, trace: str = "azure-conv") -> float:
    """Arrival (s, unscaled trace time) of request number `request` (0-based) of the shipped `trace` (ShareGPT:
    its seeded arrivals at 1 req/s, as the benchmark's windows load it), the first of a window of `n_requests`."""
    from ..sim.traces import load_trace
    arrivals = load_trace(trace).arrival_s
    if not 0 <= request <= len(arrivals) - n_requests:
        raise ValueError(f"must be a request number from 0 to {len(arrivals) - n_requests} (the window is "
                         f"{n_requests} requests of {trace}'s {len(arrivals)}), got {request}")
    return float(arrivals[request])


def cluster_workload(start_request: int | None = None) -> Workload:
    """The emulated cluster runs' window: CLUSTER_SERVERS quick windows of Azure conv back to back, from request 1000
    or `start_request` (so at one rate scale each server gets about one quick window's load)."""
    n = CLUSTER_SERVERS * QUICK_REQUESTS
    start = request_start_s(1000 if start_request is None else start_request, n)
    return _real_lengths("azure-conv", n, start)


def window_workload(trace: str = "azure-conv", start_request: int | None = None) -> Workload:
    """`trace`'s window (WINDOWS), or as many requests from request number `start_request`."""
    if trace not in WINDOWS:
        raise ValueError(f"must be one of {', '.join(WINDOWS)}, got {trace!r}")
    start, n = WINDOWS[trace]
    return _real_lengths(trace, n, start if start_request is None else request_start_s(start_request, n, trace))


def full_workloads() -> list[Workload]:
    return [window_workload(t) for t in WINDOWS]


def policy_args(name: str, spec_text: str, *, ttft_slo_ms: float, tpot_slo_ms: float,
                overlap: bool = True) -> list[str]:
    """`sglang-fair serve` flags for `name` on the emulated device (SLOs already dilated; `overlap`: emulate the
    GPU's overlap loop)."""
    if name not in EMULATED_POLICIES:
        raise ValueError(f"unknown emulated policy {name!r}; choose from {', '.join(EMULATED_POLICIES)}")
    return [*EMULATED_POLICIES[name], "--emulate-device", spec_text, "--emulate-overlap", "on" if overlap else "off",
            "--ttft-slo-ms", f"{ttft_slo_ms:g}", "--tpot-slo-ms", f"{tpot_slo_ms:g}"]


def read_counters(server) -> dict[str, list[int]]:
    """Forward kind (decode, prefill, mixed) -> [forwards, overruns] so far of a server's emulated device (SGLang's
    /server_info internal state; {} before its first forward)."""
    states = server.get("/server_info", timeout=30).json().get("internal_states") or [{}]
    dev = states[0].get("emulated_device") or {}
    return {k: list(v) for k, v in (dev.get("by_kind") or {}).items()} if dev.get("active") else {}


def counter_delta(before: list[dict], after: list[dict]) -> dict[str, list[int]]:
    """Per kind [forwards, overruns] of one probe, summed over servers."""
    out: dict[str, list[int]] = {}
    for b, a in zip(before, after):
        for kind, (n, o) in a.items():
            n0, o0 = b.get(kind, (0, 0))
            acc = out.setdefault(kind, [0, 0])
            acc[0] += n - n0
            acc[1] += o - o0
    return out


def overrun_hint(delta: dict[str, list[int]], spec_text: str) -> str:
    """What to do about an invalid probe: which batches this host could not finish in their emulated time, and
    the flag that fixes it (a larger dilation, the same for every policy of a comparison)."""
    from ..emulate.spec import parse_device_spec
    spec = parse_device_spec(spec_text)
    kinds = ", ".join(f"{kind} {o}/{n}" for kind, (n, o) in sorted(delta.items()) if o)
    return (f"this host's real forwards overran the emulated time in more than {MAX_OVERRUN_FRACTION:.0%} of the "
            f"probe's forwards ({kinds or 'none by kind'}) at dilation {spec.dilation:g}: such probes are invalid "
            f"and never pass. Rerun every policy of the comparison with a larger dilation, e.g. --emulate "
            f"{spec.preset}:{math.ceil(spec.dilation * 1.5):d} (with --trace the run's summary gives min_dilation, the "
            f"smallest at which every probe would have been valid on this host)")


def overrun_fraction(delta: dict[str, list[int]]) -> float:
    n = sum(v[0] for v in delta.values())
    return sum(v[1] for v in delta.values()) / n if n > 0 else 0.0


def in_gpu_time(summary: dict, dilation: float) -> dict:
    """A probe's latency percentiles in the emulated GPU's milliseconds (dilated seconds / k)."""
    keys = ("p50_ttft_s", "p90_ttft_s", "p99_ttft_s", "p50_tpot_s", "p90_tpot_s", "p99_tpot_s")
    return {k.replace("_s", "_ms"): (None if summary.get(k) is None else summary[k] * 1e3 / dilation)
            for k in keys}

