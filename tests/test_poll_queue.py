"""A waiting run's start from the completions seen (core.poll_aim, runner.poll_queue)."""

from __future__ import annotations

import asyncio
import math

import pytest

from floraq.core.poll_aim import start_by_completions
from floraq.runner.poll_queue import ServerQueue

FREED = [10.0, 12.0, 15.0, 15.5, 20.0]


def test_each_completion_after_the_moment_starts_the_next_run() -> None:
    assert start_by_completions(ahead=1, since=11.0, freed=FREED) == 12.0
    assert start_by_completions(ahead=3, since=11.0, freed=FREED) == 15.5
    assert start_by_completions(ahead=1, since=12.0, freed=FREED) == 15.0  # strictly after
    assert start_by_completions(ahead=5, since=11.0, freed=FREED) is None  # not yet seen
    assert start_by_completions(ahead=0, since=11.0, freed=FREED) == 11.0  # ahead of it


def _queue(*created: int) -> ServerQueue:
    queue = ServerQueue()
    for ms in created:
        queue.sent(ms, 0.25)
    return queue


def test_before_any_start_the_earliest_pending_run_stands_in() -> None:
    """Runs 1-2 run; 3-5 say pending at 2 s: 3 starts at the first completion after it."""
    queue = _queue(1000, 1001, 1002, 1003, 1004)
    assert not queue.tells()  # nothing seen yet
    queue.running(1, 1000, 1.0, waited=False, tolerance=0.5)
    queue.running(2, 1001, 1.0, waited=False, tolerance=0.5)
    queue.pending(4, 1003, 2.1)
    queue.pending(3, 1002, 2.0)
    assert queue.tells()
    assert queue.start_of(1002, not_before=2.0) is None  # no completion yet: wait
    queue.finished(1, 7.0)
    assert queue.start_of(1002, not_before=2.0) == 7.0
    assert queue.start_of(1003, not_before=2.1) is None  # needs a second completion
    queue.finished(2, 9.0)
    assert queue.start_of(1003, not_before=2.1) == 9.0


def test_a_waited_start_anchors_the_queue() -> None:
    """Run 3 seen started at 7 s after waiting: completions after 7 s start 4, then 5."""
    queue = _queue(1000, 1001, 1002, 1003, 1004)
    queue.running(1, 1000, 1.0, waited=False, tolerance=0.5)
    queue.pending(3, 1002, 2.0)
    queue.finished(2, 7.0)
    queue.running(3, 1002, 7.0, waited=True, tolerance=0.5)
    queue.finished(1, 8.0)
    assert queue.start_of(1003, not_before=None) == 8.0
    assert queue.start_of(1004, not_before=None) is None
    queue.finished(3, 11.0)
    assert queue.start_of(1004, not_before=None) == 11.0
    # still pending when polled at 12 s: it starts at a completion after that answer
    assert queue.start_of(1004, not_before=12.0) is None
    queue.finished(9, 13.0)
    assert queue.start_of(1004, not_before=12.0) == 13.0


def test_nothing_to_tell_when_none_of_ours_runs() -> None:
    """Waiting behind others' runs only: our completions will not say when it starts."""
    queue = _queue(1000, 1001)
    queue.pending(1, 1000, 2.0)
    assert not queue.tells()
    assert queue.start_of(1000, not_before=2.0) is None
    queue.running(2, 1001, 3.0, waited=False, tolerance=0.5)
    queue.gone(2)
    assert not queue.tells()


def test_a_completion_wakes_the_waiters() -> None:
    async def main() -> bool:
        queue = _queue(1000)
        waiter = asyncio.ensure_future(queue.next_completion())
        await asyncio.sleep(0)
        assert not waiter.done()
        queue.finished(1, 5.0)
        await asyncio.sleep(0)
        return waiter.done()

    assert asyncio.run(main())


def test_a_completion_cuts_the_sleep_short() -> None:
    """A run waiting for a slot wakes at our next completion, not at the end of its sleep."""

    async def main() -> list[float]:
        queue, slept = _queue(1000), []
        forever = asyncio.Event()

        async def sleep(seconds: float) -> None:
            slept.append(seconds)
            await forever.wait()  # a fake clock that never moves

        waiter = asyncio.ensure_future(queue.sleep_until_freed(sleep, 300.0))
        await asyncio.sleep(0)
        queue.finished(1, 5.0)
        assert await asyncio.wait_for(waiter, timeout=5)  # woken by the completion
        assert not await queue.sleep_until_freed(_no_wait, 300.0)  # the sleep ended first
        return slept

    assert asyncio.run(main()) == [300.0]


async def _no_wait(seconds: float) -> None:
    pass


def test_runs_created_in_one_millisecond_are_never_put_late() -> None:
    """Two runs created at 1002 ms: each may be the first served, so each says so."""
    queue = _queue(1000, 1001, 1002, 1002, 1003)
    queue.running(1, 1000, 1.0, waited=False, tolerance=0.5)
    queue.pending(2, 1001, 2.0)
    queue.finished(1, 5.0)
    queue.finished(9, 6.0)
    assert queue.start_of(1001, not_before=2.0) == 5.0
    assert queue.start_of(1002, not_before=None) == 6.0  # either of the two
    assert queue.start_of(1003, not_before=None) is None  # behind both: a third completion


def test_runs_that_start_sooner_than_said_turn_the_model_off() -> None:
    """Another client's runs free slots too: ours start sooner than our completions say."""
    queue = _queue(*range(1000, 1020))
    queue.running(1, 1000, 1.0, waited=False, tolerance=0.5)
    queue.pending(2, 1001, 2.0)
    assert queue.tells()
    queue.finished(100, 10.0)  # says run 1001 starts at 10 s ...
    queue.running(2, 1001, 7.0, waited=True, tolerance=0.5)  # ... it started at 7 s
    assert queue.tells()  # one miss may be a completion seen late
    queue.running(3, 1002, 8.0, waited=True, tolerance=0.5)  # none of ours ended since 7 s
    queue.running(4, 1003, 9.0, waited=True, tolerance=0.5)
    assert not queue.tells()  # the old estimate (starts seen, rates) takes over


def test_starts_as_said_keep_the_model_on() -> None:
    queue = _queue(*range(1000, 1020))
    queue.running(1, 1000, 1.0, waited=False, tolerance=0.5)
    queue.pending(2, 1001, 2.0)
    for n, created in enumerate(range(1001, 1011)):
        queue.finished(100 + n, 10.0 + n)
        queue.running(2 + n, created, 10.0 + n, waited=True, tolerance=0.5)
    assert queue.tells()


def test_the_plan_for_a_waiting_run() -> None:
    """Start known: poll ``after`` it, on our clock; not yet: wait unpolled; else None."""
    queue = _queue(1000, 1001, 1002)
    assert queue.plan(1001, 0.25, 2.0, now=3.0, after=5.0) is None  # nothing seen yet
    assert not queue.not_started(1001, 0.25, now=3.0)  # so: poll as usual
    queue.running(1, 1000, 1.0, waited=False, tolerance=0.5)
    queue.pending(2, 1001, 2.0)
    assert queue.plan(1001, 0.25, 2.0, now=3.0, after=5.0) == (math.inf, False)
    assert queue.not_started(1002, 0.25, now=3.0)
    queue.finished(1, 6.0)
    assert queue.plan(1001, 0.25, 2.0, now=7.0, after=5.0) == (4.25, True)  # 6 + 0.25 + 5 - 7
    assert queue.plan(1001, 0.25, 2.0, now=20.0, after=5.0) == (0.0, True)  # overdue: now
    assert not queue.not_started(1001, 0.25, now=7.0)
    assert queue.not_started(1002, 0.25, now=7.0)  # behind it: a second completion


def test_the_least_offset_seen_maps_server_times() -> None:
    """Each run's submitted time is late by its answer's latency: the least is the best."""
    queue = ServerQueue()
    assert queue.on_our_clock(100.0, 0.3) == 100.3  # nothing seen: the run's own
    queue.sent(1000, 0.3)
    queue.sent(1001, 0.1)
    queue.sent(1002, 0.2)
    assert queue.on_our_clock(100.0, 0.3) == pytest.approx(100.1)
    assert queue.on_our_clock(100.0, 0.05) == 100.05  # a run's own, if it is less
