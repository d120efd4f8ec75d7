"""/get_load (engine/http.py `LoadCache`): answers within its wait from the last figures while the scheduler is busy
or its RPC fails, never with an error (sglang-router 0.3.2 reads an error as -1, the least loaded worker)."""

from __future__ import annotations

import asyncio
import time

from sglang_fair.engine.http import LoadCache


class Scheduler:
    """The internal-state RPC: answers after `delay_s`, or raises."""

    def __init__(self) -> None:
        self.delay_s = 0.0
        self.fail = False
        self.load = 100
        self.calls = 0

    async def states(self):
        self.calls += 1
        await asyncio.sleep(self.delay_s)
        if self.fail:
            raise ConnectionError("scheduler gone")
        return [{"token_load": self.load, "admission_budget_tokens": 7, "num_running_reqs": 2,
                 "num_waiting_reqs": 1}]


def run(coro):
    return asyncio.run(coro)


def test_busy_scheduler_answers_from_the_last_figures_within_the_wait():
    sched = Scheduler()
    cache = LoadCache(sched.states, wait_s=0.05)

    async def scenario():
        first = await cache.get()
        assert first[0]["num_tokens"] == 100 and first[0]["age_s"] == 0.0
        sched.delay_s, sched.load = 1.0, 500  # a long forward: the RPC is answered only after it
        t0 = time.monotonic()
        answers = [await cache.get() for _ in range(3)]
        assert time.monotonic() - t0 < 0.5
        assert all(a[0]["num_tokens"] == 100 for a in answers)
        assert sched.calls == 2  # one refresh in flight, not one per request
        await asyncio.sleep(1.1)
        fresh = await cache.get()
        assert fresh[0]["num_tokens"] == 500
    run(scenario())


def test_failing_rpc_keeps_the_last_figures():
    sched = Scheduler()
    cache = LoadCache(sched.states, wait_s=0.05)

    async def scenario():
        await cache.get()
        sched.fail = True
        again = await cache.get()
        assert again[0]["num_tokens"] == 100 and cache.refresh_failures == 1
    run(scenario())


def test_before_any_answer_the_first_request_waits_then_reads_zero():
    sched = Scheduler()
    sched.delay_s = 0.3
    cache = LoadCache(sched.states, wait_s=0.01, first_wait_s=0.05)

    async def scenario():
        first = await cache.get()
        assert first == [{"dp_rank": 0, "num_tokens": 0, "admission_budget_tokens": None, "num_running_reqs": None,
                          "num_waiting_reqs": None, "age_s": None}]
        await asyncio.sleep(0.35)
        assert (await cache.get())[0]["num_tokens"] == 100
    run(scenario())
