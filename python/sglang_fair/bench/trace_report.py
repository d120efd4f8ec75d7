"""`sglang-fair trace-report PATH`: what a `--fair-trace` file says about the server's iterations.

Reads the JSON lines core/trace.py writes and prints (or, with `--json`, emits) per record kind:
- plans: how many, of which shape (prefill only, decode only, mixed, nothing), stock fallbacks, decode rows the plans
  deferred, demoted requests, the budget of plans with decodes running (how many were below the TPOT SLO: a decode
  behind its envelope, `recover_tpot`) and how many had nothing running, the adapter's overhead;
- forwards: measured times, the cost model's error (|predicted - measured| / measured), how often a forward ran
  past its plan's budget or past 110% of its plan's prediction, and the longest gap a decode row saw between two
  tokens against the TPOT SLO (in the server's clock: under an emulated device with dilation k, the SLO flags the
  bench passes are already k times the emulated GPU's);
- first tokens: one record per request (rid, the scheduler's receipt, prompt, max_new_tokens), so the TTFT the
  scheduler saw and which server of a cluster got which request;
- device (emulated): overruns by batch kind and the overlap credit; per kind, the mean prompt tokens and emulated GPU
  time of a forward and what 1000 prompt tokens cost in kinds that carry them (in the emulated GPU's own ms); the
  overruns these forwards would have had at other dilations, and the smallest dilation at which at most 2% overrun
  (`min_dilation`, projected from this host's real times; see `projected_overruns`).
Times are milliseconds on the server's clock (divide by the dilation for emulated GPU time; `start.dilation`).
"""

from __future__ import annotations

import argparse
import math
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import orjson

from .emulated import MAX_OVERRUN_FRACTION

OVER_PREDICTION = 1.10
"""A forward counts as slower than planned when it took more than this times its plan's predicted time."""


def read_trace(path: str | Path) -> dict[str, list[dict]]:
    """Records of the trace at `path` grouped by kind (file order kept). A torn last line (the writer was killed
    mid-write) is skipped; any other bad line raises ValueError naming its line number."""
    out: dict[str, list[dict]] = {}
    lines = Path(path).read_bytes().splitlines()
    for i, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            rec = orjson.loads(line)
        except orjson.JSONDecodeError:
            if i == len(lines):
                break
            raise ValueError(f"{path}: line {i} is not JSON") from None
        if not isinstance(rec, dict) or "kind" not in rec:
            raise ValueError(f"{path}: line {i} is not a trace record (no 'kind')")
        out.setdefault(rec["kind"], []).append(rec)
    return out


def _pct(values, qs=(50, 90, 99)) -> dict:
    a = np.asarray([v for v in values if v is not None], dtype=float)
    if not a.size:
        return {f"p{q}": None for q in qs} | {"max": None}
    return {f"p{q}": float(np.percentile(a, q)) for q in qs} | {"max": float(a.max())}


def plan_shape(p: dict) -> str:
    if p.get("stock"):
        return "stock"
    pre, dec = p.get("prefill_tokens", 0) > 0, p.get("decode", 0) > 0
    return "mixed" if pre and dec else "prefill-only" if pre else "decode-only" if dec else "nothing"


TIME_FIELD = {"plan": "t_s", "forward": "t_start_s", "device": "t_s", "first_token": "t_s"}
"""The scheduler-clock time of each record kind (a forward counts where it started)."""


def wall_offset_s(records: dict[str, list[dict]]) -> float:
    """wall time - scheduler time of a trace, from its `start` record (which reads both clocks together)."""
    start = (records.get("start") or [None])[0]
    if start is None:
        raise ValueError("the trace has no start record: its times cannot be placed on the wall clock")
    return start["wall_s"] - start["t_s"]


def in_window(records: dict[str, list[dict]], window_wall_s: tuple[float, float]) -> dict[str, list[dict]]:
    """The plan, forward and device records whose time falls within the wall-clock window (start, end), placed on
    the scheduler's clock by the `start` record (which pairs `wall_s` with `t_s`); other kinds kept as they are."""
    offset = wall_offset_s(records)
    lo, hi = (w - offset for w in window_wall_s)
    return {kind: [r for r in recs if lo <= r[TIME_FIELD[kind]] <= hi] if kind in TIME_FIELD else recs
            for kind, recs in records.items()}


def summarize(records: dict[str, list[dict]], window_wall_s: tuple[float, float] | None = None) -> dict:
    """The summary of a trace (`read_trace`'s records), or of its records within `window_wall_s` (wall-clock
    seconds, e.g. one benchmark probe's replay; `window` in the result)."""
    if window_wall_s is not None:
        records = in_window(records, window_wall_s)
    start = (records.get("start") or [{}])[0]
    plans = records.get("plan", [])
    forwards = records.get("forward", [])
    device = records.get("device", [])
    firsts = records.get("first_token", [])
    tpot_ms = start.get("tpot_slo_ms")
    out: dict = {"policy": start.get("policy"), "emulated_device": start.get("emulated_device"),
                 "dilation": start.get("dilation", 1.0), "tpot_slo_ms": tpot_ms,
                 "ttft_slo_ms": start.get("ttft_slo_ms"),
                 "truncated": bool(records.get("truncated")),
                 "window_wall_s": list(window_wall_s) if window_wall_s is not None else None}
    if plans:
        planned = [p for p in plans if not p.get("stock")]
        with_running = [p for p in planned if p.get("running", 0) > 0]  # where the budget protects decode rows
        out["plans"] = {
            "n": len(plans), "shapes": dict(Counter(plan_shape(p) for p in plans)),
            "with_deferred_rows": sum(1 for p in planned if p.get("deferred", 0) > 0),
            "deferred_rows": _pct([p.get("deferred", 0) for p in planned]),
            "with_demoted": sum(1 for p in planned if p.get("demoted", 0) > 0),
            "demoted": _pct([p.get("demoted", 0) for p in planned]),
            "running": _pct([p.get("running", 0) for p in planned]),
            "waiting": _pct([p.get("waiting", 0) for p in planned]),
            "overhead_ms": _pct([p.get("overhead_ms") for p in planned]),
            "budget_ms": _pct([p.get("budget_ms") for p in with_running]),
            "without_running": len(planned) - len(with_running),
            "budget_below_tpot": sum(1 for p in with_running if p.get("budget_ms", math.inf) < tpot_ms)
            if tpot_ms else None,
        }
    if forwards:
        by_seq = {p["seq"]: p for p in plans if not p.get("stock") and "seq" in p}
        meas = np.array([f["measured_ms"] for f in forwards], dtype=float)
        pred = np.array([f["predicted_ms"] for f in forwards], dtype=float)
        linked = [(f, by_seq[f["plan_seq"]]) for f in forwards if f.get("plan_seq") in by_seq]
        over_budget = [f for f, p in linked if p.get("budget_ms") is not None and f["measured_ms"] > p["budget_ms"]]
        slow = [(f, p) for f, p in linked if f["measured_ms"] > OVER_PREDICTION * p.get("predicted_ms", math.inf)]
        decoding = [f for f in forwards if f.get("n_decode", 0) > 0]
        gaps = [f.get("max_token_gap_ms", 0.0) for f in forwards]
        out["forwards"] = {
            "n": len(forwards), "with_decode_rows": len(decoding),
            "measured_ms": _pct(meas), "abs_rel_err": _pct(np.abs(pred - meas) / np.maximum(meas, 1e-9)),
            "under_predicted": float(np.mean(meas > OVER_PREDICTION * pred)),
            "linked_to_plan": len(linked),
            "over_plan_budget": len(over_budget) / len(linked) if linked else None,
            "over_plan_prediction": len(slow) / len(linked) if linked else None,
            "slow_by_shape": dict(Counter(plan_shape(p) for _, p in slow)),
            "max_token_gap_ms": _pct(gaps),
        }
        if tpot_ms:
            over = [f for f in decoding if f["measured_ms"] > tpot_ms]
            out["forwards"]["decode_forwards_over_tpot"] = len(over) / len(decoding) if decoding else None
            out["forwards"]["token_gaps_over_tpot"] = sum(1 for g in gaps if g > tpot_ms)
            out["forwards"]["token_gaps_over_2x_tpot"] = sum(1 for g in gaps if g > 2 * tpot_ms)
    if firsts:  # TTFT as the scheduler saw it: from its receipt of the request (not the client's send)
        out["requests"] = {"n": len(firsts), "ttft_ms": _pct([(r["t_s"] - r["recv_s"]) * 1000.0 for r in firsts]),
                           "prompt_tokens": int(sum(r["prompt_tokens"] for r in firsts))}
    if device:
        kinds = Counter(d["batch"] for d in device)
        over = Counter(d["batch"] for d in device if d.get("overrun"))
        need = dilation_needed(device, out["dilation"])
        out["device"] = {
            "n": len(device), "overruns": sum(over.values()), "overrun_fraction": sum(over.values()) / len(device),
            "by_kind": {k: {"forwards": n, "overruns": over.get(k, 0),
                            **_device_cost([d for d in device if d["batch"] == k], out["dilation"])}
                        for k, n in sorted(kinds.items())},
            "emulated_ms": _pct([d["emulated_ms"] for d in device]),
            "real_over_emulated": _pct([d["real_ms"] / d["emulated_ms"] for d in device if d["emulated_ms"] > 0]),
            "credit_ms_mean": float(np.mean([d.get("credit_ms", 0.0) for d in device])),
            "overrun_fraction_at_dilation": {f"{k:g}": projected_overruns(need, k) for k in PROJECTED_DILATIONS},
            "min_dilation": min_dilation(need),
        }
    return out


def _device_cost(recs: list[dict], dilation: float) -> dict:
    """Mean prompt tokens and emulated GPU ms (the server clock / the dilation) of one kind's forwards, and, where
    they carry prompt tokens, the emulated GPU ms per 1000 prompt tokens (decode rows included in the time)."""
    tokens = sum(d.get("prefill_tokens", 0) for d in recs)
    gpu_ms = sum(d["emulated_ms"] for d in recs) / dilation
    return {"prefill_tokens_mean": tokens / len(recs), "emulated_gpu_ms_mean": gpu_ms / len(recs),
            "emulated_gpu_ms_per_1000_prompt_tokens": 1000.0 * gpu_ms / tokens if tokens else None}


PROJECTED_DILATIONS = (4, 6, 8, 10, 12, 16)
"""The dilations `summarize` projects a trace's overruns to."""


def dilation_needed(device: list[dict], dilation: float) -> np.ndarray:
    """Per emulated forward, the dilation below which it overruns: its real host time plus the overlap credit it got,
    over its emulated GPU time (pad.Padder.account: an overrun is real > emulated - credit, and emulated is the GPU
    time x the dilation). A projection: it assumes the same batches, real times and credits at another dilation. The
    bench scales arrivals with the dilation, but real times grow as k shrinks (the same work, denser on the clock,
    on shared cores), so projected to a smaller k it is optimistic and to a larger k conservative (measured:
    docs/results.md, "Choosing the dilation from a trace")."""
    gpu = np.array([d["emulated_ms"] for d in device], dtype=float) / dilation
    host = np.array([d["real_ms"] + d.get("credit_ms", 0.0) for d in device], dtype=float)
    return host / np.maximum(gpu, 1e-12)


def projected_overruns(need: np.ndarray, k: float) -> float:
    """The fraction of forwards that would overrun at dilation k (`need`: `dilation_needed` of their records)."""
    return float(np.mean(need > k)) if need.size else 0.0


def min_dilation(need: np.ndarray, limit: float = MAX_OVERRUN_FRACTION) -> int | None:
    """The smallest whole dilation at which at most `limit` of the forwards would overrun (`need`: `dilation_needed`
    of their records; a bench probe with more is invalid); None without forwards."""
    if not need.size:
        return None
    need = np.sort(need)
    allowed = int(math.floor(limit * len(need) + 1e-9))  # this many may still overrun
    return max(1, math.ceil(need[len(need) - 1 - allowed])) if allowed < len(need) else 1


def _fmt(d: dict | None, unit: str = "") -> str:
    if not d or d.get("p50") is None:
        return "-"
    return " / ".join(f"{d[k]:.4g}" for k in ("p50", "p90", "p99", "max") if k in d) + (f" {unit}" if unit else "")


def render(s: dict) -> str:
    dev = f", EMULATED {s['emulated_device']} (server clock = {s['dilation']:g} x the emulated GPU's)" \
        if s.get("emulated_device") else ""
    lines = [f"policy {s['policy']}{dev}; SLOs TTFT {s['ttft_slo_ms']} ms, TPOT {s['tpot_slo_ms']} ms (server clock)"
             + ("; TRACE TRUNCATED" if s["truncated"] else "")]
    if "plans" in s:
        p = s["plans"]
        lines += [f"plans: {p['n']} ({', '.join(f'{k} {v}' for k, v in sorted(p['shapes'].items()))})",
                  f"  deferred decode rows (p50/p90/p99/max): {_fmt(p['deferred_rows'])}; plans deferring: "
                  f"{p['with_deferred_rows']}",
                  f"  demoted: {_fmt(p['demoted'])}; plans with demoted requests: {p['with_demoted']}",
                  f"  running / waiting seen: {_fmt(p['running'])} / {_fmt(p['waiting'])}",
                  f"  budget with decodes running: {_fmt(p['budget_ms'], 'ms')}"
                  + ("" if p.get("budget_below_tpot") is None else
                     f"; below the TPOT SLO (a decode behind its envelope): {p['budget_below_tpot']}")
                  + f"; plans with nothing running (budget at its cap): {p.get('without_running', 0)}",
                  f"  adapter overhead: {_fmt(p['overhead_ms'], 'ms')}"]
    if "forwards" in s:
        f = s["forwards"]
        lines += [f"forwards: {f['n']} ({f['with_decode_rows']} with decode rows); measured {_fmt(f['measured_ms'], 'ms')}",
                  f"  cost model |err| / measured: {_fmt(f['abs_rel_err'])}; measured > {OVER_PREDICTION:g} x predicted: "
                  f"{f['under_predicted']:.1%}"]
        if f["linked_to_plan"]:
            lines.append(f"  of {f['linked_to_plan']} planned forwards: past the plan's budget {f['over_plan_budget']:.1%}, "
                         f"past {OVER_PREDICTION:g} x its prediction {f['over_plan_prediction']:.1%} "
                         f"({', '.join(f'{k} {v}' for k, v in sorted(f['slow_by_shape'].items())) or 'none'})")
        lines.append(f"  longest token gap per forward: {_fmt(f['max_token_gap_ms'], 'ms')}")
        if "decode_forwards_over_tpot" in f and f["decode_forwards_over_tpot"] is not None:
            lines.append(f"  forwards with decode rows longer than the TPOT SLO: {f['decode_forwards_over_tpot']:.1%}; "
                         f"forwards whose longest token gap passed it: {f['token_gaps_over_tpot']} "
                         f"(2x: {f['token_gaps_over_2x_tpot']})")
    if "requests" in s:
        r = s["requests"]
        lines.append(f"first tokens: {r['n']} ({r['prompt_tokens']} prompt tokens); TTFT from the scheduler's receipt "
                     f"{_fmt(r['ttft_ms'], 'ms')}")
    if "device" in s:
        d = s["device"]
        kinds = ", ".join(f"{k} {v['overruns']}/{v['forwards']}" for k, v in d["by_kind"].items())
        lines += [f"emulated device forwards: {d['n']}, overruns {d['overruns']} ({d['overrun_fraction']:.2%}; {kinds})",
                  f"  emulated {_fmt(d['emulated_ms'], 'ms')}; real / emulated {_fmt(d['real_over_emulated'])}; "
                  f"overlap credit {d['credit_ms_mean']:.2f} ms mean",
                  "  projected to other dilations (this host's real times, the same batches): "
                  + ", ".join(f"k {k} {v:.2%}" for k, v in d["overrun_fraction_at_dilation"].items())
                  + f"; smallest k with at most {MAX_OVERRUN_FRACTION:.0%} overruns: {d['min_dilation']}"]
        lines += [f"  {k}: {v['prefill_tokens_mean']:.0f} prompt tokens, {v['emulated_gpu_ms_mean']:.1f} emulated GPU ms "
                  f"mean; {v['emulated_gpu_ms_per_1000_prompt_tokens']:.1f} emulated GPU ms per 1000 prompt tokens"
                  for k, v in d["by_kind"].items() if v["emulated_gpu_ms_per_1000_prompt_tokens"] is not None]
    return "\n".join(lines)


def run(args) -> int:
    try:
        s = summarize(read_trace(args.path))
    except (OSError, ValueError) as exc:
        print(f"sglang-fair trace-report: {exc}", file=sys.stderr)
        return 2
    if args.json:
        sys.stdout.write(orjson.dumps(s, option=orjson.OPT_INDENT_2).decode() + "\n")
    else:
        print(render(s))
    return 0


def add_parser(subparsers) -> None:
    p = subparsers.add_parser("trace-report", help="summarise a --fair-trace file (plans, forwards, emulated device)",
                              description=__doc__.split("\n\n")[0])
    p.add_argument("path", help="the trace file written by `sglang-fair serve --fair-trace PATH`")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    p.set_defaults(func=run)
