"""`--fair-trace PATH`: the scheduler's iteration trace, one JSON object per line.

Written by the scheduler child (the only SGLang process that plans or runs forwards); the file is opened, and
truncated, on the first record of that process, so a restarted server starts a fresh trace. Records (all times in
the scheduler's `time.perf_counter()` seconds, `t_s`; the `start` record maps that clock to wall time):
- `start`: pid, `wall_s` and `t_s` read together, the policy, the default SLOs, the emulated device (or null);
- `plan` (active policy, every step with something running or queued; an idle scheduler's wake-ups are left out):
  its sequence number `seq` (the adapter's `planned_iterations`, so gaps in `seq` are idle steps), what the policy
  saw (running, prefilling, waiting), what it planned (prefill chunks and tokens, decode rows, rows deferred,
  demoted, aged, preempt), its budget and predicted time, the adapter's own overhead and the policy's note; `stock: true`
  on a step that fell back to stock SGLang (a policy fault);
- `forward` (active policy, every measured forward): `plan_seq` (the latest plan before it), the batch's prefill
  tokens and chunks, decode rows and their summed context, measured and predicted milliseconds;
- `device` (emulated device, every policy including `off`): the batch's kind (`batch`: decode, prefill, mixed), its
  prefill tokens and decode rows, the forward's emulated and real milliseconds, the overlap credit and whether it
  overran.
`sglang-fair trace-report PATH` summarises a trace (bench/trace_report.py).

One writer per file: the writer holds an exclusive advisory lock (flock) on it while its process lives, so a second
server given the same path gets an error in its trace status instead of interleaving records; `sglang-fair serve`
refuses such a path at start-up (`holder_pid`).

Bounded: after `max_bytes` the writer appends one `{"kind": "truncated"}` record and stops. Buffered: a daemon thread
flushes it every `FLUSH_EVERY_S` when records were added (so an idle server's trace is complete on disk within that
time), and at normal exit; SGLang stops its scheduler with SIGKILL, so up to that much of the tail may be lost.
Pure Python: no SGLang imports.
"""

from __future__ import annotations

import atexit
import fcntl
import os
import threading
import time
from typing import Callable

import orjson

FLUSH_EVERY_S = 0.25
DEFAULT_MAX_MB = 1024.0


class TraceWriter:
    """Appends records to `path` (created or truncated on the first record), stopping at `max_bytes`."""

    def __init__(self, path: str | os.PathLike, max_bytes: int, *, header: dict | None = None,
                 clock: Callable[[], float] = time.perf_counter) -> None:
        self.path = os.fspath(path)
        self.max_bytes = int(max_bytes)
        self.header = header or {}
        self.clock = clock
        self.records = 0
        self.bytes = 0
        self.dropped = 0
        self.error: str | None = None
        self._f = None
        self._flushed = 0
        self._stop = threading.Event()

    def write(self, kind: str, record: dict) -> None:
        """Append one record of `kind` (`record` must not have its own "kind" key). Never raises on I/O: an error
        stops the trace (kept in `error`)."""
        if self.error is not None or self.bytes >= self.max_bytes:
            self.dropped += 1
            return
        if "kind" in record:
            raise ValueError("a trace record's fields may not include 'kind' (it names the record's type)")
        try:
            if self._f is None:
                self._open()
            line = orjson.dumps({"kind": kind, **record}, option=orjson.OPT_SERIALIZE_NUMPY) + b"\n"
            if self.bytes + len(line) > self.max_bytes:
                self._f.write(orjson.dumps({"kind": "truncated", "t_s": self.clock(), "max_bytes": self.max_bytes})
                              + b"\n")
                self._f.flush()
                self.bytes = self.max_bytes
                self.dropped += 1
                return
            self._f.write(line)
            self.bytes += len(line)
            self.records += 1
        except (OSError, TypeError, ValueError) as exc:
            self.error = f"{type(exc).__name__}: {exc}"
            self.dropped += 1

    def _open(self) -> None:
        fd = os.open(self.path, os.O_WRONLY | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # held (with the file) for the process's life
        except BlockingIOError:
            os.close(fd)
            raise OSError(f"{self.path} is being written by another process (pid {_start_pid(self.path)})") from None
        os.ftruncate(fd, 0)
        self._f = os.fdopen(fd, "wb", buffering=1 << 16)
        atexit.register(self.flush)
        start = {"kind": "start", "pid": os.getpid(), "wall_s": time.time(), "t_s": self.clock(), **self.header}
        line = orjson.dumps(start) + b"\n"
        self._f.write(line)
        self._f.flush()
        self.bytes += len(line)
        threading.Thread(target=self._flush_loop, name="sglang-fair-trace", daemon=True).start()

    def _flush_loop(self) -> None:
        while not self._stop.wait(FLUSH_EVERY_S):
            if self.records != self._flushed:
                self.flush()

    def flush(self) -> None:
        """Write the buffered records to disk (the buffered writer is thread-safe)."""
        if self._f is not None and not self._f.closed:
            n = self.records
            try:
                self._f.flush()
                self._flushed = n
            except (OSError, ValueError):
                pass

    def close(self) -> None:
        self._stop.set()
        self.flush()
        if self._f is not None:
            self._f.close()

    def status(self) -> dict:
        return {"path": self.path, "records": self.records, "bytes": self.bytes, "dropped": self.dropped,
                "error": self.error}


def _start_pid(path: str) -> int | None:
    """The pid in a trace's `start` record (None when unreadable)."""
    try:
        with open(path, "rb") as f:
            return int(orjson.loads(f.readline())["pid"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def holder_pid(path: str | os.PathLike) -> int | None:
    """The pid of a live process writing the trace at `path` (it holds the file's lock), -1 when it holds the lock
    but its pid is unreadable, None when no process does (or the file does not exist)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        return None
    except BlockingIOError:
        pid = _start_pid(os.fspath(path))
        return -1 if pid is None else pid
    finally:
        os.close(fd)


_writer: TraceWriter | None = None


def configure(path: str | None, max_mb: float = DEFAULT_MAX_MB, header: dict | None = None) -> TraceWriter | None:
    """Set this process's trace (None: no trace). The file opens on the first record."""
    global _writer
    _writer = TraceWriter(path, int(max_mb * 1024 * 1024), header=header) if path else None
    return _writer


def writer() -> TraceWriter | None:
    """This process's trace writer, or None when tracing is off."""
    return _writer
