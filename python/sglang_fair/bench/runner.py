"""Run the live benchmark: one server per policy (then a two-server cluster behind sglang-router), capacity search
with bench_serving probes, everything recorded in one results dict (see report.py for the files it becomes).

Order matters only for the cost model: `fair` runs first with `--fair-save-cost-model`, and the other plugin
policies start from that live fit (`--fair-cost-model`), as does the simulator replay (fidelity.py).
"""

from __future__ import annotations

import contextlib
import math
import platform
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Iterator

import numpy as np

from ..live.server import cpu_server_args, requests_served, server_slots, sglang_router, sglang_server
from ..core.metrics import summarize
from .client import Probe, run_probe
from .demotions import mark_demoted
from . import emulated, trace_report
from .emulated import (EMULATED_POLICIES, EMULATED_STOCK, EMULATED_TPOT_SLO_MS, EMULATED_TTFT_SLO_MS,
                       MAX_OVERRUN_FRACTION, cluster_workload, full_workloads, window_workload)
from .policies import STOCK, policy_args
from .search import live_capacities
from .workload import Workload

SERVE = [sys.executable, "-m", "sglang_fair.cli", "serve"]
NO_CACHE = ("--disable-radix-cache",)
"""Every probe replays the same prompts (and the warm-up their head): with the radix cache on, every probe after the
first reuses the cached prompts, prefill nearly vanishes (seen: 1-token extends after 1257 cached tokens) and the
online cost fit learns 13 ms per prefill token from those extends. So the benchmark runs without it."""


CODE_WINDOW_S = 1073.8
"""Azure code window start: 24 requests in 9.7 s (prompts x0.1: 491 tokens/s at scale 1), inter-arrival CV 1.7 with
no gap over 2.8 s - the burstiest window of the trace whose longest gap is under a third of its length. (Two earlier
choices made probes that mostly waited: the first 20 requests hold a 28 s gap, and the window at 585.2 s is one
burst of 23 requests in 0.9 s after a 16 s gap, which no policy served at any rate.)"""


@dataclass
class BenchConfig:
    mode: str
    workloads: list[Workload]
    policies: list[str]
    ttft_slo_ms: float = 2000.0
    tpot_slo_ms: float = 200.0
    start_scale: float = 1.0
    start_scales: dict = field(default_factory=dict)
    """Per-trace first probe (trace name -> rate scale); others start at start_scale."""
    max_probes: int = 4
    rel_tol: float = 0.15
    step: float = 2.0
    """Bracketing factor of the capacity search: the first probe is multiplied (divided) by it until one fails
    (passes), then the search bisects geometrically (search.budgeted_capacity)."""
    probe_drain_s: float = 45.0
    """A probe is cut (aborted, failing) this long after its last scheduled arrival."""
    warmup_requests: int = 8
    kv_tokens: int = 32768
    cluster: list[tuple[str, str]] = field(default_factory=list)
    """(server policy, router policy) pairs for the two-server runs (on the first workload)."""
    cluster_max_probes: int = 3
    cluster_workload: Workload | None = None
    """The two-server runs' window (None: the first workload). On the emulated device it holds twice the quick
    window's requests, so each server sees about one quick window's load at the same rate scale."""
    seed: int = 0
    emulate: str | None = None
    """`PRESET[:DILATION]`: every server on the emulated accelerator (emulated.py); None: the CPU as it is."""
    emulate_overlap: bool = True
    """On the emulated device: emulate SGLang's GPU overlap loop (serve --emulate-overlap, emulate/pad.py)."""
    trace: bool = False
    """Run each single server with `--fair-trace OUT/trace-NAME.jsonl` (plugin policies; stock too on an emulated
    device) and add the trace's summary to its results and to each probe (`sglang-fair trace-report`)."""

    @property
    def dilation(self) -> float:
        if not self.emulate:
            return 1.0
        from ..emulate.spec import parse_device_spec
        return parse_device_spec(self.emulate).dilation

    @property
    def stock_names(self) -> tuple[str, ...]:
        return EMULATED_STOCK if self.emulate else STOCK

    def to_json(self) -> dict:
        d = asdict(self)
        d["workloads"] = [w.to_json() for w in self.workloads]
        return d


def quick_config() -> BenchConfig:
    return BenchConfig(mode="quick", workloads=[Workload("azure-code", 16, start_s=CODE_WINDOW_S)],
                       policies=["fair", "stock"], start_scale=0.5, max_probes=3, rel_tol=0.3, probe_drain_s=15.0,
                       warmup_requests=4)


PROBE_DRAIN_S = 105.0
"""A probe is cut this long (emulated GPU seconds, x dilation on the clock) after its last arrival: the longest
output of these windows (1006 tokens) at the TPOT SLO, plus the TTFT SLO - what a request that meets both needs."""


def emulated_config(spec_text: str, *, full: bool = False, start_request: int | None = None,
                    cluster: list[tuple[str, str]] | None = None, trace: str = "azure-conv"):
    """The benchmark's configuration on the emulated device `spec_text` (quick: stock vs fair on `trace`'s window,
    emulated.WINDOWS: Azure conv from request 1000, or from `start_request`). `cluster`: (server policy, router
    policy) pairs of two-server runs behind sglang-router, on twice Azure conv's quick window from the same start
    (emulated.cluster_workload)."""
    workloads = full_workloads() if full else [window_workload(trace, start_request)]
    max_probes = 5 if full else 4
    return BenchConfig(mode="full" if full else "quick", workloads=workloads,
                       policies=list(EMULATED_POLICIES) if full else ["stock", "fair"],
                       ttft_slo_ms=EMULATED_TTFT_SLO_MS, tpot_slo_ms=EMULATED_TPOT_SLO_MS, start_scale=1.0,
                       max_probes=max_probes, rel_tol=0.2, probe_drain_s=PROBE_DRAIN_S, warmup_requests=8,
                       emulate=spec_text, cluster=list(cluster or []), cluster_max_probes=max_probes,
                       cluster_workload=cluster_workload(start_request) if cluster else None)


def full_config() -> BenchConfig:
    return BenchConfig(mode="full",
                       workloads=[Workload("azure-code", 24, start_s=CODE_WINDOW_S),
                                  Workload("azure-conv", 40, prompt_scale=0.2, output_scale=0.25)],
                       start_scale=0.5, start_scales={"azure-conv": 1.0}, max_probes=3, rel_tol=0.3,
                       cluster_max_probes=2,
                       policies=["fair", "stock", "stock-mixed-512", "slai", "sarathi-512"],
                       cluster=[("stock", "cache_aware"), ("stock", "round_robin"), ("fair", "power_of_two")])


@dataclass
class Bench:
    config: BenchConfig
    out_dir: Path
    model: str
    log: object = None
    traces: dict = field(default_factory=dict)
    """workload key -> (Workload, Trace, mooncake path)."""
    warmup: tuple = ()
    """(Workload, Trace, path) of the unmeasured warm-up replay: the head of the first workload."""
    probes: dict = field(default_factory=dict)
    """(label, workload key) -> {scale: Probe}; kept for the simulator replay."""
    overrun_hint_given: bool = False

    @property
    def cost_model_path(self) -> Path:
        return self.out_dir / "live-cost-model.json"

    @property
    def cluster_key(self) -> str:
        """The key of the two-server runs' window in `traces`."""
        c = self.config
        if c.cluster_workload is None:
            return c.workloads[0].trace
        return f"{c.cluster_workload.trace}-{c.cluster_workload.n_requests}"

    @property
    def single_keys(self) -> list[str]:
        """The single-server runs' windows (`traces` may also hold the cluster's)."""
        return [w.trace for w in self.config.workloads]

    def say(self, msg: str) -> None:
        print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)

    def prepare(self) -> None:
        (self.out_dir / "traces").mkdir(parents=True, exist_ok=True)
        self.cost_model_path.unlink(missing_ok=True)  # a fit left by an earlier run in this folder must not leak in
        for w in self.config.workloads:
            key = w.trace
            path = self.out_dir / "traces" / f"{key}.jsonl"
            self.traces[key] = (w, w.write(path), path)
        w = self.config.workloads[0]
        cw = self.config.cluster_workload
        if cw is not None:
            path = self.out_dir / "traces" / f"{self.cluster_key}.jsonl"
            self.traces[self.cluster_key] = (cw, cw.write(path), path)
        head = Workload(**{**w.to_json(), "n_requests": min(self.config.warmup_requests, w.n_requests)})
        path = self.out_dir / "traces" / f"warmup-{head.n_requests}.jsonl"
        self.warmup = (head, head.write(path), path)

    def _probe(self, url: str, key: str | tuple, scale: float, abort_urls=None, cap_s=None) -> Probe:
        """`key`: a workload key of `traces`, or a (workload, trace, path) entry itself. On an emulated device
        with dilation k the arrivals run k times slower and the SLOs are k times longer (Probe.scale = scale / k:
        its records are on that dilated clock)."""
        _, trace, path = self.traces[key] if isinstance(key, str) else key
        c = self.config
        k = c.dilation
        return run_probe(url, self.model, trace, path, scale / k, work_dir=self.out_dir,
                         ttft_slo_s=c.ttft_slo_ms * k / 1e3, tpot_slo_s=c.tpot_slo_ms * k / 1e3,
                         cap_s=cap_s or (trace.duration_s / scale + c.probe_drain_s) * k, abort_urls=abort_urls,
                         seed=c.seed, log=self.log)

    def _warm_up(self, url: str, abort_urls=None) -> None:
        """A first pass over new shapes runs several times slower on the CPU: replay the head of the first workload
        fast once, unmeasured (for `fair` it is also where the online cost fit starts learning)."""
        self._probe(url, self.warmup, 4.0, abort_urls=abort_urls, cap_s=90.0)

    def _search(self, label: str, url: str, key: str, start: float, max_probes: int, abort_urls=None,
                servers=()) -> dict:
        """Capacity of one configuration; on an emulated device a probe whose forwards overran more than
        emulated.MAX_OVERRUN_FRACTION is invalid (recorded, never a pass)."""
        c = self.config
        k = c.dilation
        kept = self.probes.setdefault((label, key), {})
        summaries, by_kind = {}, {}

        split, demoted = {}, {}

        def evaluate(scale: float):
            t0 = time.monotonic()
            before = [emulated.read_counters(s) for s in servers] if c.emulate else []
            dem0 = [server_demotions(s) for s in servers]
            served = [requests_served(s.url) for s in servers] if len(servers) > 1 else []
            p = self._probe(url, key, scale, abort_urls=abort_urls)
            if served:  # behind a router: how it split this probe's requests
                split[scale] = [None if a is None or b is None else a - b
                                for a, b in zip([requests_served(s.url) for s in servers], served)]
            kept[scale] = p
            dem1 = [server_demotions(s) for s in servers]
            counts = [d[0] for d in dem0 + dem1]
            m = mark_demoted(p.records, p.input_lens, p.started_wall_s, [e for _, recent in dem1 for e in recent])
            p.records = m.records  # demoted requests count as the simulator counts them (core/metrics.py)
            demoted[scale] = {"demoted": (sum(b[0] - a[0] for a, b in zip(dem0, dem1))
                                          if servers and None not in counts else None),
                              "demoted_matched": m.demoted, "demoted_unmatched": m.unmatched}
            s = summaries[scale] = summarize(p.records)
            if c.emulate:
                by_kind[scale] = emulated.counter_delta(before, [emulated.read_counters(x) for x in servers])
            overruns = emulated.overrun_fraction(by_kind[scale]) if scale in by_kind else None
            bad = overruns is not None and overruns > MAX_OVERRUN_FRACTION
            self.say(f"{label:>16} {key} x{scale:<7.4g} p99 TTFT {s.p99_ttft_s * 1e3 / k:8.0f} ms  p99 TPOT "
                     f"{s.p99_tpot_s * 1e3 / k:6.0f} ms  attainment {s.attainment:4.2f}"
                     f"{f'  overruns {overruns:.1%}' if overruns is not None else ''}{'  INVALID' if bad else ''}"
                     f"{'  ABORTED' if p.aborted else ''}  ({time.monotonic() - t0:.0f} s)")
            if bad and not self.overrun_hint_given:
                self.overrun_hint_given = True
                self.say(emulated.overrun_hint(by_kind[scale], c.emulate))
            return None if bad else s

        res = live_capacities(evaluate, c.ttft_slo_ms * k / 1e3, c.tpot_slo_ms * k / 1e3, start,
                              max_probes=max_probes, rel_tol=c.rel_tol, step=c.step)
        w, trace, _ = self.traces[key]
        res["capacity_rps"] = res["capacity"] * trace.rate_rps
        res["probes"] = {f"{x:g}": {**_probe_json(kept[x], summaries[x], k, by_kind.get(x)), **demoted[x],
                                    **({"requests_per_server": split[x]} if x in split else {}),
                                    **({"requests": request_details(kept[x])} if c.trace else {})}
                         for x in res["probes"]}
        return res

    def _emulated_policy_args(self, name: str) -> list[str]:
        """`name`'s flags on the emulated device, with the SLOs on its dilated clock."""
        c = self.config
        k = c.dilation
        return emulated.policy_args(name, c.emulate, ttft_slo_ms=c.ttft_slo_ms * k, tpot_slo_ms=c.tpot_slo_ms * k,
                                    overlap=c.emulate_overlap)

    def server_args(self, name: str) -> list[str]:
        c = self.config
        if c.emulate:  # each plugin policy starts from the device preset's prior (serve) and learns online
            args = self._emulated_policy_args(name)
            if name == "fair":
                args += ["--fair-save-cost-model", str(self.cost_model_path)]
            return [*args, *self._trace_args(name), *NO_CACHE, *cpu_server_args(None)]  # KV pool: the emulated GPU's
        first_plugin = name not in STOCK and not self.cost_model_path.exists()
        args = policy_args(name, ttft_slo_ms=c.ttft_slo_ms, tpot_slo_ms=c.tpot_slo_ms,
                           cost_model=None if first_plugin or name in STOCK else str(self.cost_model_path),
                           save_cost_model=str(self.cost_model_path) if first_plugin else None)
        return args + [*self._trace_args(name), *NO_CACHE, *cpu_server_args(c.kv_tokens, float32=True)]

    def trace_path(self, name: str) -> Path | None:
        """Where `name`'s single server writes its `--fair-trace` (None: not traced; stock SGLang is traced only on
        an emulated device, where its forwards are the device's)."""
        c = self.config
        if not c.trace or (name in c.stock_names and not c.emulate):
            return None
        return (self.out_dir / f"trace-{name}.jsonl").resolve()

    def _trace_args(self, name: str) -> list[str]:
        path = self.trace_path(name)
        return ["--fair-trace", str(path)] if path is not None else []

    def run_single(self, name: str, extra_scales: dict | None = None) -> dict:
        """Capacity of `name` on every workload; `extra_scales` (workload -> scale): one more probe there when
        the search did not run it (fair at stock's capacity)."""
        c = self.config
        args = self.server_args(name)
        self.say(f"starting {name}: sglang-fair serve {' '.join(args)}")
        out = {"server_args": args}
        with sglang_server(self.model, args, command=SERVE, startup_timeout_s=600) as srv:
            self._warm_up(srv.url)
            for key in self.single_keys:
                out[key] = self._search(name, srv.url, key, c.start_scales.get(key, c.start_scale), c.max_probes,
                                        servers=[srv])
                x = (extra_scales or {}).get(key)
                if x and f"{x:g}" not in out[key]["probes"]:
                    extra = self._search(name, srv.url, key, x, 1, servers=[srv])
                    out[key]["probes"].update(extra["probes"])
            if name not in c.stock_names:
                out["status"] = _status(srv)
        path = self.trace_path(name)
        if path is not None and path.exists():  # the server has stopped: its trace is complete but for ~0.25 s
            add_trace_summaries(out, trace_report.read_trace(path), self.single_keys)
        return out

    def cluster_args(self, server_policy: str, cost_model: str | None = None) -> list[str]:
        """Server flags of the two-server runs; plugin policies start from `cost_model` (default: the live fit; on
        the emulated device: the device preset's prior, learning online, as a single server)."""
        c = self.config
        if c.emulate:
            return [*self._emulated_policy_args(server_policy), "--enable-metrics", *NO_CACHE, *cpu_server_args(None)]
        if server_policy not in STOCK and cost_model is None:
            cost_model = str(self.cost_model_path)
        args = policy_args(server_policy, ttft_slo_ms=c.ttft_slo_ms, tpot_slo_ms=c.tpot_slo_ms,
                           cost_model=None if server_policy in STOCK else cost_model)
        return args + ["--enable-metrics", *NO_CACHE, *cpu_server_args(c.kv_tokens, float32=True)]

    @contextlib.contextmanager
    def cluster(self, args: list[list[str]], router_policy: str) -> Iterator[tuple]:
        """Two servers (flags `args[0]`, `args[1]`) behind sglang-router, warmed up: yields (router, [a, b])."""
        # each server pinned to its own core with one torch thread: two schedulers with two OpenMP threads each on
        # two cores slow each other down by an order of magnitude (docs/reliability.md)
        cmds = [["taskset", "-c", str(i % 2), *SERVE] for i in range(2)]
        env = {"OMP_NUM_THREADS": "1"}
        with server_slots(2), \
                sglang_server(self.model, args[0], command=cmds[0], env=env, startup_timeout_s=600) as a, \
                sglang_server(self.model, args[1], command=cmds[1], env=env, startup_timeout_s=600) as b, \
                sglang_router([a.url, b.url], router_policy, load_poll_s=self.router_poll_s) as r:
            self._warm_up(r.url, abort_urls=[a.url, b.url])
            yield r, [a, b]

    @property
    def router_poll_s(self) -> int:
        """How often sglang-router polls `/get_load` (power_of_two): every second of the device's time, so every
        DILATION seconds on an emulated device's clock."""
        return max(1, round(self.config.dilation))

    def cluster_trace_paths(self, server_policy: str, router_policy: str) -> list[Path | None]:
        """Where each server of a two-server run writes its `--fair-trace` (`bench --trace`; as `trace_path`)."""
        if self.trace_path(server_policy) is None:
            return [None, None]
        return [(self.out_dir / f"trace-2x{server_policy}-{router_policy}-{i}.jsonl").resolve() for i in range(2)]

    def run_cluster(self, server_policy: str, router_policy: str, start: float) -> dict:
        c = self.config
        key = self.cluster_key
        args = self.cluster_args(server_policy)
        paths = self.cluster_trace_paths(server_policy, router_policy)
        label = f"2x{server_policy}/{router_policy}"
        self.say(f"starting {label}")
        per_server = [[*args, *(["--fair-trace", str(pt)] if pt else [])] for pt in paths]
        with self.cluster(per_server, router_policy) as (r, servers):
            urls = [s.url for s in servers]
            res = self._search(label, r.url, key, start, c.cluster_max_probes, abort_urls=urls, servers=servers)
            res["requests_per_worker"] = [requests_served(u) for u in urls]
            if server_policy not in c.stock_names:
                res["status"] = [_status(s) for s in servers]
        res.update(server_policy=server_policy, router_policy=router_policy, server_args=args, workload=key,
                   router_poll_s=self.router_poll_s, pinning="taskset -c 0 / -c 1, OMP_NUM_THREADS=1 per server")
        if all(pt is not None and pt.exists() for pt in paths):  # the servers have stopped: their traces are complete
            add_server_trace_summaries(res, [trace_report.read_trace(pt) for pt in paths])
        return res


def add_server_trace_summaries(res: dict, records: list[dict]) -> None:
    """A two-server run: `res["trace_summary"]`, one summary per server's trace, and in each probe of `res["probes"]`
    `trace`, per server the summary of its records within that probe's replay."""
    res["trace_summary"] = [trace_report.summarize(r) for r in records]
    for probe in res.get("probes", {}).values():
        window = _replay_window(probe)
        if window:
            probe["trace"] = [trace_report.summarize(r, window_wall_s=window) for r in records]


def add_trace_summaries(out: dict, records: dict, keys: list[str]) -> None:
    """`out["trace_summary"]`: the whole trace's summary; each probe of `out[key]["probes"]` gets `trace`, the summary
    of the records within its replay (`started_wall_s` .. + `wall_s`)."""
    out["trace_summary"] = trace_report.summarize(records)
    for key in keys:
        for probe in (out.get(key) or {}).get("probes", {}).values():
            window = _replay_window(probe)
            if window:
                probe["trace"] = trace_report.summarize(records, window_wall_s=window)


def _replay_window(probe: dict) -> tuple[float, float] | None:
    """A probe's replay in wall-clock seconds (`started_wall_s` .. + `wall_s`); None when it has no start."""
    start = probe.get("started_wall_s")
    return (start, start + probe["wall_s"]) if start else None


def request_details(p: Probe) -> dict:
    """Per request of a probe, in trace order (`bench --trace`): the prompt bench_serving sent (tokens), when it was
    due (s after the replay began) and its TTFT as the client measured it (ms, null when it got no token); on the
    server's clock (k times the emulated GPU's); which requests the servers demoted (indices). With the servers'
    `first_token` trace records this places each request: which server, when its scheduler received it, the TTFT the
    scheduler saw."""
    return {"input_lens": list(p.input_lens),
            "due_s": [round(r.arrival_s, 6) for r in p.records],
            "ttft_ms": [None if r.first_token_s is None else round((r.first_token_s - r.arrival_s) * 1e3, 3)
                        for r in p.records],
            "demoted": [i for i, r in enumerate(p.records) if r.demoted]}


def _probe_json(p: Probe, s, dilation: float = 1.0, by_kind: dict | None = None) -> dict:
    d = {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in s.to_dict().items()}
    d.update(wall_s=p.wall_s, started_wall_s=p.started_wall_s, aborted=p.aborted, bench_serving=p.bench,
             input_tokens_mean=float(np.mean(p.input_lens)) if p.input_lens else None)
    if by_kind is not None:  # an emulated device: overruns, and percentiles in the emulated GPU's own time
        overruns = emulated.overrun_fraction(by_kind)
        d.update(overrun_fraction=overruns, invalid=overruns > MAX_OVERRUN_FRACTION, forwards_overruns_by_kind=by_kind,
                 emulated_gpu=emulated.in_gpu_time(d, dilation))
    return d


def server_demotions(srv) -> tuple[int | None, list[dict]]:
    """A server's `demotions_total` so far (the plugin's status: times a waiting request entered the demoted state;
    None when it cannot be read) and its latest demotions (`demoted_recent`: prompt length and arrival wall time).
    A probe's `demoted` is the count's change over the probe, summed over the servers; bench_serving cannot see a
    demotion, so the probe's records are marked from the lists (bench/demotions.py)."""
    rank = _rank(srv)  # {"error": ...} when the status cannot be read
    n = rank.get("demotions_total")
    return (n if isinstance(n, int) else None), list(rank.get("demoted_recent") or [])


def _rank(srv) -> dict:
    try:
        return srv.get("/sglang_fair/status", timeout=10).json()["ranks"][0]
    except Exception as exc:  # report, do not fail the benchmark over a status read
        return {"error": str(exc)}


def _status(srv) -> dict:
    rank = _rank(srv)
    if "error" in rank:
        return rank
    keys = ("planned_iterations", "mixed_forwards", "deferred_total", "demotions_total", "cost_rel_err_ewma",
            "cost_model", "stock_iterations", "faults", "overhead_ms_mean", "overhead_ms_max", "emulated_device")
    return {k: rank.get(k) for k in keys}


def machine() -> dict:
    import os
    cpu = ""
    try:
        cpu = next((ln.split(":", 1)[1].strip() for ln in open("/proc/cpuinfo") if ln.startswith("model name")), "")
    except OSError:
        pass
    return {"cpu": cpu, "cores": os.cpu_count(), "arch": platform.machine(), "python": platform.python_version(),
            "python_loop_1e7_s": host_loop_s()}


def host_loop_s(n: int = 10**7) -> float:
    """Seconds this host's Python takes for `for i in range(n): s += i` run as a script's top level (global variables,
    as `python -c` runs it; inside a function the same loop is about 2.5x faster): one core's speed, which sets the
    dilation an emulated run needs (instances of the same 2-core VM differ about 2x: 0.88-1.76 s)."""
    code = compile("s = 0\nfor i in range(n):\n    s += i\n", "<host-loop>", "exec")
    t0 = time.perf_counter()
    exec(code, {"n": n})  # noqa: S102  (a fixed loop, no input)
    return time.perf_counter() - t0
