"""What an emulated device is, without numpy: the spec (`PRESET[:DILATION]`, jitter) and the emulated GPU's memory.
Light to import, so `sglang-fair serve` validates `--emulate-device` before anything heavy loads; the time model
itself is `device.py`."""

from __future__ import annotations

import math
from dataclasses import dataclass

from ..core.checks import FieldError

DEFAULT_OVERHEAD_MS = 1.0
"""A100 per-iteration LM head + sampling constant (see profiles.py); the same default as fit_profiles.py."""

DEVICE_PRESETS = {"a100-llama3-8b": False, "h100-llama3-8b": True}
"""Emulated device name -> whether it is derived by the H100/A100 ratio (see profiles.py)."""

GPU_MEMORY_BYTES = 80 * 1024**3
"""A100-80GB and H100-80GB (SXM) memory."""
SGLANG_MEM_FRACTION_STATIC = 0.836
"""SGLang 0.5.23's default `--mem-fraction-static` on an 80 GiB GPU at TP 1 (arg_groups/memory_hook.py:
(81920 - reserved) / 81920 MiB with reserved = 512 + 1.5 x chunked_prefill_size 8192 + 128 (TP) + 2 x decode CUDA
graph max_bs 256 = 13440 MiB, rounded to 3 digits)."""
LLAMA3_8B_PARAMETERS = 8_030_261_248
LLAMA3_8B_WEIGHT_BYTES = LLAMA3_8B_PARAMETERS * 2  # bf16
LLAMA3_8B_KV_BYTES_PER_TOKEN = 2 * 32 * 8 * 128 * 2
"""K and V x 32 layers x 8 KV heads x head dim 128 x 2 bytes (bf16) = 128 KiB per token."""


def kv_pool_tokens(gpu_memory_bytes: int = GPU_MEMORY_BYTES, mem_fraction: float = SGLANG_MEM_FRACTION_STATIC,
                   weight_bytes: int = LLAMA3_8B_WEIGHT_BYTES,
                   kv_bytes_per_token: int = LLAMA3_8B_KV_BYTES_PER_TOKEN) -> int:
    """Tokens of KV cache SGLang would allocate for Llama-3-8B on the emulated GPU: (memory x SGLang's default static
    fraction - the bf16 weights) / KV bytes per token. For 80 GB (A100 and H100 alike): (68.5 GiB - 15.0 GiB) /
    128 KiB = 425,356 tokens (SGLang also keeps a few small pools in the static share; this ignores them)."""
    free = gpu_memory_bytes * mem_fraction - weight_bytes
    if free <= 0:
        raise ValueError("the weights do not fit in the static memory share")
    return int(free // kv_bytes_per_token)


@dataclass(frozen=True)
class DeviceSpec:
    """Which emulated GPU, how much slower than it (`dilation`), and its timing noise."""

    preset: str = "a100-llama3-8b"
    dilation: float = 1.0
    """Every emulated time is multiplied by this (>= 1 on a CPU whose real forward is slower than the GPU's)."""
    jitter_cv: float = 0.0
    """Coefficient of variation of the log-normal per-iteration noise (0 = deterministic)."""
    seed: int = 0
    overhead_ms: float = DEFAULT_OVERHEAD_MS
    """A100 per-iteration LM head + sampling constant (the profiles lack those operators), as fit_profiles.py."""
    overlap: bool = True
    """Emulate SGLang's overlap scheduler (its default on a GPU): the host work between two forwards runs while the
    previous forward is on the device, so it is hidden up to that forward's emulated time (pad.py)."""

    def __post_init__(self) -> None:
        if self.preset not in DEVICE_PRESETS:
            raise ValueError(f"unknown emulated device {self.preset!r}; choose one of {', '.join(DEVICE_PRESETS)}")
        if not (math.isfinite(self.dilation) and self.dilation > 0):
            raise ValueError(f"dilation must be a positive number, got {self.dilation!r}")
        if not (math.isfinite(self.jitter_cv) and 0 <= self.jitter_cv <= 2):
            raise FieldError("jitter_cv", f"must be in [0, 2], got {self.jitter_cv!r}")
        if not (math.isfinite(self.overhead_ms) and self.overhead_ms >= 0):
            raise ValueError(f"overhead_ms must be >= 0, got {self.overhead_ms!r}")

    def text(self) -> str:
        return self.preset if self.dilation == 1 else f"{self.preset}:{self.dilation:g}"


def parse_device_spec(text: str, *, jitter_cv: float = 0.0, seed: int = 0, overlap: bool = True) -> DeviceSpec:
    """`PRESET[:DILATION]`, e.g. `a100-llama3-8b` or `h100-llama3-8b:20`; ValueError says what is wrong."""
    if not isinstance(text, str) or not text.strip():
        raise ValueError(f"expected PRESET[:DILATION] with PRESET one of {', '.join(DEVICE_PRESETS)}, got {text!r}")
    name, sep, raw = text.strip().partition(":")
    if name not in DEVICE_PRESETS:
        raise ValueError(f"unknown emulated device {name!r} in {text!r}; choose one of {', '.join(DEVICE_PRESETS)}")
    dilation = 1.0
    if sep:
        try:
            dilation = float(raw)
        except ValueError:
            raise ValueError(f"dilation in {text!r} must be a number (PRESET:DILATION, e.g. {name}:10)") from None
        if not (math.isfinite(dilation) and dilation > 0):
            raise ValueError(f"dilation in {text!r} must be a positive finite number")
    return DeviceSpec(preset=name, dilation=dilation, jitter_cv=jitter_cv, seed=seed, overlap=overlap)
