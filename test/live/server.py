"""Live-test server helpers; the implementation lives in the package (sglang_fair.live.server) so the demo and the
benchmarks launch servers the same way the tests do."""

from sglang_fair.live.server import Server, cpu_server_args, free_port, sglang_server  # noqa: F401
