"""Start-up refusals and self-test of an active policy (engine/selftest.py, serve.py) and the scheduler-intake SLO
check (engine/intake.py), with fake SGLang objects: configurations a policy cannot honour are refused naming the flag;
an SGLang whose internals differ from what the adapter relies on is refused naming what is missing; an invalid
per-request SLO that slipped past the HTTP layer is finished with an error naming the key."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
from types import SimpleNamespace

import pytest

from sglang_fair.config import SloConfig
from sglang_fair.engine import intake, scheduler_hooks, selftest
from sglang_fair.config import RuntimeConfig
from sglang_fair.serve import refused_sglang_flags


# ---- refused configurations ----------------------------------------------------------------------------------------
def fake_scheduler(**overrides):
    base = dict(chunked_prefill_size=2048, spec_algorithm=SimpleNamespace(is_none=lambda: True),
                disaggregation_mode=SimpleNamespace(value="null"), dllm_config=None, prefill_decode_interval=0,
                enable_hisparse=False, enable_priority_scheduling=False, enable_priority_preemption=False,
                schedule_policy="fcfs", prefill_delayer=None, is_generation=True)
    return SimpleNamespace(**{**base, **overrides})


def fake_parallel(**overrides):
    return SimpleNamespace(**{"tp_size": 1, "dp_size": 1, "attn_dp_size": 1, "pp_size": 1, **overrides})


@pytest.fixture
def parallel(monkeypatch):
    """SGLang's get_parallel() as the scheduler check calls it, answering what the test sets."""
    import sglang.srt.runtime_context as rc
    par = fake_parallel()
    monkeypatch.setattr(rc, "get_parallel", lambda: par)
    return par


def test_stock_configuration_is_not_refused(parallel):
    assert scheduler_hooks.unsupported_features(fake_scheduler()) == []


def test_dp_attention_is_refused_naming_the_flag(parallel):
    # --enable-dp-attention --dp-size 2 resolves to attn_dp_size=2, dp_size=1: the dp_size check alone let it through.
    parallel.attn_dp_size = 2
    problems = scheduler_hooks.unsupported_features(fake_scheduler())
    assert len(problems) == 1 and "--enable-dp-attention" in problems[0] and "--attn-dp-size" in problems[0]


def test_tensor_parallelism_is_refused_naming_the_flag(parallel):
    # Each TP rank plans on its own clock and measurements: the ranks' batches for one forward could differ.
    parallel.tp_size = 2
    problems = scheduler_hooks.unsupported_features(fake_scheduler())
    assert len(problems) == 1 and "--tp-size" in problems[0]


def test_priority_scheduling_is_refused_even_without_preemption(parallel):
    problems = scheduler_hooks.unsupported_features(fake_scheduler(enable_priority_scheduling=True))
    assert len(problems) == 1 and "--enable-priority-scheduling" in problems[0]


@pytest.mark.parametrize("overrides, flag", [
    ({"schedule_policy": "lpm"}, "--schedule-policy lpm"),
    ({"schedule_policy": "priority"}, "--schedule-policy priority"),
    ({"prefill_delayer": object()}, "--enable-prefill-delayer"),
    ({"min_free_slots_delayer": object()}, "--min-free-slots-delay"),
    ({"enable_priority_preemption": True}, "--enable-priority-scheduling"),
    ({"enable_pdmux": True}, "--enable-pdmux"),
])
def test_other_silently_overridden_features_are_refused(parallel, overrides, flag):
    problems = scheduler_hooks.unsupported_features(fake_scheduler(**overrides))
    assert len(problems) == 1 and flag in problems[0]


@pytest.mark.parametrize("args, flag", [
    (["--enable-dp-attention", "--dp-size", "2"], "--enable-dp-attention"),
    (["--attn-dp-size", "2"], "--attn-dp-size"),
    (["--attention-data-parallel-size=4"], "--attention-data-parallel-size"),
    (["--enable-priority-scheduling"], "--enable-priority-scheduling"),
    (["--schedule-policy", "lpm"], "--schedule-policy"),
    (["--chunked-prefill-size", "-1"], "--chunked-prefill-size"),
    (["--tensor-parallel-size", "2"], "--tensor-parallel-size"),
    (["--enable-pdmux"], "--enable-pdmux"),
    (["--min-free-slots-delay", "4"], "--min-free-slots-delay"),
])
def test_serve_refuses_these_flags_before_anything_loads(args, flag):
    cfg = RuntimeConfig(policy="fair")
    assert any(p.startswith(flag) for p in refused_sglang_flags(cfg, args))
    assert refused_sglang_flags(RuntimeConfig(policy="off"), args) == []  # stock SGLang takes them


def test_serve_accepts_the_harmless_spellings():
    cfg = RuntimeConfig(policy="slai")
    ok = ["--tp-size", "1", "--dp-size", "1", "--attn-dp-size=1", "--schedule-policy", "fcfs",
          "--chunked-prefill-size", "512", "--speculative-algorithm", "NONE", "--disaggregation-mode", "null",
          "--enable-mixed-chunk", "--min-free-slots-delay", "1"]
    assert refused_sglang_flags(cfg, ok) == []


def test_serve_exits_2_naming_the_flag():
    proc = subprocess.run([sys.executable, "-m", "sglang_fair.cli", "serve", "--enable-dp-attention", "--dp-size", "2",
                           "--model-path", "/nonexistent/model"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr
    assert "--enable-dp-attention" in proc.stderr and "--fair-policy off" in proc.stderr


# ---- SGLang internals ------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def real():
    """The SGLang 0.5.23 objects the self-test reads (imports SGLang's scheduler: ~15 s once)."""
    return selftest.sglang_objects()


def test_sglang_0_5_23_meets_every_requirement(real):
    assert all(v is not None for v in real.values()), [k for k, v in real.items() if v is None]
    assert selftest.missing_internals(real) == []


def _missing(real, **swap) -> list[str]:
    return selftest.missing_internals({**real, **swap})


def test_renamed_relay_buffer_is_refused(real):
    def resolve_forward_inputs(batch, future_map):  # a version that relays through another buffer
        batch.input_ids = future_map.next_tokens[batch.req_pool_indices]
    missing = _missing(real, resolve_forward_inputs=resolve_forward_inputs)
    assert len(missing) == 1 and "output_tokens_buf" in missing[0]


def test_admission_that_stopped_reading_the_knobs_at_call_time_is_refused(real):
    class Scheduler(real["Scheduler"]):
        def _get_new_batch_prefill_raw(self, prefill_delayer_single_pass, running_batch):
            return self.adder_for(running_batch, self.cached_chunk_size)  # sized once at start-up
    missing = _missing(real, Scheduler=Scheduler)
    # both requirements on that method name what it no longer reads
    assert len(missing) == 2 and "chunked_prefill_size" in missing[0] and "is_mixed_chunk" in missing[0]
    assert "chunked_req_limit" in missing[1]


def test_an_adder_that_ignores_the_chunked_request_limit_is_refused(real):
    class PrefillAdder(real["PrefillAdder"]):
        def add_chunked_req(self, req):
            return req  # continues the chunked request with the whole budget, whatever the cap
    missing = _missing(real, PrefillAdder=PrefillAdder)
    assert len(missing) == 1 and "chunked_req_limit" in missing[0] and "shortest_prefill_chunk_limit" in missing[0]


def test_renamed_time_stats_field_is_refused(real):
    @dataclasses.dataclass
    class SchedulerReqTimeStats:
        scheduler_recv_time: float = 0.0
        wait_queue_entry_time: float = 0.0
        prefill_finished_time: float = 0.0
        last_decode_time: float = 0.0  # renamed from last_decode_finish_time
    missing = _missing(real, SchedulerReqTimeStats=SchedulerReqTimeStats)
    assert len(missing) == 1 and "last_decode_finish_time" in missing[0]


def test_missing_reqs_finishing_inflight_is_refused(real, monkeypatch):
    monkeypatch.delattr(real["Scheduler"], "_reqs_finishing_inflight")
    missing = _missing(real)
    assert len(missing) == 1 and "_reqs_finishing_inflight" in missing[0]
    with pytest.raises(SystemExit, match="_reqs_finishing_inflight"):
        selftest.require_internals(real)


def test_missing_running_batch_view_hook_point_is_refused(real):
    @dataclasses.dataclass(frozen=True)
    class SchedulerLoadInquirer:
        get_running_reqs: object = None  # the field our view replaces, renamed
    missing = _missing(real, SchedulerLoadInquirer=SchedulerLoadInquirer)
    assert len(missing) == 1 and "get_running_batch" in missing[0]


def test_missing_class_is_refused(real):
    missing = _missing(real, FutureMap=None)
    assert len(missing) == 1 and "FutureMap" in missing[0]


def test_register_refuses_before_any_hook_applies(monkeypatch):
    from sglang.srt.plugins.hook_registry import HookRegistry
    monkeypatch.setattr(selftest, "missing_internals", lambda objects=None: ["Scheduler.something (needed for: x)"])
    before = dict(HookRegistry._hooks)
    with pytest.raises(SystemExit, match="Scheduler.something"):
        scheduler_hooks.register(RuntimeConfig(policy="fair"))
    assert dict(HookRegistry._hooks) == before


def test_live_scheduler_lacking_the_relay_or_the_view_is_named():
    sched = SimpleNamespace(chunked_prefill_size=1, is_mixed_chunk=False, waiting_queue=[], chunked_req=None,
                            running_batch=None, policy=None, max_total_num_tokens=1, token_to_kv_pool_allocator=None,
                            tree_cache=None, enable_lora=False, future_map=SimpleNamespace(output_tokens_buf=[0]),
                            load_inquirer=SimpleNamespace(get_running_batch=None),
                            invariant_checker=SimpleNamespace(get_running_batch=None))
    assert selftest.missing_live_internals(sched) == []
    del sched.future_map, sched.invariant_checker, sched.enable_lora
    missing = " ".join(selftest.missing_live_internals(sched))
    assert "future_map.output_tokens_buf" in missing and "invariant_checker.get_running_batch" in missing
    assert "Scheduler.enable_lora" in missing


# ---- per-request SLOs at the scheduler's intake ----------------------------------------------------------------------
class FakeReq:
    def __init__(self, custom_params=None, output_ids=()):
        self.rid = "r"
        self.sampling_params = SimpleNamespace(custom_params=custom_params)
        self.output_ids = list(output_ids)
        self.to_finish = None
        self.finished_reason = None

    def set_finish_with_abort(self, error_msg, status_code=400, err_type="BadRequestError"):
        self.to_finish = (error_msg, status_code)


def _intake_hook(cfg):
    specs = [s for s in scheduler_hooks.hook_specs(cfg) if s.target.endswith("._add_request_to_queue")]
    assert len(specs) == 1 and specs[0].kind == "before"
    return specs[0].fn


@pytest.mark.parametrize("params, key", [
    ({"ttft_slo_ms": -5}, "ttft_slo_ms"), ({"tpot_slo_ms": float("nan")}, "tpot_slo_ms"),
    ({"ttft_ms": 500}, "ttft_ms"), ({"strict": "yes"}, "strict"), ("not an object", "custom_params"),
])
def test_invalid_slo_is_aborted_at_intake_naming_the_key(params, key):
    hook = _intake_hook(RuntimeConfig(policy="fair"))
    req = FakeReq(params if not isinstance(params, dict) else {**params, "other": 1})
    assert hook(object(), req) is None
    message, status = req.to_finish
    assert key in message and status == 400 and message.startswith(intake.ERROR_PREFIX)
    # the snapshot never sees the bad value (it would count it and fall back to the defaults)
    left = req.sampling_params.custom_params
    assert left is None or (left == {"other": 1})


def test_valid_absent_and_retracted_requests_pass_untouched():
    hook = _intake_hook(RuntimeConfig(policy="slai"))
    for req in (FakeReq(), FakeReq({"ttft_slo_ms": 800, "strict": True}), FakeReq({"tpot_slo_ms": -1}, [5, 6])):
        params = req.sampling_params.custom_params
        hook(object(), req, is_retracted=True)
        assert req.to_finish is None and req.sampling_params.custom_params == params
    already = FakeReq({"ttft_slo_ms": 0})
    already.to_finish = ("prompt too long", 400)
    hook(object(), already)
    assert already.to_finish == ("prompt too long", 400)  # SGLang's own reason is kept


def test_policy_off_leaves_intake_stock():
    assert not [s for s in scheduler_hooks.hook_specs(RuntimeConfig(policy="off"))
                if s.target.endswith("._add_request_to_queue")]


def test_intake_uses_the_server_defaults_for_validation():
    assert intake.slo_problem(FakeReq({"ttft_slo_ms": 5}), SloConfig(ttft_slo_ms=1.0, tpot_slo_ms=1.0)) is None
