"""`sglang-fair` command line: one subcommand per module, each module owning its own `add_parser`."""

from __future__ import annotations

import argparse
import importlib
import sys

# module -> function that adds its subcommand(s); adding a command is one line here.
COMMANDS = (
    ("sglang_fair.serve", "add_parser"),
    ("sglang_fair.data.model", "add_parser"),
    ("sglang_fair.demo", "add_parser"),
    ("sglang_fair.bench.plan_bench", "add_parser"),
    ("sglang_fair.sim.cli", "add_parsers"),
    ("sglang_fair.bench.cli", "add_parser"),
    ("sglang_fair.bench.trace_report", "add_parser"),
)


def build_parser() -> argparse.ArgumentParser:
    from . import __version__

    parser = argparse.ArgumentParser(prog="sglang-fair", description="FairBatching scheduling for SGLang")
    parser.add_argument("--version", action="version", version=f"sglang-fair {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for module, fn in COMMANDS:
        getattr(importlib.import_module(module), fn)(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["serve"]:  # serve passes unknown flags through to SGLang unchanged
        from .serve import main as serve_main
        return serve_main(argv[1:])
    args = build_parser().parse_args(argv)
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
