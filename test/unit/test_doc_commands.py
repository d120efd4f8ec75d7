"""The commands the README and docs/ print are commands that run: every `sglang-fair SUBCOMMAND` names a subcommand,
and every `--flag` after it (or after `python benchmark/SCRIPT.py`) is one that command accepts. For `serve` that
is ours, the emulated device's, or one of SGLang's own ServerArgs flags (serve passes those through).

Only code is read: fenced blocks, indented blocks and inline `code` (which may wrap a line); a backslash-continued
line counts as one."""

from __future__ import annotations

import argparse
import functools
import importlib.util
import re
from pathlib import Path

import pytest

from sglang_fair.cli import build_parser
from sglang_fair.serve import build_parser as serve_parser

ROOT = Path(__file__).resolve().parents[2]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
NOT_COMMANDS = {"fault"}
"""`sglang-fair fault <kind>: ...` is the scheduler's log line for a policy fault (docs/reliability.md), not a
command."""


def option_strings(parser: argparse.ArgumentParser) -> set[str]:
    return {o for a in parser._actions for o in a.option_strings}


def subcommand_flags() -> dict[str, set[str]]:
    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    return {name: option_strings(p) for name, p in sub.choices.items()}


def serve_flags() -> set[str]:
    from sglang_fair.emulate import serve_args
    server_args = pytest.importorskip("sglang.srt.server_args")
    sglang = argparse.ArgumentParser()
    server_args.ServerArgs.add_cli_args(sglang)
    ours = {serve_args.FLAG, serve_args.JITTER_FLAG, serve_args.SEED_FLAG, serve_args.OVERLAP_FLAG}
    return option_strings(serve_parser()) | option_strings(sglang) | ours


class _Parser(Exception):
    pass


def script_flags(path: Path) -> set[str] | None:
    """The flags of a benchmark script's argparse parser, taken at its `parse_args` call (nothing after it runs);
    None for a script without one."""
    if "argparse" not in path.read_text():
        return None

    def grab(self, *args, **kwargs):
        raise _Parser(self)

    spec = importlib.util.spec_from_file_location(f"_doc_bench_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    original = argparse.ArgumentParser.parse_args
    argparse.ArgumentParser.parse_args = grab
    try:
        spec.loader.exec_module(module)
        module.main()
    except _Parser as got:
        return option_strings(got.args[0])
    finally:
        argparse.ArgumentParser.parse_args = original
    raise AssertionError(f"{path.name}: main() returned without parsing arguments")


def code_spans(text: str) -> list[str]:
    text = text.replace("\\\n", " ")
    fenced = re.findall(r"```.*?```", text, flags=re.S)
    prose = re.sub(r"```.*?```", "", text, flags=re.S)
    inline = [span.replace("\n", " ") for span in re.findall(r"`((?:[^`\n]|\n(?!\s*\n))+)`", prose)]  # wraps lines, not paragraphs
    return fenced + inline + [line for line in prose.splitlines() if line.startswith("    ")]


def commands_in(doc: str, text: str) -> list[tuple[str, str, str, str]]:
    """(doc, 'sglang-fair' or 'benchmark', subcommand or script, the rest of that command line)."""
    found = []
    for span in code_spans(text):
        for line in re.split(r"[;&|\n]|\$\(|\)", span):
            if m := re.search(r"sglang-fair +([\w-]+)(.*)", line):
                if m.group(1) not in NOT_COMMANDS:
                    found.append((doc, "sglang-fair", m.group(1), m.group(2)))
            elif m := re.search(r"benchmark/(\w+\.py)(.*)", line):
                found.append((doc, "benchmark", m.group(1), m.group(2)))
    return found


@functools.cache
def documented_commands() -> tuple[tuple[str, str, str, str], ...]:
    """`commands_in` over the README and docs/, read once for the tests of this module."""
    return tuple(c for doc in DOCS for c in commands_in(doc.name, doc.read_text()))


def problems_of(commands, known: dict[str, set[str]]) -> tuple[list[str], int]:
    """What is wrong with `commands` (subcommand -> accepted flags in `known`), and how many flags were checked."""
    scripts: dict[str, set[str] | None] = {}
    problems, checked = [], 0
    for doc, kind, name, rest in commands:
        if kind == "sglang-fair":
            if name not in known:
                problems.append(f"{doc}: `sglang-fair {name}`: no such subcommand")
                continue
            accepted, shown = known[name], f"sglang-fair {name}"
        else:
            path = ROOT / "benchmark" / name
            if not path.is_file():
                problems.append(f"{doc}: benchmark/{name}: no such script")
                continue
            if name not in scripts:
                scripts[name] = script_flags(path)
            accepted, shown = scripts[name], f"benchmark/{name}"
            if accepted is None:
                continue
        for flag in re.findall(r"(?<![\w-])(--[\w-]+)", rest):
            checked += 1
            if flag not in accepted:
                problems.append(f"{doc}: `{shown}` has no {flag}")
    return problems, checked


def test_every_documented_command_and_flag_exists():
    commands = documented_commands()
    known = subcommand_flags()
    known["serve"] = serve_flags()
    problems, checked = problems_of(commands, known)
    assert not problems, "\n".join(problems)
    # the docs do document commands: a broken extractor must not pass by finding nothing
    assert checked >= 200 and {"serve", "bench", "capacity", "sim"} <= {n for _, _, n, _ in commands}


def test_the_check_catches_a_stale_flag_a_renamed_subcommand_and_a_missing_script():
    text = ("Run `sglang-fair capacity --trace azure-code --no-such-flag 3`, then\n\n"
            "    sglang-fair simulate --trace x \\\n        --policies fair\n"
            "    python benchmark/sim_capacity.py --part stock --bogus\n"
            "    python benchmark/gone.py --out x\n"
            "```bash\nsglang-fair sim --trace azure-code --rate-scale 2 --json\n```\n"
            "It logs `sglang-fair fault invalid_plan: ...` once.\n")
    commands = commands_in("x.md", text)
    assert sorted((k, n) for _, k, n, _ in commands) == [("benchmark", "gone.py"), ("benchmark", "sim_capacity.py"),
                                                         ("sglang-fair", "capacity"), ("sglang-fair", "sim"),
                                                         ("sglang-fair", "simulate")]
    problems, checked = problems_of(commands, subcommand_flags())
    assert sorted(problems) == sorted(["x.md: `sglang-fair capacity` has no --no-such-flag",
                                       "x.md: `sglang-fair simulate`: no such subcommand",
                                       "x.md: `benchmark/sim_capacity.py` has no --bogus",
                                       "x.md: benchmark/gone.py: no such script"])
    assert checked == 7  # sim 3, capacity 2, sim_capacity.py 2; nothing is checked against an unknown command


SPEC_COMMANDS = {("sglang-fair", "sim"), ("sglang-fair", "capacity"), ("benchmark", "sim_capacity.py"),
                 ("benchmark", "conv_windows.py"), ("benchmark", "device_shapes.py")}
"""The commands whose --policy / --policies take simulator policy specs (sim/cli.py parse_policy_spec)."""


def spec_problem(spec: str) -> str | None:
    from sglang_fair.core.presets import load_preset
    from sglang_fair.sim.cli import make_runner
    from sglang_fair.sim.engine import EngineConfig
    try:
        make_runner([], spec, load_preset("a100-llama3-8b"), EngineConfig())  # validates the spec, runs nothing
    except ValueError as exc:
        return str(exc)
    return None


def documented_specs(commands) -> list[tuple[str, str]]:
    """(doc, spec) for every policy spec given to a simulator command; PLACEHOLDERS in capitals are skipped."""
    out = []
    for doc, kind, name, rest in commands:
        if (kind, name) in SPEC_COMMANDS:
            for m in re.finditer(r"--polic(?:y|ies)[ =]+([^\s`]+)", rest):
                out += [(doc, s) for s in m.group(1).split(",") if s and not s.isupper() and s != "..."]
    return out


def test_every_documented_policy_spec_builds():
    commands = documented_commands()
    specs = documented_specs(commands)
    problems = sorted({f"{doc}: {spec}: {p}" for doc, spec in specs if (p := spec_problem(spec))})
    assert not problems, "\n".join(problems)
    assert len({s for _, s in specs}) >= 20 and any("@" in s for _, s in specs) and any(
        s.endswith("+reject") for _, s in specs)


def test_a_renamed_policy_parameter_is_caught():
    commands = commands_in("x.md", "    sglang-fair capacity --trace t --policies fair@catchup=4,slai,P\n")
    assert documented_specs(commands) == [("x.md", "fair@catchup=4"), ("x.md", "slai")]
    assert "catchup" in spec_problem("fair@catchup=4") and spec_problem("fair@catchup_tokens=4") is None


def bench_policy_problems(commands) -> tuple[list[str], int]:
    """`sglang-fair bench --policies A,B`: each a live policy (with --emulate: an emulated-device one) or 'none'."""
    from sglang_fair.bench.emulated import EMULATED_POLICIES
    from sglang_fair.bench.policies import LIVE_POLICIES
    problems, checked = [], 0
    for doc, kind, name, rest in commands:
        if (kind, name) != ("sglang-fair", "bench"):
            continue
        known = EMULATED_POLICIES if "--emulate" in rest else LIVE_POLICIES
        for m in re.finditer(r"--policies[ =]+([^\s`]+)", rest):
            for p in m.group(1).split(","):
                checked += 1
                if p not in known and p != "none" and not p.isupper():
                    problems.append(f"{doc}: sglang-fair bench{' --emulate' * (known is EMULATED_POLICIES)}: "
                                    f"no policy {p!r}")
    return problems, checked


def test_every_documented_bench_policy_exists():
    commands = documented_commands()
    problems, checked = bench_policy_problems(commands)
    assert not problems, "\n".join(problems)
    assert checked >= 5
    wrong = commands_in("x.md", "`sglang-fair bench --quick --policies stock-mixed-2048,fair`")
    assert bench_policy_problems(wrong) == (["x.md: sglang-fair bench: no policy 'stock-mixed-2048'"], 2)
