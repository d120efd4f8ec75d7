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
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import orjson

TRACE_FILES = {
    "azure-code": "AzureLLMInferenceTrace_code.csv",
    "azure-conv": "AzureLLMInferenceTrace_conv.csv",
    "sharegpt": "sharegpt_8k_filtered_stats_llama2_tokenizer.csv",
}
SHARED_ENV = "SGLANG_FAIR_SHARED"


def shared_dir(override: str | os.PathLike | None = None) -> Path:
    """The shared data root: `override`, else $SGLANG_FAIR_SHARED, else the `shared/` folder beside the repo root."""
    if override:
        return Path(override)
    env = os.environ.get(SHARED_ENV)
    if env:
        return Path(env)
    return Path(__file__).resolve().parents[3].parent / "shared"


def resolve_trace_path(name_or_path: str | os.PathLike, shared: str | os.PathLike | None = None) -> Path:
    """A trace name (`azure-code`, `azure-conv`, `sharegpt`) or a file path -> an existing path."""
    key = str(name_or_path)
    path = shared_dir(shared) / "traces" / TRACE_FILES[key] if key in TRACE_FILES else Path(key)
    if not path.is_file():
        raise FileNotFoundError(f"trace {key!r}: no such file {path} (set {SHARED_ENV} or pass a path)")
    return path


@dataclass(frozen=True, eq=False)
class Trace:
    """Arrival times (s, ascending, first at 0) and prompt/output token counts of each request."""

    name: str
    arrival_s: np.ndarray
    prompt_tokens: np.ndarray
    output_tokens: np.ndarray

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
        return Trace(name or self.name, np.asarray(arr, dtype=np.float64),
                     self.prompt_tokens[idx].copy(), self.output_tokens[idx].copy())

    def scaled(self, rate_scale: float) -> "Trace":
        """Same requests with every inter-arrival gap divided by `rate_scale`."""
        if not rate_scale > 0:
            raise ValueError(f"rate_scale must be > 0, got {rate_scale!r}")
        return Trace(self.name, self.arrival_s / rate_scale, self.prompt_tokens, self.output_tokens)

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
        return Trace(self.name, self.arrival_s, p, o)


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
    with open(path, newline="") as f:
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
    if not arrival:
        raise ValueError(f"{path}: no requests")
    arr = np.asarray(arrival, dtype=np.float64)
    order = np.argsort(arr, kind="stable")
    p, o = np.asarray(prompt, dtype=np.int64)[order], np.asarray(output, dtype=np.int64)[order]
    for arr_, col in ((p, "prompt length"), (o, "output length")):
        bad = np.flatnonzero(arr_ < 1)
        if len(bad):
            _fail(path, lines[order[bad[0]]], f"{col} must be >= 1")
    arr = arr[order]
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
    return _finish(name or path.stem, path, list((t_ns - t_ns.min()) / 1e9), prompt, output, lines)


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
    return _finish(name or path.stem, path, list(np.cumsum(gaps)), prompt, output, lines)


def load_mooncake(path: str | os.PathLike, name: str | None = None) -> Trace:
    """bench_serving mooncake JSONL (timestamp in ms, input_length, output_length) -> Trace."""
    path = Path(path)
    arrival, prompt, output, lines = [], [], [], []
    with open(path, "rb") as f:
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
    return _finish(name or path.stem, path, arrival, prompt, output, lines)


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
               max_output_tokens: int | None = None) -> Trace:
    """Load a trace by name or path (format from the name, the extension or the header), then window/limit/clip.

    The time window (`start_s`, `duration_s`, seconds of the unscaled trace) applies before `limit` (first N).
    """
    path = resolve_trace_path(name_or_path, shared)
    key = str(name_or_path)
    label = key if key in TRACE_FILES else path.stem
    if path.suffix in (".jsonl", ".json"):
        trace = load_mooncake(path, label)
    else:
        with open(path, newline="") as f:
            header = f.readline()
        if "TIMESTAMP" in header:
            trace = load_azure(path, label)
        elif "num_prefill_tokens" in header:
            trace = load_sharegpt(path, poisson_rate_rps=poisson_rate_rps, seed=seed, name=label)
        else:
            raise ValueError(f"{path}:1: unknown trace format (header {header.strip()!r})")
    if start_s or duration_s is not None:
        trace = trace.window(start_s, duration_s)
    if limit is not None:
        trace = trace.head(limit)
    if max_prompt_tokens is not None or max_output_tokens is not None:
        trace = trace.clipped(max_prompt_tokens, max_output_tokens)
    if not len(trace):
        raise ValueError(f"{path}: no requests left after window/limit")
    return trace
