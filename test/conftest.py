"""Shared pytest set-up. This file's directory goes on sys.path (pytest's default "prepend" import mode), so tests
can `from factories import ...`."""

from __future__ import annotations

import signal
import threading


def pytest_configure(config) -> None:
    """A run stopped with SIGTERM (a CI runner's timeout, `kill`) unwinds as Ctrl-C does: pytest tears its fixtures
    and `sglang_server` context managers down, so the servers they started in their own process groups are stopped
    instead of left behind (the commands do the same with `live.server.exit_on_sigterm`; a test run needs
    KeyboardInterrupt, which pytest answers by stopping the session, where SystemExit would fail one test and go on)."""
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, signal.default_int_handler)
