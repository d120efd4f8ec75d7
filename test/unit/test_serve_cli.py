"""`sglang-fair serve` flag handling: our flags are validated before any model loads; SGLang flags pass through."""

import json
import subprocess
import sys

import pytest

from sglang_fair.config import ENV_VAR, RuntimeConfig
from sglang_fair.serve import build_parser, runtime_config, sglang_args


def run_serve(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "sglang_fair.cli", "serve", *args], capture_output=True, text=True,
                          timeout=120)


@pytest.mark.parametrize("args, flag", [
    (["--fair-policy", "bogus"], "--fair-policy"),
    (["--ttft-slo-ms", "-5"], "--ttft-slo-ms"),
    (["--tpot-slo-ms", "0"], "--tpot-slo-ms"),
    (["--tpot-slo-ms", "nan"], "--tpot-slo-ms"),
    (["--fair-param", "no_equals_sign"], "--fair-param"),
    (["--fair-load-horizon-ms", "-1"], "--fair-load-horizon-ms"),
    (["--fair-trace", "/nonexistent/folder/trace.jsonl"], "--fair-trace"),
    (["--fair-trace", "/tmp"], "--fair-trace"),  # a folder, not a file
    (["--fair-trace", "/tmp/t.jsonl", "--fair-trace-max-mb", "0"], "--fair-trace-max-mb"),
    (["--fair-trace", "/tmp/t.jsonl", "--fair-policy", "off"], "--fair-trace"),  # off traces only an emulated device
])
def test_bad_flags_exit_nonzero_naming_the_flag(args, flag):
    # --model-path points nowhere: the process must fail on our flag before it ever looks at the model.
    proc = run_serve(*args, "--model-path", "/nonexistent/model")
    assert proc.returncode == 2, proc.stderr
    assert flag in proc.stderr
    assert "Traceback" not in proc.stderr


def test_a_trace_path_another_server_is_writing_is_refused(tmp_path):
    path = tmp_path / "shared.jsonl"
    holder = subprocess.Popen([sys.executable, "-c", (
        "import sys, time; from sglang_fair.core.trace import TraceWriter\n"
        f"w = TraceWriter({str(path)!r}, 1 << 20); w.write('plan', {{'seq': 1}}); w.flush()\n"
        "print('held', flush=True); time.sleep(120)")], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        proc = run_serve("--fair-trace", str(path), "--model-path", "/nonexistent/model")
        assert proc.returncode == 2, proc.stderr
        assert "--fair-trace" in proc.stderr and f"pid {holder.pid}" in proc.stderr and "Traceback" not in proc.stderr
    finally:
        holder.kill()
        holder.wait()


def test_unknown_policy_param_is_rejected_by_the_policy():
    proc = run_serve("--fair-policy", "sarathi", "--fair-param", "no_such_knob=3", "--model-path", "/nonexistent")
    assert proc.returncode == 2
    assert "--fair-param" in proc.stderr and "no_such_knob" in proc.stderr


def test_runtime_config_round_trips_through_the_environment():
    ns, rest = build_parser().parse_known_args(
        ["--fair-policy", "sarathi", "--ttft-slo-ms", "1500", "--fair-param", "token_budget=512", "--port", "1234",
         "--fair-trace", "rel-trace.jsonl", "--fair-trace-max-mb", "5"])
    cfg = runtime_config(ns)
    assert cfg.trace_path.startswith("/") and cfg.trace_path.endswith("/rel-trace.jsonl") and cfg.trace_max_mb == 5
    assert rest == ["--port", "1234"]
    back = RuntimeConfig.from_env({ENV_VAR: cfg.to_json()})
    assert back == cfg
    assert back.policy_params == {"token_budget": 512} and back.slo.ttft_slo_ms == 1500
    assert RuntimeConfig.from_env({}) is None


def test_cpu_defaults_are_added_only_where_the_user_gave_none():
    args = sglang_args(["--model-path", "m", "--attention-backend", "triton", "--max-total-tokens=999"], cpu=True)
    assert args.count("--attention-backend") == 1 and "triton" in args
    assert "--max-total-tokens" not in args  # given in the --flag=value form
    assert args[args.index("--device") + 1] == "cpu"
    assert "--sleep-on-idle" in args and args[args.index("--host") + 1] == "127.0.0.1"
    gpu = sglang_args(["--model-path", "m", "--host", "0.0.0.0"], cpu=False)
    assert "--device" not in gpu and gpu[gpu.index("--host") + 1] == "0.0.0.0" and gpu.count("--host") == 1


def test_cpu_dtype_is_float32_unless_the_cpu_computes_bf16_natively(monkeypatch):
    from sglang_fair import serve
    assert serve.cpu_dtype_default("flags : fpu sse avx avx2 fma") == "float32"
    assert serve.cpu_dtype_default("flags : fpu avx2 avx512f avx512_bf16") == "auto"
    assert serve.cpu_dtype_default("flags : fpu avx2 amx_bf16 amx_tile") == "auto"
    monkeypatch.setattr(serve, "cpu_dtype_default", lambda cpuinfo=None: "float32")
    args = sglang_args(["--model-path", "m"], cpu=True)
    assert args[args.index("--dtype") + 1] == "float32"
    assert sglang_args(["--model-path", "m", "--dtype", "bfloat16"], cpu=True).count("--dtype") == 1
    assert "--dtype" not in sglang_args(["--model-path", "m"], cpu=False)


def test_cpu_runs_without_the_overlap_loop_and_fair_gets_its_cpu_parameters():
    from sglang_fair.config import CPU_FAIR_PARAMS, with_cpu_policy_defaults
    assert "--disable-overlap-schedule" in sglang_args(["--model-path", "m"], cpu=True)
    assert "--disable-overlap-schedule" not in sglang_args(["--model-path", "m"], cpu=False)
    parse = build_parser().parse_known_args
    cfg = with_cpu_policy_defaults(runtime_config(parse(["--fair-policy", "fair"])[0]))
    assert cfg.policy_params == CPU_FAIR_PARAMS and cfg.policy_params["catchup_tokens"] > 0
    given = runtime_config(parse(["--fair-policy", "fair", "--fair-param", "catchup_tokens=0"])[0])
    assert with_cpu_policy_defaults(given).policy_params == {"catchup_tokens": 0}  # the user's value wins
    other = runtime_config(parse(["--fair-policy", "sarathi"])[0])
    assert with_cpu_policy_defaults(other) is other


def test_corrupt_environment_config_stops_the_process_instead_of_running_stock():
    code = ("import os; os.environ[%r] = '{\"policy\": \"bogus\"}'\n"
            "from sglang_fair.engine.plugin import load\nload()") % ENV_VAR
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode != 0 and "bogus" in proc.stderr


def test_plugin_is_inert_without_the_environment_config():
    code = ("import os; os.environ.pop(%r, None)\n"
            "from sglang.srt.plugins.hook_registry import HookRegistry\n"
            "from sglang_fair.engine.plugin import load\nload()\n"
            "import json; print(json.dumps(sorted(HookRegistry._hooks)))") % ENV_VAR
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout.strip().splitlines()[-1]) == []
