"""Watching a live server from outside: a background-thread helper, process-group RSS, the plugin's state.

Shared by the benchmark harness (bench/, benchmark/soak.py) and the reliability tests.
"""

from __future__ import annotations

import contextlib
import os
import threading
import time

import requests


class Background:
    """A daemon thread that runs `self.run(stop)` while a `with` block lasts; leaving the block sets `stop` and joins
    the thread. Subclasses implement `run` and return once `stop` is set (wait on it, never sleep)."""

    def __init__(self) -> None:
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self.run, args=(self._stop,), daemon=True)

    def run(self, stop: threading.Event) -> None:
        raise NotImplementedError

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


def group_rss_bytes(pgid: int) -> int:
    """Resident memory of every process in process group `pgid`, bytes."""
    import psutil  # SGLang's dependency: present wherever a live server runs
    total = 0
    for p in psutil.process_iter(["pid"]):
        with contextlib.suppress(psutil.Error, ProcessLookupError):
            if os.getpgid(p.pid) == pgid:
                total += p.memory_info().rss
    return total


class RssSampler(Background):
    """Samples the RSS of a process group every `period_s` (context manager)."""

    def __init__(self, pgid: int, period_s: float = 0.5) -> None:
        super().__init__()
        self.pgid, self.period_s = pgid, period_s
        self.samples: list[int] = []

    def run(self, stop: threading.Event) -> None:
        while not stop.is_set():
            self.samples.append(group_rss_bytes(self.pgid))
            stop.wait(self.period_s)

    @property
    def peak(self) -> int:
        return max(self.samples, default=0)


def auth(api_key: str | None) -> dict:
    return {"Authorization": f"Bearer {api_key}"} if api_key else {}


def fair_state(url: str, api_key: str | None = None) -> dict:
    """The plugin's status block of a one-scheduler server (`/server_info` internal state `sglang_fair`)."""
    states = requests.get(url + "/server_info", timeout=30, headers=auth(api_key)).json()["internal_states"]
    if len(states) != 1:
        raise RuntimeError(f"{url}: expected one scheduler's state, got {len(states)}")
    return states[0]["sglang_fair"]


def wait_idle(url: str, api_key: str | None = None, timeout_s: float = 60.0) -> dict:
    """Poll until no request is running, waiting or parked and the KV pool holds nothing; return the last state."""
    deadline = time.monotonic() + timeout_s
    while True:
        st = fair_state(url, api_key)
        if (st["kv_used_tokens"] == 0 and st["num_running_reqs"] == 0 and st["num_waiting_reqs"] == 0
                and st["deferred_now"] == 0):
            return st
        if time.monotonic() > deadline:
            return st
        time.sleep(0.3)
