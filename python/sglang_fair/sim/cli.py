"""`sglang-fair sim` and `sglang-fair capacity`: the simulator's command line (registered by sglang_fair.cli).

Policy specs: `NAME` (a registered policy), `NAME-N` (token_budget=N, e.g. sarathi-512), `NAME@key=value@...` for
any config field, and `windserve` for the disaggregated prefill/decode pair (needs 2 GPUs' worth: it is compared
with `--replicas 2`).
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import sys
from pathlib import Path
from typing import Callable

import numpy as np
import orjson
from tqdm import tqdm

from ..config import parse_param
from ..core.checks import FieldError
from ..core.metrics import tbt_s
from ..core.presets import load_preset
from ..policies import make_policy
from ..policies.registry import check_params
from .capacity import find_capacity, late_limit, stability_bound_scale
from .cluster import ROUTERS, ClusterConfig, simulate_cluster
from .engine import DEFAULT_KV_CAPACITY_TOKENS, EngineConfig, SimResult, simulate
from .traces import load_trace
from .windserve import WindServeConfig, simulate_windserve


def parse_policy_spec(spec: str) -> tuple[str, dict]:
    """'sarathi-512' -> ('sarathi', {'token_budget': 512}); 'fair@min_budget_ms=10' -> ('fair', {...}). Parameters
    use serve's `--fair-param KEY=VALUE` syntax (config.parse_param), joined by '@'."""
    head, *pairs = spec.strip().split("@")
    params: dict = {}
    name = head
    if "-" in head:
        base, _, tail = head.rpartition("-")
        if tail.isdigit():
            name, params["token_budget"] = base, int(tail)
    for pair in pairs:
        try:
            key, value = parse_param(pair)
        except ValueError as exc:
            raise ValueError(f"bad policy parameter in {spec!r}: {exc}") from None
        params[key] = value
    if not name:
        raise ValueError(f"empty policy name in {spec!r}")
    return name, params


REJECT_SUFFIX = "+reject"
"""A policy spec ending in this runs with `--fair-admission reject` (EngineConfig.reject_at_arrival), e.g.
`fair+reject`, `fair@admission=demote+reject`."""
SHED_SUFFIX = "+shed"
"""A policy spec ending in this runs with `--fair-admission shed` (EngineConfig.reject_at_arrival and
shed_demoted), e.g. `fair+shed`."""


def split_admission(spec: str) -> tuple[str, str]:
    """(spec without REJECT_SUFFIX or SHED_SUFFIX, the server's --fair-admission: "reject", "shed" or "off")."""
    spec = spec.strip()
    for suffix in (REJECT_SUFFIX, SHED_SUFFIX):
        if spec.endswith(suffix):
            return spec[:-len(suffix)], suffix[1:]
    return spec, "off"


def make_runner(trace, spec: str, cost, engine: EngineConfig, *, replicas: int = 1, router: str = "fair",
                load_poll_interval_s: float = 0.1, stop_late: bool = True,
                progress: Callable[[float], object] | None = None,
                iteration_time=None, wrap_policy: Callable | None = None) -> Callable[[float], SimResult]:
    """A function scale -> SimResult for one policy spec (single replica, cluster, or WindServe); a spec ending in
    `+reject` refuses hopeless arrivals (REJECT_SUFFIX; single replica only), `+shed` also the queued requests the
    policy demotes (SHED_SUFFIX). `iteration_time`: the true time of a
    batch (e.g. the emulated device's model, `--device`), the policies planning with `cost`; default `cost`.
    `wrap_policy`: applied to the policy object before it runs (e.g. to record its plans; single replica only)."""
    spec, admission = split_admission(spec)
    name, params = parse_policy_spec(spec)
    if admission != "off":
        if replicas != 1 or name == "windserve":
            raise ValueError(f"+{admission} runs on one replica only (the simulated router does not resend a "
                             f"refused request)")
        engine = dataclasses.replace(engine, reject_at_arrival=True, shed_demoted=admission == "shed")
    limit = late_limit(len(trace)) if stop_late else None
    if wrap_policy is not None and (replicas != 1 or name == "windserve"):
        raise ValueError("wrap_policy wraps one replica's policy (not a cluster's or windserve's)")
    if name == "windserve":
        if iteration_time is not None:
            raise ValueError("windserve runs on the cost model only (no --device)")
        check_params("windserve", params, [f.name for f in dataclasses.fields(WindServeConfig)])
        ws = WindServeConfig(**params)
        return lambda scale: simulate_windserve(trace.scaled(scale), cost, engine, ws, stop_after_late=limit)
    make_policy(name, **params)  # fail fast on a bad spec
    if replicas == 1:
        wrap = wrap_policy or (lambda p: p)
        return lambda scale: simulate(trace.scaled(scale), wrap(make_policy(name, **params)), cost, engine,
                                      stop_after_late=limit, iteration_time=iteration_time)
    cl = ClusterConfig(replicas=replicas, router=router, load_poll_interval_s=load_poll_interval_s, seed=engine.seed)
    return lambda scale: simulate_cluster(trace.scaled(scale), lambda: make_policy(name, **params), cost, engine, cl,
                                          stop_after_late=limit, iteration_time=iteration_time)


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--trace", required=True, help="azure-code | azure-conv | sharegpt | path to a CSV/JSONL trace")
    p.add_argument("--shared", default=None, help="data folder replacing the shipped traces (<shared>/traces/*.csv; "
                   "default: $SGLANG_FAIR_SHARED, else the copies inside the package)")
    p.add_argument("--preset", default="a100-llama3-8b", help="cost-model preset name or JSON path")
    p.add_argument("--device", default=None, metavar="PRESET",
                   help="the true iteration time from this emulated device's model (Vidur operator profiles, what "
                        "`serve --emulate-device PRESET` pads to, e.g. a100-llama3-8b); the policies plan with "
                        "--preset and the headroom of the live adapter. Default: --preset is the device")
    p.add_argument("--online-fit", action="store_true",
                   help="the policies plan with an online fit of the iterations' true times (prior: --preset), as "
                        "`serve` does; matters only where --preset is not the device (--device, --noise-cv)")
    p.add_argument("--ttft-slo-ms", type=float, default=2000.0)
    p.add_argument("--tpot-slo-ms", type=float, default=100.0)
    p.add_argument("--kv-capacity-tokens", type=int, default=DEFAULT_KV_CAPACITY_TOKENS)
    p.add_argument("--noise-cv", type=float, default=0.0, help="iteration-time noise (coefficient of variation)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--limit", type=int, default=None, help="first N requests (after the window)")
    p.add_argument("--start-s", type=float, default=0.0, help="trace window start (s, unscaled trace time)")
    p.add_argument("--duration-s", type=float, default=None, help="trace window length (s, unscaled)")
    p.add_argument("--max-prompt-tokens", type=int, default=None)
    p.add_argument("--max-output-tokens", type=int, default=None)
    p.add_argument("--max-new-tokens", type=int, default=None, metavar="N",
                   help="the max_new_tokens every request shows the policies, as a client's bound (each still ends "
                        "at its own output length); default: its own output length, as bench_serving with "
                        "ignore_eos sends")
    add_trace_shaping(p)
    p.add_argument("--poisson-rate-rps", type=float, default=1.0, help="ShareGPT arrival rate at scale 1")
    p.add_argument("--replicas", type=int, default=1)
    p.add_argument("--router", choices=ROUTERS, default="fair")
    p.add_argument("--load-poll-interval-s", type=float, default=0.1, help="staleness of reported router loads")
    p.add_argument("--json", action="store_true", help="print JSON on stdout")


def add_trace_shaping(p: argparse.ArgumentParser) -> None:
    """Options for traces as users bring them (shared by sim, capacity and bench)."""
    p.add_argument("--spread-arrivals", action="store_true",
                   help="spread requests that share a timestamp evenly up to the next distinct timestamp")
    p.add_argument("--max-context-tokens", type=int, default=None, metavar="N",
                   help="clip each request so prompt + output <= N (the served model's context); the count is reported")


def usage_error(command: str, flag: str, problem) -> SystemExit:
    """One line naming the command and the flag, exit status 2 (raise what it returns)."""
    print(f"sglang-fair {command}: {flag}: {problem}", file=sys.stderr)
    return SystemExit(2)


def trace_error(command: str, exc: Exception) -> SystemExit:
    """One line naming the command and the file/line/field (from the loader's message), exit status 2."""
    return usage_error(command, "--trace", exc)


FLAG_OF_FIELD = {"kv_capacity_tokens": "--kv-capacity-tokens", "ttft_slo_ms": "--ttft-slo-ms",
                 "tpot_slo_ms": "--tpot-slo-ms", "noise_cv": "--noise-cv", "seed": "--seed",
                 "replicas": "--replicas", "router": "--router", "load_poll_interval_s": "--load-poll-interval-s",
                 "max_new_tokens": "--max-new-tokens"}
"""The flag that sets each EngineConfig / ClusterConfig field (errors name the flag, not the field)."""


def _positive(value) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value) and value > 0


def _check_numbers(args) -> None:
    """The flags no config class checks; the rest are checked where they are built (FLAG_OF_FIELD)."""
    if args.max_context_tokens is not None and args.max_context_tokens < 2:
        raise usage_error(args.command, "--max-context-tokens", "must be >= 2")
    if args.command == "sim" and not _positive(args.rate_scale):
        raise usage_error(args.command, "--rate-scale", f"must be a finite number > 0, got {args.rate_scale}")
    if args.command == "capacity" and not _positive(args.rel_tol):
        raise usage_error(args.command, "--rel-tol", f"must be a finite number > 0, got {args.rel_tol}")


def device_iteration_time(text: str):
    """The emulated device PRESET's iteration time (undilated: the simulator runs on the GPU's own clock);
    ValueError says what is wrong with `text`."""
    from ..emulate.device import DeviceModel, parse_device_spec
    spec = parse_device_spec(text)
    if spec.dilation != 1.0:
        raise ValueError(f"{text}: give the preset alone (the simulator runs on the GPU's own clock; --noise-cv "
                         f"adds jitter)")
    return DeviceModel(spec).iteration_s


def device_time(args):
    """`--device`: `device_iteration_time`, or None; a bad value exits with one line naming the flag."""
    if args.device is None:
        return None
    try:
        return device_iteration_time(args.device)
    except ValueError as exc:
        raise usage_error(args.command, "--device", exc) from None


def _runner(command: str, flag: str, trace, spec: str, cost, engine: EngineConfig, **kwargs):
    """make_runner for one spec given by `flag`; a bad spec or parameter exits with one line naming the flag."""
    try:
        return make_runner(trace, spec, cost, engine, **kwargs)
    except ValueError as exc:
        raise usage_error(command, flag, f"{spec}: {exc}") from None


def _setup(args):
    _check_numbers(args)
    try:
        trace = load_trace(args.trace, shared=args.shared, seed=args.seed, poisson_rate_rps=args.poisson_rate_rps,
                           limit=args.limit, start_s=args.start_s, duration_s=args.duration_s,
                           max_prompt_tokens=args.max_prompt_tokens, max_output_tokens=args.max_output_tokens,
                           spread_arrivals=args.spread_arrivals, max_context_tokens=args.max_context_tokens)
    except (OSError, ValueError) as exc:
        raise trace_error(args.command, exc) from None
    if trace.context_clipped:
        print(f"sglang-fair {args.command}: --max-context-tokens {args.max_context_tokens}: clipped "
              f"{trace.context_clipped} of {len(trace)} requests", file=sys.stderr)
    try:
        cost = load_preset(args.preset)
    except (OSError, ValueError, KeyError) as exc:
        raise usage_error(args.command, "--preset", exc) from None
    try:
        engine = EngineConfig(kv_capacity_tokens=args.kv_capacity_tokens, ttft_slo_ms=args.ttft_slo_ms,
                              tpot_slo_ms=args.tpot_slo_ms, noise_cv=args.noise_cv, seed=args.seed,
                              online_fit=args.online_fit, max_new_tokens=args.max_new_tokens)
        if args.replicas != 1:  # one replica runs without a router
            ClusterConfig(replicas=args.replicas, router=args.router, load_poll_interval_s=args.load_poll_interval_s)
    except FieldError as exc:
        raise usage_error(args.command, FLAG_OF_FIELD.get(exc.field, exc.field), exc.problem) from None
    return trace, cost, engine


def _header(args, trace) -> dict:
    return {"trace": args.trace, "requests": len(trace), "trace_rate_rps": trace.rate_rps, "preset": args.preset,
            "device": args.device, "online_fit": args.online_fit,
            "ttft_slo_ms": args.ttft_slo_ms, "tpot_slo_ms": args.tpot_slo_ms, "seed": args.seed,
            "window": {"start_s": args.start_s, "duration_s": args.duration_s, "limit": args.limit},
            "spread_arrivals": args.spread_arrivals, "max_context_tokens": args.max_context_tokens,
            "context_clipped": trace.context_clipped,
            "replicas": args.replicas, "router": args.router if args.replicas > 1 else None,
            "kv_capacity_tokens": args.kv_capacity_tokens, "noise_cv": args.noise_cv,
            "max_new_tokens": args.max_new_tokens}


GAP_TPOTS = (2, 3, 5)
"""`sim --token-gaps`: the share of requests whose longest gap between two tokens passes this many TPOT SLOs."""


def token_gap_figures(records) -> dict:
    """Gaps between consecutive tokens over a run's records (recorded token times): percentiles in ms, and per k in
    GAP_TPOTS the share of requests with at least two tokens whose longest gap passes k x its TPOT SLO."""
    timed = [r for r in records if r.token_times_s and len(r.token_times_s) > 1]
    if not timed:
        return {"gaps": 0}
    gaps = [tbt_s(r) for r in timed]
    ms = np.concatenate(gaps) * 1e3
    longest = np.array([g.max() for g in gaps])
    tpot = np.array([r.tpot_slo_s for r in timed])
    return {"gaps": int(ms.size), "p50_ms": float(np.percentile(ms, 50)), "p99_ms": float(np.percentile(ms, 99)),
            "p99_9_ms": float(np.percentile(ms, 99.9)), "max_ms": float(ms.max()),
            "requests_gap_over_tpot": {str(k): float(np.mean(longest > k * tpot)) for k in GAP_TPOTS}}


def cmd_sim(args) -> int:
    trace, cost, engine = _setup(args)
    if args.token_gaps:
        engine = dataclasses.replace(engine, record_token_times=True)
    run = _runner(args.command, "--policy", trace, args.policy, cost, engine, replicas=args.replicas,
                  router=args.router, load_poll_interval_s=args.load_poll_interval_s, stop_late=False,
                  iteration_time=device_time(args))
    with tqdm(total=1, desc=f"sim {args.policy} x{args.rate_scale}", file=sys.stderr, disable=args.no_progress):
        res = run(args.rate_scale)
    s = res.summary()
    gpus = 2 if args.policy.startswith("windserve") else args.replicas
    bound = stability_bound_scale(trace, cost, args.tpot_slo_ms / 1000.0, gpus)
    out = {**_header(args, trace), "policy": args.policy, "rate_scale": args.rate_scale, **s.to_dict(),
           "iterations": res.iterations, "sim_s": res.sim_s, "busy_s": res.busy_s, "batches": res.batches,
           "preemptions": res.preemptions, "demoted": sum(r.demoted for r in res.records),
           "bound_scale": bound}
    if args.token_gaps:
        out["token_gaps"] = token_gap_figures(res.records)
    if args.json:
        sys.stdout.write(orjson.dumps(out, option=orjson.OPT_INDENT_2 | orjson.OPT_SERIALIZE_NUMPY).decode() + "\n")
    else:
        for k, v in out.items():
            print(f"{k:>20}: {v}")
    return 0


def cmd_capacity(args) -> int:
    trace, cost, engine = _setup(args)
    specs = [s for s in args.policies.split(",") if s.strip()]
    if not specs:
        raise usage_error(args.command, "--policies", "no policy given")
    runners = {}
    device = device_time(args)
    for spec in specs:  # every spec checked before the first search starts
        reps = 1 if spec.startswith("windserve") else args.replicas
        runners[spec] = [_runner(args.command, "--policies", trace, spec, cost, engine, replicas=reps,
                                 router=args.router, load_poll_interval_s=args.load_poll_interval_s, stop_late=late,
                                 iteration_time=device)
                         for late in (True, False)]
    results, searches = {}, {}
    for spec in tqdm(specs, desc="capacity", file=sys.stderr, disable=args.no_progress):
        gpus = 2 if spec.startswith("windserve") else args.replicas
        run, full = runners[spec]
        res, search = find_capacity(run, trace, cost, args.ttft_slo_ms / 1000.0, args.tpot_slo_ms / 1000.0,
                                    gpus=gpus, rel_tol=args.rel_tol, full_run=full)
        results[spec], searches[spec] = res, search
    out = {**_header(args, trace), "criterion": {"tail": "P99 TTFT <= ttft_slo and P99 TPOT <= tpot_slo",
                                                 "attainment": ">= 90% of requests meet both SLOs"},
           "policies": {k: v.to_json() for k, v in results.items()}}
    if args.plots:
        from .plots import write_plots
        out["plots"] = write_plots(Path(args.plots), results, searches, prefix=args.plot_prefix)
    if args.json:
        sys.stdout.write(orjson.dumps(out, option=orjson.OPT_INDENT_2 | orjson.OPT_SERIALIZE_NUMPY).decode() + "\n")
    else:
        print(f"{'policy':>16} {'capacity':>9} {'cap_att':>8} {'p99_ttft_ms':>11} {'p99_tpot_ms':>11} {'bound_frac':>10}")
        for k, r in results.items():
            print(f"{k:>16} {r.capacity:>9.3f} {r.capacity_attainment:>8.3f} {r.p99_ttft_ms:>11.0f} "
                  f"{r.p99_tpot_ms:>11.1f} {r.bound_fraction:>10.2f}")
        for k, r in results.items():
            for label, lines in (("tail", r.why), ("attainment", r.why_attainment)):
                if lines:
                    print(f"{k}: no rate scale meets the {label} criterion:")
                    print("".join(f"  - {line}\n" for line in lines), end="")
    return 0


def add_parsers(subparsers) -> None:
    """Add the `sim` and `capacity` subcommands to an argparse subparsers object."""
    p = subparsers.add_parser("sim", help="simulate one policy on a trace at one rate scale")
    _common(p)
    p.add_argument("--policy", default="fair", help="policy spec, e.g. fair, sarathi-512, slai, windserve, fair@admission=demote; a "
                   "'+reject' suffix refuses hopeless arrivals as --fair-admission reject does (fair+reject), '+shed' also the "
                   "queued requests fair demotes, as --fair-admission shed (fair+shed)")
    p.add_argument("--rate-scale", type=float, default=1.0, help="arrival gaps divided by this")
    p.add_argument("--token-gaps", action="store_true",
                   help="record every token's time and report the gaps between consecutive tokens (percentiles, "
                        "and the share of requests whose longest gap passes 2, 3 and 5 TPOT SLOs)")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=cmd_sim)
    c = subparsers.add_parser("capacity", help="capacity (max rate scale meeting the SLOs) per policy")
    _common(c)
    c.add_argument("--policies", default="fair,sarathi-512,sarathi-2048,slai",
                   help="comma-separated policy specs (as --policy of `sim`, '+reject' and '+shed' suffixes included)")
    c.add_argument("--rel-tol", type=float, default=0.03, help="bisection stops when hi/lo <= 1 + this")
    c.add_argument("--plots", default=None, help="directory for goodput-vs-rate and TTFT/TPOT CDF PNGs")
    c.add_argument("--plot-prefix", default="", help="file-name prefix for the plots")
    c.add_argument("--no-progress", action="store_true")
    c.set_defaults(func=cmd_capacity)


def main(argv=None) -> int:
    """Standalone entry (`python -m sglang_fair.sim.cli sim ...`) until the package CLI registers add_parsers."""
    ap = argparse.ArgumentParser(prog="sglang-fair")
    add_parsers(ap.add_subparsers(dest="command", required=True))
    args = ap.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    raise SystemExit(main())
