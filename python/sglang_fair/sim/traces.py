"""Request traces: arrival times plus prompt/output lengths, loaded from the public trace files.

Formats:
- Azure LLM inference 2023 CSV (`TIMESTAMP,ContextTokens,GeneratedTokens`): wall-clock timestamps, re-based to seconds
  from the first request.
- ShareGPT length CSV (`num_prefill_tokens,num_decode_tokens,...`): no timestamps; arrivals are a seeded Poisson process
  at `poisson_rate_rps` (default 1 req/s, so a rate scale of X means X req/s).
- bench_serving's mooncake JSONL (`{"timestamp": ms, "input_length": n, "output_length": m, ...}` per line).

Rate scaling divides every inter-arrival gap by the scale (arrivals start at 0, so it divides the arrival times).
Malformed files raise ValueError naming the file and the line.
"""

from __future__ import annotations

import csv
import gzip
import os
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import orjson

from ..data import SHARED_ENV, TRACE_FILES, open_text, plain_name, trace_path



def resolve_trace_path(name_or_path: str | os.PathLike, shared: str | os.PathLike | None = None) -> Path:
    """A trace name (`azure-code`, `azure-conv`, `sharegpt`: the shipped copy, or `<shared>/traces/` with an
    override) or a file path (plain or `.gz`) -> an existing path."""
    key = str(name_or_path)
    path = trace_path(key, shared) if key in TRACE_FILES else Path(key)
    if not path.is_file():
        hint = f" (unset {SHARED_ENV} to use the shipped copy)" if key in TRACE_FILES else ""
        raise FileNotFoundError(f"trace {key!r}: no such file {path}{hint}")
    return path


@dataclass(frozen=True, eq=False)
class Trace:
    """Arrival times (s, ascending, first at 0) and prompt/output token counts of each request."""

    name: str
    arrival_s: np.ndarray
    prompt_tokens: np.ndarray
    output_tokens: np.ndarray
    context_clipped: int = 0
    """How many requests `clip_context` shortened (the commands report it)."""

    def __post_init__(self) -> None:
        n = len(self.arrival_s)
        if len(self.prompt_tokens) != n or len(self.output_tokens) != n:
            raise ValueError("trace arrays must have equal lengths")
        if n and (np.any(np.diff(self.arrival_s) < 0) or not np.all(np.isfinite(self.arrival_s))):
            raise ValueError("trace arrival times must be finite and non-decreasing")
        if n and (self.prompt_tokens.min() < 1 or self.output_tokens.min() < 1):
            raise ValueError("trace prompt and output lengths must be >= 1")

    def __len__(self) -> int:
        return len(self.arrival_s)

    @property
    def duration_s(self) -> float:
        return float(self.arrival_s[-1] - self.arrival_s[0]) if len(self) else 0.0

    @property
    def rate_rps(self) -> float:
        """Mean arrival rate (requests per second over the trace's span)."""
        return (len(self) - 1) / self.duration_s if self.duration_s > 0 else float("inf")

    def _with(self, idx, arrival=None, name=None) -> "Trace":
        arr = self.arrival_s[idx] if arrival is None else arrival
        if len(arr):
            arr = arr - arr[0]
        return replace(self, name=name or self.name, arrival_s=np.asarray(arr, dtype=np.float64),
                       prompt_tokens=self.prompt_tokens[idx].copy(), output_tokens=self.output_tokens[idx].copy())

    def scaled(self, rate_scale: float) -> "Trace":
        """Same requests with every inter-arrival gap divided by `rate_scale`."""
        if not rate_scale > 0:
            raise ValueError(f"rate_scale must be > 0, got {rate_scale!r}")
        return replace(self, arrival_s=self.arrival_s / rate_scale)

    def head(self, n: int) -> "Trace":
        return self._with(slice(0, max(0, int(n))))

    def window(self, start_s: float = 0.0, duration_s: float | None = None) -> "Trace":
        """Requests arriving in [start_s, start_s + duration_s), re-based to start at 0."""
        end = np.inf if duration_s is None else start_s + duration_s
        mask = (self.arrival_s >= start_s) & (self.arrival_s < end)
        return self._with(mask)

    def clipped(self, max_prompt_tokens: int | None = None, max_output_tokens: int | None = None) -> "Trace":
        """Lengths clipped to the given maxima (requests are kept)."""
        p = self.prompt_tokens if max_prompt_tokens is None else np.minimum(self.prompt_tokens, max_prompt_tokens)
        o = self.output_tokens if max_output_tokens is None else np.minimum(self.output_tokens, max_output_tokens)
        return replace(self, prompt_tokens=p, output_tokens=o)

    def clip_context(self, max_context_tokens: int) -> "Trace":
        """Each request clipped so prompt + output <= `max_context_tokens` (the prompt gives way first; an output
        of the whole context keeps one prompt token); `context_clipped` counts the requests changed."""
        if int(max_context_tokens) < 2:
            raise ValueError(f"max_context_tokens must be >= 2, got {max_context_tokens!r}")
        o = np.minimum(self.output_tokens, int(max_context_tokens) - 1)
        p = np.minimum(self.prompt_tokens, int(max_context_tokens) - o)
        n = int(np.count_nonzero((p != self.prompt_tokens) | (o != self.output_tokens)))
        return replace(self, prompt_tokens=p, output_tokens=o, context_clipped=self.context_clipped + n)

    def spread_arrivals(self) -> "Trace":
        """Requests that share a timestamp spread evenly from it up to the next distinct timestamp (a trace logged
        on a coarse clock); the last group spreads over the median gap between distinct timestamps. Unchanged when
        every timestamp is distinct or all requests share one."""
        t = self.arrival_s
        uniq, start, counts = np.unique(t, return_index=True, return_counts=True)
        if len(uniq) in (len(t), 1) or len(t) < 2:
            return self
        gaps = np.diff(uniq)
        span = np.append(gaps, np.median(gaps))
        k = np.arange(len(t)) - np.repeat(start, counts)
        return replace(self, arrival_s=t + k * np.repeat(span / counts, counts))


def _fail(path, line: int, msg: str):
    raise ValueError(f"{path}:{line}: {msg}")


def _int_field(path, line: int, value: str, col: str) -> int:
    try:
        x = int(str(value).strip())
    except (TypeError, ValueError):
        _fail(path, line, f"{col} must be an integer, got {value!r}")
    if x < 0:
        _fail(path, line, f"{col} must be >= 0, got {x}")
    return x


def _read_csv(path: Path, required: tuple[str, ...]):
    with open_text(path) as f:
        reader = csv.reader(f)
        header = next(reader, None)
        if header is None:
            _fail(path, 1, "empty file")
        header = [h.strip() for h in header]
        missing = [c for c in required if c not in header]
        if missing:
            _fail(path, 1, f"missing column(s) {', '.join(missing)}; header is {header}")
        cols = [header.index(c) for c in required]
        for lineno, row in enumerate(reader, start=2):
            if not row or all(not c.strip() for c in row):
                continue
            if len(row) < len(header):
                _fail(path, lineno, f"expected {len(header)} fields, got {len(row)}")
            yield lineno, [row[i] for i in cols]


def _finish(name: str, path: Path, arrival, prompt, output, lines) -> Trace:
    """Arrays -> Trace; timestamps must already be non-decreasing (the first decrease is named by its line)."""
    if not arrival:
        raise ValueError(f"{path}: no requests")
    arr = np.asarray(arrival, dtype=np.float64)
    down = np.flatnonzero(np.diff(arr) < 0)
    if len(down):
        _fail(path, lines[down[0] + 1], "timestamps must be non-decreasing (this request arrives before the one "
                                        f"on line {lines[down[0]]})")
    p, o = np.asarray(prompt, dtype=np.int64), np.asarray(output, dtype=np.int64)
    for arr_, col in ((p, "prompt length"), (o, "output length")):
        bad = np.flatnonzero(arr_ < 1)
        if len(bad):
            _fail(path, lines[bad[0]], f"{col} must be >= 1")
    return Trace(name, arr - arr[0], p, o)


def load_azure(path: str | os.PathLike, name: str | None = None) -> Trace:
    """Azure 2023 CSV -> Trace with arrivals in seconds from the first request."""
    path = Path(path)
    ts, prompt, output, lines = [], [], [], []
    for lineno, (t, c, g) in _read_csv(path, ("TIMESTAMP", "ContextTokens", "GeneratedTokens")):
        try:
            ts.append(np.datetime64(t.strip().replace(" ", "T"), "ns"))
        except ValueError:
            _fail(path, lineno, f"bad TIMESTAMP {t!r}")
        prompt.append(_int_field(path, lineno, c, "ContextTokens"))
        output.append(_int_field(path, lineno, g, "GeneratedTokens"))
        lines.append(lineno)
    if not ts:
        raise ValueError(f"{path}: no requests")
    t_ns = np.array(ts, dtype="datetime64[ns]").astype(np.int64)
    return _finish(name or plain_name(path).stem, path, list((t_ns - t_ns[0]) / 1e9), prompt, output, lines)


def load_sharegpt(path: str | os.PathLike, *, poisson_rate_rps: float = 1.0, seed: int = 0,
                  name: str | None = None) -> Trace:
    """ShareGPT length CSV -> Trace with seeded Poisson arrivals at `poisson_rate_rps` (first request at 0)."""
    path = Path(path)
    if not poisson_rate_rps > 0:
        raise ValueError(f"poisson_rate_rps must be > 0, got {poisson_rate_rps!r}")
    prompt, output, lines = [], [], []
    for lineno, (p, d) in _read_csv(path, ("num_prefill_tokens", "num_decode_tokens")):
        prompt.append(_int_field(path, lineno, p, "num_prefill_tokens"))
        output.append(_int_field(path, lineno, d, "num_decode_tokens"))
        lines.append(lineno)
    if not prompt:
        raise ValueError(f"{path}: no requests")
    gaps = np.random.default_rng(seed).exponential(1.0 / poisson_rate_rps, size=len(prompt))
    gaps[0] = 0.0
    return _finish(name or plain_name(path).stem, path, list(np.cumsum(gaps)), prompt, output, lines)


def load_mooncake(path: str | os.PathLike, name: str | None = None) -> Trace:
    """bench_serving mooncake JSONL (timestamp in ms, input_length, output_length) -> Trace."""
    path = Path(path)
    arrival, prompt, output, lines = [], [], [], []
    with (gzip.open(path, "rb") if path.suffix == ".gz" else open(path, "rb")) as f:
        for lineno, raw in enumerate(f, start=1):
            if not raw.strip():
                continue
            try:
                rec = orjson.loads(raw)
            except orjson.JSONDecodeError as exc:
                _fail(path, lineno, f"invalid JSON ({exc})")
            if not isinstance(rec, dict):
                _fail(path, lineno, "expected a JSON object")
            for key in ("timestamp", "input_length", "output_length"):
                if key not in rec:
                    _fail(path, lineno, f"missing key {key!r}")
            t = rec["timestamp"]
            if isinstance(t, bool) or not isinstance(t, (int, float)) or not np.isfinite(t):
                _fail(path, lineno, f"timestamp must be a number of milliseconds, got {t!r}")
            arrival.append(float(t) / 1000.0)
            prompt.append(_int_field(path, lineno, rec["input_length"], "input_length"))
            output.append(_int_field(path, lineno, rec["output_length"], "output_length"))
            lines.append(lineno)
    return _finish(name or plain_name(path).stem, path, arrival, prompt, output, lines)


def write_mooncake(path: str | os.PathLike, trace: Trace, *, hash_block_tokens: int | None = 128) -> None:
    """Write `trace` as mooncake JSONL for bench_serving's trace replay.

    With `hash_block_tokens`, each record carries ceil(input_length / block) `hash_ids` unique to the request
    (bench_serving builds its prompt from them, ~128 tokens per id), so replayed prompts share no prefix.
    """
    next_id = 0
    with open(path, "wb") as f:
        for t, p, o in zip(trace.arrival_s, trace.prompt_tokens, trace.output_tokens):
            rec = {"timestamp": int(round(float(t) * 1000.0)), "input_length": int(p), "output_length": int(o)}
            if hash_block_tokens:
                k = -(-int(p) // hash_block_tokens)
                rec["hash_ids"] = list(range(next_id, next_id + k))
                next_id += k
            f.write(orjson.dumps(rec) + b"\n")


def load_trace(name_or_path: str | os.PathLike, *, shared: str | os.PathLike | None = None, seed: int = 0,
               poisson_rate_rps: float = 1.0, limit: int | None = None, start_s: float = 0.0,
               duration_s: float | None = None, max_prompt_tokens: int | None = None,
               max_output_tokens: int | None = None, spread_arrivals: bool = False,
               max_context_tokens: int | None = None) -> Trace:
    """Load a trace by name or path (format from the name, the extension or the header), then shape it.

    In this order: `spread_arrivals` (over the whole trace), the time window (`start_s`, `duration_s`, seconds of the
    unscaled trace), `limit` (first N), the per-length maxima, then `max_context_tokens` (prompt + output <= N; the
    returned trace's `context_clipped` counts the requests it shortened).
    """
    path = resolve_trace_path(name_or_path, shared)
    key = str(name_or_path)
    label = key if key in TRACE_FILES else plain_name(path).stem
    if plain_name(path).suffix in (".jsonl", ".json"):
        trace = load_mooncake(path, label)
    else:
        with open_text(path) as f:
            header = f.readline()
        if "TIMESTAMP" in header:
            trace = load_azure(path, label)
        elif "num_prefill_tokens" in header:
            trace = load_sharegpt(path, poisson_rate_rps=poisson_rate_rps, seed=seed, name=label)
        else:
            raise ValueError(f"{path}:1: unknown trace format (header {header.strip()!r})")
    if spread_arrivals:
        trace = trace.spread_arrivals()
    if start_s or duration_s is not None:
        trace = trace.window(start_s, duration_s)
    if limit is not None:
        trace = trace.head(limit)
    if max_prompt_tokens is not None or max_output_tokens is not None:
        trace = trace.clipped(max_prompt_tokens, max_output_tokens)
    if max_context_tokens is not None:
        trace = trace.clip_context(max_context_tokens)
    if not len(trace):
        raise ValueError(f"{path}: no requests left after window/limit")
    return trace
