"""Start and stop one real SGLang server for live tests.

The server runs in its own process group on loopback, always with `--sleep-on-idle`, and is stopped by process
group id, so a test never leaves a scheduler child behind. Use it as a context manager:

    with sglang_server(model_path, cpu_server_args(), env={...}) as srv:
        requests.post(srv.url + "/generate", json=...)

`cpu_server_args()` returns the flags that work on a CPU-only machine (the same as `sglang-fair serve` adds).
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

import requests


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cpu_server_args(max_total_tokens: int = 16384, *, float32: bool = True) -> list[str]:
    """SGLang flags for a CPU-only machine: the ones `sglang-fair serve` adds, with our own KV size."""
    from ..serve import CPU_DEFAULTS

    args: list[str] = []
    for flag, value in CPU_DEFAULTS:
        if flag == "--max-total-tokens":
            value = str(max_total_tokens)
        args += [flag] if value is None else [flag, value]
    if float32:
        args += ["--dtype", "float32"]
    return args


@dataclass
class Server:
    url: str
    proc: subprocess.Popen
    log_path: Path

    def log_tail(self, n_chars: int = 6000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-n_chars:]
        except OSError:
            return ""

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def get(self, path: str, **kw):
        return requests.get(self.url + path, timeout=kw.pop("timeout", 30), **kw)

    def post(self, path: str, json=None, **kw):
        return requests.post(self.url + path, json=json, timeout=kw.pop("timeout", 120), **kw)


def _stop(proc: subprocess.Popen, timeout_s: float = 20.0) -> None:
    if proc.poll() is not None:
        # The launcher may be gone while its children still live in the group.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        pass
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=5)


MAX_SERVERS = int(os.environ.get("SGLANG_FAIR_MAX_SERVERS", "2"))
SLOT_DIR = Path(tempfile.gettempdir())


@contextlib.contextmanager
def server_slot(wait_s: float = 1800.0) -> Iterator[int]:
    """Hold one of MAX_SERVERS machine-wide server slots (flock'd files in the temp dir) while a server runs, so
    tests, demos and benchmarks running side by side never start more SGLang servers than the machine takes.
    The lock goes with the process, so a killed holder never leaks its slot."""
    import fcntl

    deadline = time.monotonic() + wait_s
    while True:
        for i in range(MAX_SERVERS):
            fd = os.open(SLOT_DIR / f"sglang-fair-server-slot-{i}.lock", os.O_CREAT | os.O_RDWR, 0o666)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                continue
            try:
                yield i
            finally:
                os.close(fd)
            return
        if time.monotonic() > deadline:
            raise TimeoutError(f"no free SGLang server slot after {wait_s:.0f} s ({MAX_SERVERS} in use)")
        time.sleep(1.0)


@contextlib.contextmanager
def sglang_server(model_path: str | os.PathLike, extra_args: Sequence[str] = (), *, env: dict | None = None,
                  startup_timeout_s: float = 180.0, command: Sequence[str] | None = None,
                  log_dir: str | os.PathLike | None = None) -> Iterator[Server]:
    """Run `python -m sglang.launch_server` (or `command`) on a free loopback port; yield a Server; stop by pgid.

    `env` entries are added to a copy of os.environ (a value of None removes the variable). Waits for a free
    machine-wide server slot first (`server_slot`).
    """
    with server_slot():
        with _sglang_server(model_path, extra_args, env=env, startup_timeout_s=startup_timeout_s, command=command,
                            log_dir=log_dir) as srv:
            yield srv


@contextlib.contextmanager
def _sglang_server(model_path, extra_args, *, env, startup_timeout_s, command, log_dir) -> Iterator[Server]:
    port = free_port()
    base = list(command) if command else [sys.executable, "-m", "sglang.launch_server"]
    argv = base + ["--model-path", str(model_path), "--host", "127.0.0.1", "--port", str(port), "--sleep-on-idle",
                   *extra_args]
    full_env = dict(os.environ)
    full_env.setdefault("SGLANG_USE_CPU_ENGINE", "1")
    for k, v in (env or {}).items():
        if v is None:
            full_env.pop(k, None)
        else:
            full_env[k] = str(v)
    log_fd, log_name = tempfile.mkstemp(prefix="sglang-server-", suffix=".log", dir=log_dir)
    proc = subprocess.Popen(argv, stdout=log_fd, stderr=subprocess.STDOUT, env=full_env, start_new_session=True)
    os.close(log_fd)
    srv = Server(url=f"http://127.0.0.1:{port}", proc=proc, log_path=Path(log_name))
    try:
        deadline = time.monotonic() + startup_timeout_s
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"SGLang server exited with {proc.returncode} during start-up:\n{srv.log_tail()}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"SGLang server not healthy after {startup_timeout_s:.0f} s:\n{srv.log_tail()}")
            with contextlib.suppress(requests.RequestException):
                if requests.get(srv.url + "/health", timeout=5).status_code == 200:
                    break
            time.sleep(0.5)
        yield srv
    finally:
        _stop(proc)


def exit_on_sigterm() -> None:
    """Turn SIGTERM into SystemExit so `sglang_server` context managers stop their servers on the way out
    (a command killed by `timeout` or a CI runner otherwise leaves its server's process group behind)."""
    signal.signal(signal.SIGTERM, lambda signum, _frame: sys.exit(128 + signum))
