"""SGLang plugin entry point (group `sglang.srt.plugins`).

SGLang calls `load()` in every one of its processes (main, scheduler child, detokenizer). The plugin does nothing
unless `sglang-fair serve` put a RuntimeConfig in the environment, so an installed sglang-fair leaves plain
`sglang serve` / `python -m sglang.launch_server` stock. When active it registers the scheduler hooks (they only
touch the Scheduler class, which lives in the scheduler child) and, in the main process, the HTTP routes.

SGLang's loader logs and swallows exceptions from plugins, so a broken configuration would silently run stock:
fatal problems here raise SystemExit instead, which the loader does not catch.
"""

from __future__ import annotations

import logging
import multiprocessing

from ..config import ENV_VAR, RuntimeConfig

logger = logging.getLogger("sglang_fair")

STARTUP_LINE = "sglang-fair plugin active"


def load() -> None:
    try:
        cfg = RuntimeConfig.from_env()
    except (ValueError, TypeError) as exc:
        raise SystemExit(f"sglang-fair: invalid {ENV_VAR}: {exc}") from exc
    if cfg is None:
        return
    try:
        from ..emulate.hook import register_from_env
        from . import scheduler_hooks

        spec = register_from_env()  # first: the emulated device's padder must be the innermost run_batch wrapper
        if cfg.trace_path:  # opened by the scheduler child on its first record (core/trace.py)
            from ..core import trace
            trace.configure(cfg.trace_path, cfg.trace_max_mb, header={
                "policy": cfg.policy, "params": cfg.policy_params, "ttft_slo_ms": cfg.slo.ttft_slo_ms,
                "tpot_slo_ms": cfg.slo.tpot_slo_ms, "emulated_device": spec.text() if spec is not None else None,
                "dilation": spec.dilation if spec is not None else 1.0})
        scheduler_hooks.register(cfg)
        if multiprocessing.parent_process() is None:  # the HTTP (main) process; SGLang's workers are mp children
            from . import http

            http.install(cfg)
    except Exception as exc:  # SGLang's loader would log this and run stock: stop instead
        logger.exception("sglang-fair plugin failed to start")
        raise SystemExit(f"sglang-fair plugin failed to start: {exc!r}") from exc
    logger.warning("%s: policy=%s (process %s)", STARTUP_LINE, cfg.policy, multiprocessing.current_process().name)
