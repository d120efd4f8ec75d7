"""What `sglang-fair serve` hands to the plugin in every SGLang process: one JSON blob in an environment variable.

Absent variable = plugin inactive (plain `sglang serve` / `python -m sglang.launch_server` stay stock).
Pure data: no sglang imports here. Policy parameters use one syntax everywhere (`--fair-param KEY=VALUE` in `serve`,
`NAME@KEY=VALUE@...` in the simulator's policy specs): `parse_param`.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import asdict, dataclass, field

from ..core.checks import FieldError, check_positive
from ..policies import policy_names
from .slo import SloConfig

ENV_VAR = "SGLANG_FAIR_CONFIG"
OFF = "off"
POLICY_CHOICES = (*policy_names(), OFF)
"""Every registered policy, and `off` (stock SGLang batching)."""
LOADS_CHOICES = ("fair", "stock")
"""What `/v1/loads` serves (RuntimeConfig.loads)."""
ADMISSION_CHOICES = ("off", "reject", "shed")
"""RuntimeConfig.admission: `reject` = HTTP 429 at arrival for a request that cannot meet its TTFT SLO; `shed` = that,
and HTTP 429 for a queued request the moment the policy demotes it (before it holds KV; engine/reject.py)."""


def parse_param(text: str) -> tuple[str, object]:
    """'KEY=VALUE' -> (key, value): VALUE as JSON (numbers, true/false, null, strings in quotes, lists, objects),
    `inf`/`-inf` as infinities, anything else as the plain string. Raises ValueError on a missing '=' or key."""
    key, sep, raw = text.partition("=")
    key = key.strip()
    if not sep or not key:
        raise ValueError(f"expected KEY=VALUE, got {text!r}")
    special = {"inf": math.inf, "+inf": math.inf, "-inf": -math.inf}
    if raw.strip().lower() in special:
        return key, special[raw.strip().lower()]
    try:
        return key, json.loads(raw)
    except json.JSONDecodeError:
        return key, raw


@dataclass(frozen=True)
class RuntimeConfig:
    policy: str = "fair"
    """Active policy name, or "off" for stock SGLang batching (status endpoint still served)."""
    slo: SloConfig = field(default_factory=SloConfig)
    """Default per-request SLOs (requests may carry their own)."""
    policy_params: dict = field(default_factory=dict)
    """Keyword arguments for the policy's params dataclass (validated by the policy)."""
    cost_model: str | None = None
    """Preset name or JSON path of the starting cost model (None: the preset for this device)."""
    online_fit: bool = True
    """Refit the cost model from measured iterations inside the scheduler."""
    load_horizon_ms: float | None = None
    """Horizon of the prefill admission budget (None: the TTFT SLO)."""
    save_cost_model: str | None = None
    """Where the scheduler writes its online cost-model fit (JSON readable by `cost_model`); None: not written."""
    loads: str = "fair"
    """What `GET /v1/loads` (smg's load signal) serves: "fair" = SGLang's shape with our estimate written over it
    (engine/http.py), "stock" = SGLang's own answer. Only with an active policy (`off` always serves SGLang's)."""
    admission: str = "off"
    """"reject": a request whose first token cannot meet its TTFT SLO behind the queued work gets HTTP 429 with
    Retry-After at arrival (engine/reject.py); "off": every request is queued. Needs an active policy."""
    trace_path: str | None = None
    """Where the scheduler writes its iteration trace (JSON lines: plans, forwards, emulated device; core/trace.py);
    None: no trace."""
    trace_max_mb: float = 1024.0
    """The trace stops (with a `truncated` record) at this size, MiB."""

    def __post_init__(self) -> None:
        if self.policy not in POLICY_CHOICES:
            raise FieldError("policy", f"must be one of {', '.join(POLICY_CHOICES)}, got {self.policy!r}")
        if self.load_horizon_ms is not None:
            check_positive("load_horizon_ms", self.load_horizon_ms)
        if self.loads not in LOADS_CHOICES:
            raise FieldError("loads", f"must be one of {', '.join(LOADS_CHOICES)}, got {self.loads!r}")
        if self.admission not in ADMISSION_CHOICES:
            raise FieldError("admission", f"must be one of {', '.join(ADMISSION_CHOICES)}, got {self.admission!r}")
        if self.admission != "off" and self.policy == OFF:
            raise FieldError("admission", f"{self.admission!r} needs an active policy (not {OFF!r})")
        check_positive("trace_max_mb", self.trace_max_mb)
        if self.save_cost_model is not None and not self.online_fit:
            raise ValueError("save_cost_model needs the online fit (online_fit=True)")

    @property
    def active(self) -> bool:
        return self.policy != OFF

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    def to_env(self) -> dict[str, str]:
        """The environment entry that hands this config to the plugin (`serve` sets it for its child)."""
        return {ENV_VAR: self.to_json()}

    @classmethod
    def from_json(cls, text: str) -> "RuntimeConfig":
        d = json.loads(text)
        d["slo"] = SloConfig(**d.get("slo", {}))
        return cls(**d)

    @classmethod
    def from_env(cls, environ=os.environ) -> "RuntimeConfig | None":
        text = environ.get(ENV_VAR)
        return cls.from_json(text) if text else None
