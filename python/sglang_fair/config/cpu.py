"""The CPU side of `sglang-fair serve`: what it adds on a machine without CUDA, and how it tells.

Why each default is there: docs/decisions.md; the measured figures: docs/results.md.
"""

from __future__ import annotations

import dataclasses

from .runtime import RuntimeConfig

CPU_DEFAULTS = (
    ("--device", "cpu"),
    ("--attention-backend", "torch_native"),
    ("--disable-cuda-graph", None),
    ("--sampling-backend", "pytorch"),
    ("--max-total-tokens", "32768"),
    ("--mem-fraction-static", "0.1"),
    ("--sleep-on-idle", None),
    ("--disable-overlap-schedule", None),
)
"""SGLang flags `serve` adds on a CPU where the user gave none (the overlap loop only delays results on a CPU, where
the forward runs inside `run_batch`)."""
CPU_FAIR_PARAMS = {"catchup_tokens": 16}
"""`fair` parameters `serve` adds on a CPU where the user gave none: decodes may fall behind by what 16 tokens can
win back (chunking and mixing are expensive on SGLang's CPU backend; on the GPU presets catch-up lowers capacity,
so it is not the policy default)."""


def has_cuda() -> bool:
    try:
        import torch
        return bool(torch.cuda.is_available())
    except Exception:  # no torch, or a broken CUDA install: treat as CPU
        return False


def cpu_has_native_bf16(cpuinfo: str | None = None) -> bool:
    """Whether this x86 CPU computes bf16 natively (AVX512-BF16 or AMX). Without it torch runs bf16 matmuls through
    conversions: measured 7x slower than fp32 for the embedded model's shapes on a 2-core AVX2 machine."""
    if cpuinfo is None:
        try:
            with open("/proc/cpuinfo") as f:
                cpuinfo = f.read()
        except OSError:
            return False
    flags = set(cpuinfo.split())
    return bool(flags & {"avx512_bf16", "amx_bf16"})


def cpu_dtype_default(cpuinfo: str | None = None) -> str:
    """`--dtype` that `serve` adds on a CPU when none is given: the model's own unless bf16 would be emulated."""
    return "auto" if cpu_has_native_bf16(cpuinfo) else "float32"


def with_cpu_policy_defaults(cfg: RuntimeConfig) -> RuntimeConfig:
    """`cfg` with CPU_FAIR_PARAMS added where the user set none (policy `fair` only)."""
    if cfg.policy != "fair":
        return cfg
    params = {**CPU_FAIR_PARAMS, **cfg.policy_params}
    return cfg if params == cfg.policy_params else dataclasses.replace(cfg, policy_params=params)
