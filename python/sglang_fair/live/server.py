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
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, Sequence

import requests

SERVE_COMMAND = (sys.executable, "-m", "sglang_fair.cli", "serve")
"""`sglang-fair serve` as a command line for `sglang_server(command=...)` (this interpreter, no PATH lookup)."""
MODEL_ENV = "SGLANG_FAIR_TEST_MODEL"


def embedded_model_path() -> str:
    """$SGLANG_FAIR_TEST_MODEL, else the embedded local model (made on first use; random weights, local tokenizer)."""
    env = os.environ.get(MODEL_ENV)
    if env:
        return env
    from ..data.model import make_model
    return str(make_model())


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cpu_server_args(max_total_tokens: int | None = 16384, *, float32: bool = True) -> list[str]:
    """SGLang flags for a CPU-only machine: the ones `sglang-fair serve` adds, with our own KV size (None: no
    `--max-total-tokens`, e.g. on the emulated device, where serve sizes the KV pool like the emulated GPU's)."""
    from ..config import CPU_DEFAULTS

    args: list[str] = []
    for flag, value in CPU_DEFAULTS:
        if flag == "--max-total-tokens":
            if max_total_tokens is None:
                continue
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
        """The log's last `n_chars`, without SGLang's start-up noise (import fallbacks, platform warnings), so a
        failure report that is itself cut short still shows where the server stopped."""
        kept = [line for line in self.log_text().splitlines() if not _NOISE.search(line)]
        return "\n".join(kept)[-n_chars:]

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def get(self, path: str, **kw):
        return requests.get(self.url + path, timeout=kw.pop("timeout", 30), **kw)

    def post(self, path: str, json=None, **kw):
        return requests.post(self.url + path, json=json, timeout=kw.pop("timeout", 120), **kw)


_NOISE = re.compile(r"Ignore import error when loading|UserWarning: |^\s*warnings\.warn\(|^\s*$")


def _dump_stacks(proc: subprocess.Popen, wait_s: float = 3.0) -> None:
    """Ask every Python process of the group for its threads' stacks (they run with PYTHONFAULTHANDLER, so SIGABRT
    prints them to the log before the process ends): a server that hangs at start-up says where."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGABRT)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=wait_s)
        time.sleep(0.5)  # children write their dumps after the launcher's


def _stacks(text: str, n_chars: int = 8000) -> str:
    """The faulthandler lines of `text` (which process, which thread, which frames), at most `n_chars`."""
    keep = ("Fatal Python error", "Thread 0x", "Current thread", "  File ", "Extension modules")
    return "\n".join(line for line in text.splitlines() if line.startswith(keep))[:n_chars] or "(none printed)"


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


_held = {"free": 0}
"""Slots this process took with `server_slots(n)` and has not yet handed to a server."""


def _try_lock(i: int) -> int | None:
    import fcntl

    fd = os.open(SLOT_DIR / f"sglang-fair-server-slot-{i}.lock", os.O_CREAT | os.O_RDWR, 0o666)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    return fd


@contextlib.contextmanager
def server_slots(n: int = 1, wait_s: float = 1800.0) -> Iterator[None]:
    """Hold `n` of the MAX_SERVERS machine-wide server slots (flock'd files in the temp dir), all at once or none,
    so tests, demos and benchmarks running side by side never start more SGLang servers than the machine takes and
    two callers that each need two servers never deadlock holding one each. Servers started inside with
    `sglang_server` use the held slots. The locks go with the process, so a killed holder never leaks a slot."""
    if not 1 <= n <= MAX_SERVERS:
        raise ValueError(f"server_slots: n must be in 1..{MAX_SERVERS}, got {n}")
    deadline = time.monotonic() + wait_s
    while True:
        fds = []
        for i in range(MAX_SERVERS):
            fd = _try_lock(i)
            if fd is not None:
                fds.append(fd)
                if len(fds) == n:
                    break
        if len(fds) == n:
            _held["free"] += n
            try:
                yield
            finally:
                _held["free"] = max(0, _held["free"] - n)
                for fd in fds:
                    os.close(fd)
            return
        for fd in fds:
            os.close(fd)
        if time.monotonic() > deadline:
            raise TimeoutError(f"could not hold {n} of {MAX_SERVERS} SGLang server slots within {wait_s:.0f} s")
        time.sleep(1.0)


@contextlib.contextmanager
def _one_slot(wait_s: float = 1800.0) -> Iterator[None]:
    """A slot for one server: one this process already holds (`server_slots`), else a new one."""
    if _held["free"] > 0:
        _held["free"] -= 1
        try:
            yield
        finally:
            _held["free"] += 1
        return
    with server_slots(1, wait_s):
        _held["free"] -= 1
        try:
            yield
        finally:
            _held["free"] += 1


@contextlib.contextmanager
def sglang_server(model_path: str | os.PathLike, extra_args: Sequence[str] = (), *, env: dict | None = None,
                  startup_timeout_s: float = 180.0, command: Sequence[str] | None = None,
                  log_dir: str | os.PathLike | None = None) -> Iterator[Server]:
    """Run `python -m sglang.launch_server` (or `command`) on a free loopback port; yield a Server; stop by pgid.

    `env` entries are added to a copy of os.environ (a value of None removes the variable). Uses a server slot
    this process holds (`server_slots`) or waits for a free one.
    """
    with _one_slot():
        with _sglang_server(model_path, extra_args, env=env, startup_timeout_s=startup_timeout_s, command=command,
                            log_dir=log_dir) as srv:
            yield srv


@contextlib.contextmanager
def sglang_router(worker_urls: Sequence[str], policy: str = "power_of_two", *, api_key: str | None = None,
                  load_poll_s: int = 1, extra_args: Sequence[str] = (), startup_timeout_s: float = 120.0,
                  log_dir: str | os.PathLike | None = None) -> Iterator[Server]:
    """sglang-router in its own process group on loopback (its Prometheus port too), stopped by pgid; yields once
    `/workers` lists every worker (the router registers them asynchronously). `load_poll_s` is how often
    power_of_two polls each worker's `/get_load`. In sglang-router 0.3.2 `api_key` is both the key it sends to
    workers and the key its own API asks of clients."""
    import orjson

    port, prom = free_port(), free_port()
    argv = [sys.executable, "-m", "sglang_router.launch_router", "--worker-urls", *worker_urls, "--policy", policy,
            "--host", "127.0.0.1", "--port", str(port), "--prometheus-host", "127.0.0.1", "--prometheus-port",
            str(prom), "--worker-startup-check-interval", str(load_poll_s), "--log-level", "info", *extra_args]
    if api_key:
        argv += ["--api-key", api_key]
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}

    def ready(srv: Server) -> bool:
        listed = orjson.loads(requests.get(srv.url + "/workers", timeout=5, headers=headers).content)
        return len(listed.get("workers", [])) >= len(worker_urls)

    with _spawned(argv, url=f"http://127.0.0.1:{port}", ready=ready, startup_timeout_s=startup_timeout_s,
                  what=f"sglang-router (listing its {len(worker_urls)} workers)", log_prefix="sglang-router-",
                  log_dir=log_dir) as srv:
        yield srv


SMG_VERSION = "1.13.0"
SMG_PYTHON_ENV = "SGLANG_FAIR_SMG_PYTHON"
SMG_VENV = ".venv-smg"
"""smg (the router line after sglang-router) lives in its own venv: sglang-router 0.3.2 also installs a console
script named `smg`, so the two cannot share a bin/. `make setup` builds REPO/.venv-smg (target setup-smg)."""


def _smg_version(python: str) -> str | None:
    try:
        out = subprocess.run([python, "-c", "import importlib.metadata as m, smg.launch_router; "
                              "print(m.version('smg'))"], capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


def smg_python() -> str | None:
    """An interpreter that runs smg (`python -m smg.launch_router`): $SGLANG_FAIR_SMG_PYTHON, else
    REPO/.venv-smg/bin/python (a source checkout), else this interpreter if it has smg (not sglang-router's `smg`
    script, which is a different program); None when none has it."""
    here = Path(__file__).resolve()
    candidates = [os.environ.get(SMG_PYTHON_ENV)]
    candidates += [str(root / SMG_VENV / "bin" / "python") for root in here.parents
                   if (root / "pyproject.toml").exists()]
    candidates.append(sys.executable)
    for python in filter(None, candidates):
        if Path(python).exists() and _smg_version(python):
            return python
    return None


def router_command(router: str) -> list[str]:
    """The command line that starts `router` ("sglang-router" or "smg") without a PATH lookup: sglang-router from
    this interpreter, smg from `smg_python()`. Raises FileNotFoundError naming the package when it is missing."""
    if router == "sglang-router":
        return [sys.executable, "-m", "sglang_router.launch_router"]
    if router == "smg":
        python = smg_python()
        if python is None:
            raise FileNotFoundError(f"smg (pip package smg=={SMG_VERSION}) is not installed: run `make setup-smg` "
                                    f"(builds {SMG_VENV}/) or point ${SMG_PYTHON_ENV} at a Python that has it")
        return [python, "-m", "smg.launch_router"]
    raise ValueError(f"unknown router {router!r}; choose sglang-router or smg")


@contextlib.contextmanager
def smg_router(worker_urls: Sequence[str], policy: str = "least_load", *, load_poll_s: int = 1,
               overload_waiting_requests: int | None = 64, overload_token_usage: float | None = 0.95,
               api_key: str | None = None, extra_args: Sequence[str] = (), startup_timeout_s: float = 120.0,
               log_dir: str | os.PathLike | None = None) -> Iterator[Server]:
    """smg (`python -m smg.launch_router` from `smg_python()`) in its own process group on loopback (its Prometheus
    port too), stopped by pgid; yields once `/workers` lists every worker. It polls each worker's
    `GET /v1/loads` every `load_poll_s` seconds (`--load-monitor-interval`). Worker overload protection stays on
    with thresholds for FairBatching's deeper waiting queue (`overload_*`; None: smg's defaults, 8 and 0.8)."""
    import orjson

    port, prom = free_port(), free_port()
    argv = [*router_command("smg"), "--worker-urls", *worker_urls, "--policy", policy, "--host", "127.0.0.1",
            "--port", str(port), "--prometheus-host", "127.0.0.1", "--prometheus-port", str(prom),
            "--load-monitor-interval", str(load_poll_s), "--log-level", "info"]
    if overload_waiting_requests is not None:
        argv += ["--worker-overload-waiting-requests", str(overload_waiting_requests)]
    if overload_token_usage is not None:
        argv += ["--worker-overload-token-usage", str(overload_token_usage)]
    if api_key:
        argv += ["--api-key", api_key]
    argv += list(extra_args)
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}

    def ready(srv: Server) -> bool:
        listed = orjson.loads(requests.get(srv.url + "/workers", timeout=5, headers=headers).content)
        workers = listed.get("workers", listed) if isinstance(listed, dict) else listed
        return len(workers) >= len(worker_urls)

    with _spawned(argv, url=f"http://127.0.0.1:{port}", ready=ready, startup_timeout_s=startup_timeout_s,
                  what=f"smg (listing its {len(worker_urls)} workers)", log_prefix="smg-router-",
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
    with _spawned(argv, env=full_env, url=f"http://127.0.0.1:{port}", ready=_healthy,
                  startup_timeout_s=startup_timeout_s, what="SGLang server", log_prefix="sglang-server-",
                  log_dir=log_dir) as srv:
        yield srv


def _healthy(srv: Server) -> bool:
    return requests.get(srv.url + "/health", timeout=5).status_code == 200


@contextlib.contextmanager
def _spawned(argv: list[str], *, url: str, ready: Callable[[Server], bool], startup_timeout_s: float, what: str,
             log_prefix: str, log_dir=None, env: dict | None = None) -> Iterator[Server]:
    """Start `argv` in its own process group (output to a temp log), wait until `ready(server)` (connection errors
    and bad bodies count as not yet), yield the Server, stop it by process group."""
    log_fd, log_name = tempfile.mkstemp(prefix=log_prefix, suffix=".log", dir=log_dir)
    env = {**(os.environ if env is None else env), "PYTHONFAULTHANDLER": "1"}  # see _dump_stacks
    proc = subprocess.Popen(argv, stdout=log_fd, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    os.close(log_fd)
    srv = Server(url=url, proc=proc, log_path=Path(log_name))
    try:
        deadline = time.monotonic() + startup_timeout_s
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"{what} exited with {proc.returncode} during start-up:\n{srv.log_tail()}")
            with contextlib.suppress(requests.RequestException, ValueError):
                if ready(srv):
                    break
            if time.monotonic() > deadline:
                before, n_before = srv.log_tail(4000), len(srv.log_text())
                _dump_stacks(proc)
                dumps = srv.log_text()[n_before:]
                raise TimeoutError(f"{what} not ready after {startup_timeout_s:.0f} s; its log ended with:\n{before}"
                                   f"\n--- stacks on SIGABRT ---\n{_stacks(dumps)}")
            time.sleep(0.5)
        yield srv
    finally:
        _stop(proc)


def requests_served(url: str) -> float | None:
    """Requests a server has finished since start (`sglang:num_requests_total` on its /metrics, which needs
    `--enable-metrics`); None when the endpoint cannot be read."""
    try:
        text = requests.get(url + "/metrics", timeout=10).text
    except requests.RequestException:
        return None
    return sum(float(v) for v in re.findall(r"^sglang:num_requests_total\{[^}]*\} ([0-9.e+]+)$", text, re.M))


def exit_on_sigterm() -> None:
    """Turn SIGTERM into SystemExit so `sglang_server` context managers stop their servers on the way out
    (a command killed by `timeout` or a CI runner otherwise leaves its server's process group behind)."""
    signal.signal(signal.SIGTERM, lambda signum, _frame: sys.exit(128 + signum))
