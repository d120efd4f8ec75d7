"""`sglang-fair serve`: SGLang's own server with the sglang-fair plugin switched on.

Takes every `sglang serve` / `python -m sglang.launch_server` flag unchanged, plus the `--fair-*`/SLO flags below.
Our flags are validated before anything heavy is imported or any model loads. The server runs as a child
(`python -m sglang.launch_server ...`) with the plugin's RuntimeConfig in its environment; this process supervises
it: once the server answers, it checks that our hooks are live in the scheduler (SGLang's hook registry swallows
errors) and stops the server with a clear message otherwise. Signals are forwarded; the exit code is the server's.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time

from .config import (CPU_DEFAULTS, POLICY_CHOICES, RuntimeConfig, SloConfig, cpu_dtype_default, has_cuda,
                     parse_param, with_cpu_policy_defaults)
from .config.runtime import ADMISSION_CHOICES, LOADS_CHOICES
from .core.checks import FieldError
from .core.trace import holder_pid
from .emulate.serve_args import split_emulate_args

ALWAYS_DEFAULTS = (("--host", "127.0.0.1"),)
REFUSED_SGLANG_FLAGS = (
    (("--tp-size", "--tensor-parallel-size"), lambda v: _int(v) > 1, "tensor parallelism"),
    (("--dp-size", "--data-parallel-size"), lambda v: _int(v) > 1, "data parallelism"),
    (("--attn-dp-size", "--attention-data-parallel-size"), lambda v: _int(v) > 1, "DP attention"),
    (("--enable-dp-attention",), None, "DP attention"),
    (("--pp-size", "--pipeline-parallel-size"), lambda v: _int(v) > 1, "pipeline parallelism"),
    (("--speculative-algorithm",), lambda v: v.lower() not in ("", "none"), "speculative decoding"),
    (("--disaggregation-mode",), lambda v: v != "null", "PD disaggregation"),
    (("--chunked-prefill-size",), lambda v: _int(v) <= 0, "chunked prefill disabled"),
    (("--prefill-decode-interval",), lambda v: _int(v) > 0, "a prefill/decode interval"),
    (("--enable-priority-scheduling",), None, "request priorities (plans do not take priorities into account)"),
    (("--schedule-policy",), lambda v: v != "fcfs", "a waiting-queue order other than fcfs (the plan orders it)"),
    (("--enable-pdmux",), None, "PD multiplexing"),
    (("--enable-prefill-delayer",), None, "the prefill delayer (it would veto planned prefills)"),
    (("--min-free-slots-delay",), lambda v: _int(v) > 1,
     "the min-free-slots delay (it would hold planned prefills back until request slots free up)"),
    (("--dllm-algorithm",), None, "diffusion LLMs"),
    (("--enable-hisparse",), None, "HiSparse"),
    (("--is-embedding",), None, "embedding models"),
)
"""SGLang flags an active policy refuses: (spellings, refused-if(value) or None for a switch, what it turns on).
Checked on the command line before anything loads; the scheduler refuses the same configurations however they were
set (config file, Engine API): engine/selftest.unsupported_features."""
READY_TIMEOUT_S = 900.0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="sglang-fair serve", allow_abbrev=False,
        description="Run SGLang's server with FairBatching. Every other flag goes to SGLang unchanged.")
    g = p.add_argument_group("sglang-fair")
    g.add_argument("--fair-policy", default="fair", help=f"batch formation policy: {', '.join(POLICY_CHOICES)} "
                   "(off = stock SGLang; default fair)")
    g.add_argument("--ttft-slo-ms", type=float, default=SloConfig().ttft_slo_ms,
                   help="default time-to-first-token SLO, ms (requests may carry their own)")
    g.add_argument("--tpot-slo-ms", type=float, default=SloConfig().tpot_slo_ms,
                   help="default time-per-output-token SLO, ms (requests may carry their own)")
    g.add_argument("--fair-param", action="append", default=[], metavar="KEY=VALUE",
                   help="a policy parameter (repeatable), e.g. --fair-param token_budget=512; see docs/usage.md")
    g.add_argument("--fair-cost-model", default=None, metavar="PRESET|PATH",
                   help="starting iteration-cost model: a preset name or a JSON file")
    g.add_argument("--fair-no-online-fit", action="store_true", help="do not refit the cost model while serving")
    g.add_argument("--fair-save-cost-model", default=None, metavar="PATH",
                   help="write the online cost-model fit to PATH (JSON, loadable by --fair-cost-model) after each "
                        "accepted refit")
    g.add_argument("--fair-trace", default=None, metavar="PATH",
                   help="write the scheduler's iteration trace to PATH (JSON lines: every plan, every measured forward "
                        "and, with --emulate-device, every emulated forward; rewritten at start; summarise it with "
                        "`sglang-fair trace-report PATH`)")
    g.add_argument("--fair-trace-max-mb", type=float, default=1024.0, metavar="MB",
                   help="stop the trace at this size, MiB (default 1024)")
    g.add_argument("--fair-load-horizon-ms", type=float, default=None,
                   help="horizon of the prefill admission budget served on /get_load (default: the TTFT SLO)")
    g.add_argument("--fair-loads", default="fair", choices=LOADS_CHOICES,
                   help="what GET /v1/loads (smg's load signal) serves: fair = SGLang's shape with our token load, "
                        "stock = SGLang's own answer (default fair)")
    g.add_argument("--fair-admission", default="off", choices=ADMISSION_CHOICES,
                   help="reject = answer HTTP 429 with Retry-After at arrival to a request whose first token cannot "
                        "meet its TTFT SLO behind the queued work (a router then sends it elsewhere); shed = that, "
                        "and HTTP 429 for a queued request the moment the policy demotes it (no backlog of late "
                        "requests after an overload); off = queue every request (default off)")
    e = p.add_argument_group("emulated accelerator (figures from it are emulated, not GPU measurements)")
    e.add_argument("--emulate-device", metavar="PRESET[:DILATION]",
                   help="pad every forward to the time of the emulated GPU (a100-llama3-8b, h100-llama3-8b) for the "
                        "batch that ran, times DILATION; sizes the KV pool like that GPU (docs/emulated-device.md)")
    e.add_argument("--emulate-jitter-cv", metavar="CV", help="log-normal jitter of the emulated times (default 0)")
    e.add_argument("--emulate-seed", metavar="N", help="seed of the jitter (default 0)")
    e.add_argument("--emulate-overlap", metavar="on|off",
                   help="emulate SGLang's GPU overlap loop: the host time between forwards is hidden behind the "
                        "previous forward's emulated time (default on, as SGLang runs on a GPU)")
    g.add_argument("--fair-no-verify", action="store_true",
                   help="do not stop the server when the start-up hook check fails (debugging only)")
    return p


FLAG_OF_FIELD = {"policy": "--fair-policy", "ttft_slo_ms": "--ttft-slo-ms", "tpot_slo_ms": "--tpot-slo-ms",
                 "load_horizon_ms": "--fair-load-horizon-ms", "loads": "--fair-loads",
                 "admission": "--fair-admission", "trace_max_mb": "--fair-trace-max-mb"}
"""The flag that sets each validated config field (errors name the flag, not the field)."""


def runtime_config(ns: argparse.Namespace) -> RuntimeConfig:
    """Validate our flags; raises ValueError whose message names the flag."""
    try:
        params = dict(parse_param(t) for t in ns.fair_param)
    except ValueError as exc:
        raise ValueError(f"--fair-param: {exc}") from None
    save_path = _writable_file_path("--fair-save-cost-model", ns.fair_save_cost_model)
    trace_path = _writable_file_path("--fair-trace", ns.fair_trace)
    if trace_path is not None and (pid := holder_pid(trace_path)) is not None:
        raise ValueError(f"--fair-trace: {trace_path!r} is being written by a running server (pid {pid}); "
                         f"give each server its own file")
    if save_path is not None and ns.fair_no_online_fit:
        raise ValueError("--fair-save-cost-model needs the online fit (drop --fair-no-online-fit)")
    try:
        cfg = RuntimeConfig(policy=ns.fair_policy, slo=SloConfig(ttft_slo_ms=ns.ttft_slo_ms, tpot_slo_ms=ns.tpot_slo_ms),
                            policy_params=params, cost_model=ns.fair_cost_model, online_fit=not ns.fair_no_online_fit,
                            load_horizon_ms=ns.fair_load_horizon_ms, save_cost_model=save_path,
                            loads=ns.fair_loads, admission=ns.fair_admission, trace_path=trace_path,
                            trace_max_mb=ns.fair_trace_max_mb)
    except FieldError as exc:
        raise ValueError(f"{FLAG_OF_FIELD.get(exc.field, exc.field)} {exc.problem}") from None
    if cfg.active:
        from .policies import make_policy

        try:
            make_policy(cfg.policy, **params)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"--fair-policy {cfg.policy} / --fair-param: {exc}") from None
    if cfg.cost_model is not None:
        from .core.presets import load_preset

        try:
            load_preset(cfg.cost_model)
        except (OSError, ValueError, KeyError) as exc:
            raise ValueError(f"--fair-cost-model: {exc}") from None
    return cfg


def _int(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        return 1  # not a number: neither refused here nor accepted, SGLang's own parser reports it


def refused_sglang_flags(cfg: RuntimeConfig, args: list[str]) -> list[str]:
    """The SGLang flags in `args` that `cfg`'s policy refuses, each as 'FLAG VALUE (what it turns on)'."""
    if not cfg.active:
        return []
    out = []
    for spellings, refused, what in REFUSED_SGLANG_FLAGS:
        for flag in spellings:
            if not _given(args, flag):
                continue
            value = _value(args, flag, "")
            if refused is None:
                out.append(f"{flag} ({what})")
            elif refused(value):
                out.append(f"{flag} {value} ({what})")
    return out


def _writable_file_path(flag: str, path: str | None) -> str | None:
    """Absolute path for a file the scheduler child writes (`flag` names it in the error); its folder must be
    writable."""
    if path is None:
        return None
    p = os.path.abspath(path)
    folder = os.path.dirname(p)
    if os.path.isdir(p) or not os.path.isdir(folder) or not os.access(folder, os.W_OK):
        raise ValueError(f"{flag}: {path!r} is not a file path in a writable folder")
    return p


def _given(args: list[str], flag: str) -> bool:
    return any(a == flag or a.startswith(flag + "=") for a in args)


def _value(args: list[str], flag: str, default: str | None = None) -> str | None:
    for i, a in enumerate(args):
        if a == flag and i + 1 < len(args):
            return args[i + 1]
        if a.startswith(flag + "="):
            return a.split("=", 1)[1]
    return default


def sglang_args(rest: list[str], cpu: bool) -> list[str]:
    args = list(rest)
    if not (_given(args, "--model-path") or _given(args, "--model")):
        from .data.model import make_model
        print("sglang-fair serve: no --model-path given, using the embedded model", file=sys.stderr)
        args += ["--model-path", str(make_model())]
    defaults = ALWAYS_DEFAULTS + ((*CPU_DEFAULTS, ("--dtype", cpu_dtype_default())) if cpu else ())
    for flag, value in defaults:
        if not _given(args, flag):
            args += [flag] if value is None else [flag, value]
    return args


def _fetch_status(base: str, api_key: str | None) -> tuple[int, dict | None]:
    import requests
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    try:
        r = requests.get(base + "/sglang_fair/status", timeout=10, headers=headers)
    except requests.RequestException:
        return 0, None
    try:
        return r.status_code, r.json()
    except ValueError:
        return r.status_code, None


def verify_started(proc: subprocess.Popen, base: str, cfg: RuntimeConfig, api_key: str | None) -> str | None:
    """Wait for the server; return None if our hooks are live, else the reason (or "exited" if it died)."""
    deadline = time.monotonic() + READY_TIMEOUT_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            return "exited"
        code, body = _fetch_status(base, api_key)
        if code == 404:
            return ("the sglang-fair plugin is not active in the server process (is sglang-fair installed in the same "
                    "environment, and not excluded by SGLANG_PLUGINS?)")
        if code == 200 and body is not None:
            if not body.get("hooks_verified"):
                return f"the scheduler did not confirm our hooks: {json.dumps(body.get('ranks'))}"
            if body.get("policy") != cfg.policy:
                return f"the server runs policy {body.get('policy')!r}, expected {cfg.policy!r}"
            return None
        time.sleep(1.0)
    return f"the server did not become ready within {READY_TIMEOUT_S:.0f} s"


def _stop(proc: subprocess.Popen, timeout_s: float = 30.0) -> None:
    if proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def main(argv: list[str]) -> int:
    parser = build_parser()
    try:
        argv, emulate = split_emulate_args(argv)
    except ValueError as exc:
        parser.error(str(exc))
    if emulate:
        argv = emulate.with_planner_prior(argv)
    ns, rest = parser.parse_known_args(argv)
    try:
        cfg = runtime_config(ns)
    except ValueError as exc:
        parser.error(str(exc))  # exits 2, before any model loads
    if cfg.trace_path and not cfg.active and not emulate:
        parser.error(f"--fair-trace records the plans and forwards of an active policy, or an emulated device's "
                     f"forwards: with --fair-policy {cfg.policy} it needs --emulate-device")
    refused = refused_sglang_flags(cfg, rest)
    if refused:
        parser.error(f"--fair-policy {cfg.policy} does not support: {'; '.join(refused)} (use --fair-policy off)")
    cpu = not has_cuda()
    args = sglang_args(emulate.sglang_args(rest) if emulate else rest, cpu)
    if cpu and not emulate:  # an emulated GPU runs the policies with their GPU defaults
        cfg = with_cpu_policy_defaults(cfg)
    if emulate:  # ... on its dilated clock
        cfg = emulate.with_dilated_policy_times(cfg)
    env = dict(os.environ, **cfg.to_env(), **(emulate.env() if emulate else {}))
    if emulate:
        print(emulate.banner(), file=sys.stderr)
    if cpu:
        env.setdefault("SGLANG_USE_CPU_ENGINE", "1")
    host = _value(args, "--host", "127.0.0.1")
    port = _value(args, "--port", "30000")
    base = f"http://{'127.0.0.1' if host in ('0.0.0.0', '::') else host}:{port}"
    proc = subprocess.Popen([sys.executable, "-m", "sglang.launch_server", *args], env=env)

    def forward(signum, _frame):
        if proc.poll() is None:
            proc.send_signal(signum)

    for s in (signal.SIGTERM, signal.SIGINT):
        signal.signal(s, forward)
    problem = verify_started(proc, base, cfg, _value(args, "--api-key"))
    if problem == "exited":
        return proc.wait() or 1
    if problem is not None:
        msg = f"sglang-fair serve: start-up check failed: {problem}"
        if ns.fair_no_verify:
            print(msg + " (continuing: --fair-no-verify)", file=sys.stderr)
        else:
            print(msg + "; stopping the server", file=sys.stderr)
            _stop(proc)
            return 1
    else:
        print(f"sglang-fair serve: ready on {base} (policy {cfg.policy}, hooks verified)", file=sys.stderr, flush=True)
    return proc.wait()


def add_parser(subparsers) -> None:
    # Documentation only: `sglang-fair serve` is dispatched before argparse (cli.main) so SGLang flags pass through.
    subparsers.add_parser("serve", help="run SGLang's server with the FairBatching scheduler (takes every sglang serve flag)",
                          add_help=False)
