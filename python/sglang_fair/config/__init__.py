"""Configuration, in one place: typed, validated at construction, units in the names.

- `slo`: default SLOs (`SloConfig`) and the per-request SLO parser (`parse_request_slos`);
- `runtime`: what `serve` hands the plugin (`RuntimeConfig`, via `$SGLANG_FAIR_CONFIG`), the policy choices and the
  policy-parameter syntax (`parse_param`);
- `cpu`: the SGLang flags and policy parameters `serve` adds on a machine without CUDA.
"""

from .cpu import (CPU_DEFAULTS, CPU_FAIR_PARAMS, cpu_dtype_default, cpu_has_native_bf16, has_cuda,
                  with_cpu_policy_defaults)
from .runtime import ENV_VAR, OFF, POLICY_CHOICES, RuntimeConfig, parse_param
from .slo import MAX_SLO_MS, MIN_SLO_MS, SLO_KEYS, STRICT_KEY, TPOT_KEY, TTFT_KEY, SloConfig, parse_request_slos

__all__ = ["CPU_DEFAULTS", "CPU_FAIR_PARAMS", "ENV_VAR", "MAX_SLO_MS", "MIN_SLO_MS", "OFF", "POLICY_CHOICES",
           "SLO_KEYS", "STRICT_KEY", "TPOT_KEY", "TTFT_KEY", "RuntimeConfig", "SloConfig", "cpu_dtype_default",
           "cpu_has_native_bf16", "has_cuda", "parse_param", "parse_request_slos", "with_cpu_policy_defaults"]
