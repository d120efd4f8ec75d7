"""Shared pytest set-up. This file's directory goes on sys.path (pytest's default "prepend" import mode), so tests
can `from factories import ...`."""

from __future__ import annotations

import signal
import threading

import pytest


def pytest_configure(config) -> None:
    """A run stopped with SIGTERM (a CI runner's timeout, `kill`) unwinds as Ctrl-C does: pytest tears its fixtures
    and `sglang_server` context managers down, so the servers they started in their own process groups are stopped
    instead of left behind (the commands do the same with `live.server.exit_on_sigterm`; a test run needs
    KeyboardInterrupt, which pytest answers by stopping the session, where SystemExit would fail one test and go on)."""
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, signal.default_int_handler)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """A failed test whose server (a `live.server.Server` fixture) has exited gets that server's log tail in its
    report: a scheduler that died shows its traceback there, not only the client's "connection refused"."""
    outcome = yield
    report = outcome.get_result()
    if not report.failed:
        return
    for name, value in getattr(item, "funcargs", {}).items():
        proc = getattr(value, "proc", None)
        if proc is not None and callable(getattr(value, "log_tail", None)) and proc.poll() is not None:
            report.sections.append((f"server {name} exited with {proc.returncode}; its log ended with",
                                    value.log_tail(8000)))
