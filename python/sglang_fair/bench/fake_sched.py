"""Stand-ins for the SGLang 0.5.23 scheduler objects the adapter reads and changes, for `plan-bench --adapter`.

The same approach as test/unit/test_adapter_steps.py (a scheduler carrying the attributes the adapter touches), with
what one whole step needs: a running batch that can be filtered and merged (parking), a sampling-info dataclass to
split, and a seeded loaded instance. Nothing here imports SGLang; the radix cache reads as off (SGLang's own prefix
matching is not ours to time).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from types import SimpleNamespace

import numpy as np


class FakeMode:
    """ForwardMode's predicates the adapter calls."""

    def __init__(self, name: str) -> None:
        self.name = name

    def is_decode(self) -> bool:
        return self.name == "decode"

    def is_extend(self) -> bool:
        return self.name in ("extend", "mixed")

    def is_mixed(self) -> bool:
        return self.name == "mixed"


DECODE, EXTEND, MIXED = FakeMode("decode"), FakeMode("extend"), FakeMode("mixed")


class FakeReq:
    """The Req attributes the adapter and the snapshot builder read (prompt and output ids as real int lists)."""

    def __init__(self, rid: str, *, prompt_tokens: int, output_tokens: int, recv_s: float, prefill_done_s: float,
                 last_decode_s: float, max_new_tokens: int, prefix_len: int = 0, custom_params=None) -> None:
        self.rid = rid
        self.time_stats = SimpleNamespace(scheduler_recv_time=recv_s, wait_queue_entry_time=recv_s,
                                          prefill_finished_time=prefill_done_s, last_decode_finish_time=last_decode_s)
        self.sampling_params = SimpleNamespace(custom_params=custom_params, max_new_tokens=max_new_tokens,
                                               ignore_eos=False)
        self.origin_input_ids = list(range(prompt_tokens))
        self.output_ids = [7] * output_tokens
        self.prefix_len = prefix_len
        self.return_logprob = False
        self.beam_group = None
        self.input_embeds = None
        self.is_retracted = False
        self.grammar = None
        self.done = False

    @property
    def seqlen(self) -> int:
        return len(self.origin_input_ids) + len(self.output_ids)

    def finished(self) -> bool:
        return self.done


@dataclass
class FakeSamplingInfo:
    """SamplingBatchInfo's shape for deferral.split_sampling_info: per-row lists, no penalizers."""

    temperatures: list = field(default_factory=list)
    penalizer_orchestrator: object = None
    return_sampling_masks: object = None


class FakeBatch:
    """ScheduleBatch: rows, their sampling info, and filter / merge as parking uses them."""

    def __init__(self, reqs, mode: FakeMode = DECODE) -> None:
        self.reqs = list(reqs)
        self.forward_mode = mode
        self.sampling_info = FakeSamplingInfo(temperatures=[1.0] * len(self.reqs))
        self.spec_info = None
        self.decoding_reqs = None
        self.extend_lens = self.prefix_lens = None
        self.batch_is_full = False

    def is_empty(self) -> bool:
        return not self.reqs

    def check_decode_mem(self) -> bool:
        return True

    def filter_batch(self, keep_indices=None) -> None:
        if keep_indices is None:
            keep_indices = [i for i, r in enumerate(self.reqs) if not r.finished()]
        self.reqs = [self.reqs[i] for i in keep_indices]
        t = self.sampling_info.temperatures
        self.sampling_info = dataclasses.replace(self.sampling_info, temperatures=[t[i] for i in keep_indices])

    def merge_batch(self, other: "FakeBatch") -> None:
        self.reqs += other.reqs
        self.sampling_info.temperatures = self.sampling_info.temperatures + other.sampling_info.temperatures


class FakeSched:
    """Scheduler: queues, KV pool, chunk knobs, policy object; no grammar requests and no radix cache."""

    def __init__(self, *, running, waiting, capacity_tokens: int, free_tokens: int) -> None:
        self.device = "cpu"
        self.waiting_queue = list(waiting)
        self.chunked_req = None
        self.running_batch = FakeBatch(running)
        self.last_batch = None
        self.grammar_manager = None
        self.tree_cache = SimpleNamespace(supports_prefix_sharing=lambda: False, evictable_size=lambda: 0)
        self.max_total_num_tokens = capacity_tokens
        self.token_to_kv_pool_allocator = SimpleNamespace(available_size=lambda: free_tokens)
        self.chunked_prefill_size = 8192
        self.is_mixed_chunk = False
        self.enable_lora = False
        self.policy = SimpleNamespace()
        self.server_args = SimpleNamespace(enable_mixed_chunk=True)

    def _add_request_to_queue(self, req) -> None:
        self.waiting_queue.append(req)

    def get_prefill_adder_class(self):
        return object  # the stand-in get_new_batch_prefill builds no PrefillAdder


@dataclass(frozen=True)
class LoadShape:
    """A loaded instance: sizes, SLOs (seconds) and the share of requests carrying their own (strict) SLOs."""

    running: int = 256
    waiting: int = 1000
    ttft_slo_s: float = 2.0
    tpot_slo_s: float = 0.1
    strict_share: float = 0.05
    kv_headroom_tokens: int = 200_000


def waiting_req(rid: str, rng: np.random.Generator, now_s: float, shape: LoadShape) -> FakeReq:
    """A waiting request that arrived up to 1.5 s ago, prompt 32..4096, some with a prefix hit or their own SLOs."""
    strict = bool(rng.random() < shape.strict_share)
    params = {"ttft_slo_ms": shape.ttft_slo_s * 500.0, "strict": True} if strict else None
    prompt = int(rng.integers(32, 4096))
    return FakeReq(rid, prompt_tokens=prompt, output_tokens=0, recv_s=now_s - float(rng.uniform(0.0, 1.5)),
                   prefill_done_s=0.0, last_decode_s=0.0, max_new_tokens=int(rng.integers(16, 512)),
                   prefix_len=int(rng.integers(0, prompt // 2)) if rng.random() < 0.3 else 0, custom_params=params)


def loaded_scheduler(shape: LoadShape, seed: int, now_s: float) -> FakeSched:
    """A seeded busy scheduler at time `now_s` (perf_counter clock): `shape.running` decodes with slacks in
    [-50 ms, 1 s] in the running batch, `shape.waiting` requests in the waiting queue (SGLang's queue order, not
    sorted by arrival)."""
    rng = np.random.default_rng(seed)
    running = []
    for i in range(shape.running):
        out = int(rng.integers(1, 400))
        slack = float(rng.uniform(-0.05, 1.0))
        arrival = now_s + slack - shape.ttft_slo_s - out * shape.tpot_slo_s
        strict = bool(rng.random() < shape.strict_share)
        running.append(FakeReq(f"d{seed}-{i}", prompt_tokens=int(rng.integers(32, 4096)), output_tokens=out,
                               recv_s=arrival, prefill_done_s=arrival + shape.ttft_slo_s - float(rng.uniform(0, 1)),
                               last_decode_s=now_s - float(rng.uniform(0.0, 0.2)),
                               max_new_tokens=out + int(rng.integers(1, 400)),
                               custom_params={"strict": True} if strict else None))
    waiting = [waiting_req(f"w{seed}-{i}", rng, now_s, shape) for i in range(shape.waiting)]
    used = sum(r.seqlen for r in running)
    capacity = used + shape.kv_headroom_tokens
    return FakeSched(running=running, waiting=waiting, capacity_tokens=capacity, free_tokens=capacity - used)
