"""`--emulate-device` flag handling (emulate/serve_args.py) and the scheduler hook (emulate/hook.py), without SGLang."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest

from sglang_fair.emulate import hook
from sglang_fair.emulate.device import DeviceSpec, kv_pool_tokens
from sglang_fair.emulate.serve_args import MICRO_SPEC, split_emulate_args

from test_emulate_pad import decode_batch, sleeping_forward


# ---- flags -------------------------------------------------------------------------------------------------------
def test_no_flag_leaves_argv_alone():
    argv = ["--fair-policy", "off", "--port", "30001"]
    assert split_emulate_args(argv) == (argv, None)


@pytest.mark.parametrize("argv", [["--emulate-device", "h100-llama3-8b:20", "--port", "1"],
                                  ["--port", "1", "--emulate-device=h100-llama3-8b:20"]])
def test_flag_is_taken_out_and_parsed(argv):
    rest, emu = split_emulate_args(argv)
    assert rest == ["--port", "1"]
    assert emu.spec == DeviceSpec("h100-llama3-8b", dilation=20.0)


def test_jitter_and_seed():
    rest, emu = split_emulate_args(["--emulate-jitter-cv", "0.05", "--emulate-device", "a100-llama3-8b",
                                    "--emulate-seed", "3", "--fair-policy", "fair"])
    assert rest == ["--fair-policy", "fair"] and (emu.spec.jitter_cv, emu.spec.seed) == (0.05, 3)


def test_overlap_is_emulated_by_default_and_can_be_turned_off():
    assert split_emulate_args(["--emulate-device", "a100-llama3-8b"])[1].spec.overlap is True
    rest, emu = split_emulate_args(["--emulate-device", "a100-llama3-8b", "--emulate-overlap", "off", "--port", "1"])
    assert rest == ["--port", "1"] and emu.spec.overlap is False
    assert hook.spec_from_env(emu.env()).overlap is False  # reaches the scheduler process


@pytest.mark.parametrize("argv,match", [
    (["--emulate-device"], "--emulate-device expects a value"),
    (["--emulate-device", "--port"], "--emulate-device expects a value"),
    (["--emulate-device", "tpu-v5"], "--emulate-device: unknown emulated device 'tpu-v5'"),
    (["--emulate-device", "a100-llama3-8b:x"], "--emulate-device: dilation .* must be a number"),
    (["--emulate-device", "a100-llama3-8b", "--emulate-jitter-cv", "lots"], "--emulate-jitter-cv must be a number"),
    (["--emulate-device", "a100-llama3-8b", "--emulate-jitter-cv", "-1"], "--emulate-jitter-cv"),
    (["--emulate-device", "a100-llama3-8b", "--emulate-seed", "1.5"], "--emulate-seed must be an integer"),
    (["--emulate-jitter-cv", "0.1"], "need --emulate-device"),
    (["--emulate-overlap", "off"], "need --emulate-device"),
    (["--emulate-device", "a100-llama3-8b", "--emulate-overlap", "yes"], "--emulate-overlap must be on or off"),
])
def test_flag_errors_name_the_flag(argv, match):
    with pytest.raises(ValueError, match=match):
        split_emulate_args(argv)


def test_server_args_size_the_kv_pool_like_the_gpu():
    _, emu = split_emulate_args(["--emulate-device", "a100-llama3-8b"])
    args = emu.sglang_args(["--model-path", "/m"])
    assert args[:2] == ["--model-path", "/m"]
    assert args[args.index("--max-total-tokens") + 1] == str(kv_pool_tokens())
    assert args[args.index("--chunked-prefill-size") + 1] == "8192" and "--disable-overlap-schedule" in args
    mine = emu.sglang_args(["--model-path", "/m", "--max-total-tokens", "5000", "--chunked-prefill-size=512"])
    assert mine.count("--max-total-tokens") == 1 and "5000" in mine and "--chunked-prefill-size" not in mine
    assert hook.spec_from_env(emu.env()) == emu.spec
    assert "EMULATED" in emu.banner()


def test_micro_model_is_small():
    assert (MICRO_SPEC.num_hidden_layers, MICRO_SPEC.hidden_size) == (2, 64)
    assert MICRO_SPEC.hidden_size // MICRO_SPEC.num_attention_heads == 64


# ---- environment and hooks -------------------------------------------------------------------------------------------
def test_spec_round_trips_through_the_environment():
    spec = DeviceSpec("h100-llama3-8b", dilation=7.5, jitter_cv=0.1, seed=4)
    assert hook.spec_from_env({hook.ENV_VAR: hook.spec_to_env(spec)}) == spec
    assert hook.spec_from_env({}) is None and hook.spec_from_env({hook.ENV_VAR: " "}) is None


@pytest.mark.parametrize("raw,match", [("{", "not JSON"), ("[1]", "JSON object"), ('{"speed": 2}', "unknown fields"),
                                       ('{"preset": "tpu"}', "unknown emulated device")])
def test_bad_environment_is_refused(raw, match):
    with pytest.raises(ValueError, match=match):
        hook.spec_from_env({hook.ENV_VAR: raw})
    with pytest.raises(SystemExit, match="invalid SGLANG_FAIR_EMULATE_DEVICE"):
        hook.register_from_env({hook.ENV_VAR: raw})


def test_no_environment_registers_nothing():
    assert hook.register_from_env({}) is None


def test_run_batch_hook_pads_and_reports_in_the_internal_state():
    around, after = hook._make_hooks(DeviceSpec("a100-llama3-8b", dilation=2.0))
    sched = SimpleNamespace(enable_overlap=False)
    assert hook.padder_of(sched) is None
    assert around(sleeping_forward(0.0), sched, decode_batch([1000] * 8)) == "result"
    padder = hook.padder_of(sched)
    assert padder is not None and padder.counters.iterations == 1
    result = after(SimpleNamespace(internal_state={}), SimpleNamespace(scheduler=sched))
    state = result.internal_state[hook.STATE_KEY]
    assert state["spec"] == "a100-llama3-8b:2" and state["active"] and state["iterations"] == 1
    assert state["recent"][0]["decode_rows"] == 8 and state["recent"][0]["prefill_tokens"] == 0
    assert state["overlap"] is True and state["overlap_credit_s"] == 0.0  # the first forward has nothing to hide
    json.dumps(state)


def test_policy_timing_starts_the_forward_where_the_emulated_overlap_loop_launched_it():
    """scheduler_hooks.around_run_batch (the policy's timing, outside the padder) sees forward start = run_batch
    call - the host time the padder credited, so the cost fit learns the device time, as on a GPU."""
    import time
    from sglang_fair.engine import scheduler_hooks

    around, _ = hook._make_hooks(DeviceSpec("a100-llama3-8b", dilation=2.0))
    seen = []
    sched = SimpleNamespace(enable_overlap=False, last_batch=None)
    from sglang_fair.engine.intake import ArrivalEstimate
    arrivals = ArrivalEstimate()
    setattr(sched, scheduler_hooks.ADAPTER_ATTR,
            SimpleNamespace(on_run_batch=lambda batch, t0, t1: seen.append((t0, t1)), arrivals=arrivals))

    def padded(self, batch):
        return around(sleeping_forward(0.0), self, batch)

    assert hook.padder_of(sched) is None and hook.launch_credit_s(sched) == 0.0
    scheduler_hooks.around_run_batch(padded, sched, decode_batch([1000] * 8))
    sched.last_batch = object()
    time.sleep(0.003)  # host work between the forwards
    scheduler_hooks.around_run_batch(padded, sched, decode_batch([1000] * 8))
    padder = hook.padder_of(sched)
    credit = hook.launch_credit_s(sched)
    assert 0.003 <= credit == padder.last_credit_s < padder.counters.emulated_s / 2
    (a0, a1), (b0, b1) = seen
    assert b0 == pytest.approx(a1, abs=0.001)  # the second forward "began" when the first one ended
    # the arrival estimate needs when run_batch was really called (after this pass read the socket), not the credit
    assert arrivals.forward_s == pytest.approx(b0 + credit, abs=0.001)


def test_run_batch_hook_refuses_the_overlap_scheduler():
    around, _ = hook._make_hooks(DeviceSpec())
    with pytest.raises(RuntimeError, match="--disable-overlap-schedule"):
        around(sleeping_forward(0.0), SimpleNamespace(enable_overlap=True), decode_batch([10]))


def test_planner_starts_from_the_device_preset_times_the_dilation(tmp_path):
    from sglang_fair.core.presets import load_preset

    _, emu = split_emulate_args(["--emulate-device", "h100-llama3-8b:4"])
    argv = emu.with_planner_prior(["--fair-policy", "fair"], tmp_path)
    assert argv[:2] == ["--fair-policy", "fair"] and argv[2] == "--fair-cost-model"
    got, want = load_preset(argv[3]), load_preset("h100-llama3-8b")
    assert got.coefficients() == pytest.approx(4 * want.coefficients())
    mine = ["--fair-cost-model", "a100-llama3-8b"]
    assert emu.with_planner_prior(mine, tmp_path) == mine


def test_cpu_server_args_without_a_kv_size_leave_it_to_serve():
    from sglang_fair.live.server import cpu_server_args
    sized = cpu_server_args(5000)
    i = sized.index("--max-total-tokens")
    assert sized[i + 1] == "5000"
    assert cpu_server_args(None) == sized[:i] + sized[i + 2:]  # the same flags, the emulated GPU's pool from serve


def test_policy_time_parameters_are_dilated_unless_the_user_set_them():
    from sglang_fair.config import RuntimeConfig
    from sglang_fair.policies.fair import FairParams

    _, emulate = split_emulate_args(["--emulate-device", "a100-llama3-8b:6"])
    cfg = emulate.with_dilated_policy_times(RuntimeConfig(policy="fair", policy_params={"max_budget_ms": 700.0}))
    assert cfg.policy_params == {"max_budget_ms": 700.0, "min_budget_ms": FairParams().min_budget_ms * 6}
    # a policy without time-valued parameters, the plugin off and dilation 1 are left alone
    sarathi = RuntimeConfig(policy="sarathi", policy_params={"token_budget": 512})
    assert emulate.with_dilated_policy_times(sarathi) == sarathi
    off = RuntimeConfig(policy="off")
    assert emulate.with_dilated_policy_times(off) == off
    _, plain = split_emulate_args(["--emulate-device", "a100-llama3-8b"])
    assert plain.spec.dilation == 1.0
    fair = RuntimeConfig(policy="fair")
    assert plain.with_dilated_policy_times(fair) == fair


def test_a_simulator_replay_of_an_emulated_server_runs_the_policy_times_that_server_ran():
    from sglang_fair.bench.emulated_report import dilated_sim_spec
    from sglang_fair.policies.fair import FairParams
    from sglang_fair.sim.cli import parse_policy_spec

    name, params = parse_policy_spec(dilated_sim_spec("fair", "fair", 6.0))
    assert name == "fair" and params == {"max_budget_ms": FairParams().max_budget_ms * 6,
                                         "min_budget_ms": FairParams().min_budget_ms * 6}
    _, params = parse_policy_spec(dilated_sim_spec("fair-admission-off", "fair@admission=off@max_budget_ms=700", 6.0))
    assert params["max_budget_ms"] == 700 and params["admission"] == "off"  # a value given is kept, as serve keeps it
    assert dilated_sim_spec("stock", "sglang-default", 6.0) == "sglang-default"  # SGLang itself: nothing dilated
    assert dilated_sim_spec("sarathi-512", "sarathi-512", 6.0) == "sarathi-512"  # no time-valued parameter
    assert dilated_sim_spec("fair", "fair", 1.0) == "fair"
