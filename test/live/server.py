"""Live-test server helpers; the implementation lives in the package (sglang_fair.live.server) so the demo and the
benchmarks launch servers the same way the tests do."""

from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path

from sglang_fair.live.server import Server, cpu_server_args, free_port, sglang_server  # noqa: F401


def run_in_own_group(argv: list[str], log: Path, timeout_s: float, env: dict | None = None) -> int:
    """Run `argv` to its end in a process group of its own, stdout and stderr to `log`; then kill that group (the
    servers it started, should any be left) and return its exit code. subprocess.TimeoutExpired after `timeout_s`."""
    with open(log, "w") as out:
        proc = subprocess.Popen(argv, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            proc.wait(timeout=timeout_s)
        finally:
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            proc.wait()
    return proc.returncode
