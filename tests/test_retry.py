"""The retry policy table, the per-request retry budget and the shared throttle."""

from __future__ import annotations

import asyncio

import pytest

from floraq.retry import (
    RetryPolicy,
    RetryState,
    Rule,
    Throttle,
    backoff_delay,
    retry_after_delay,
    rule_for_status,
)


class FakeTime:
    """A clock that only moves when someone sleeps."""

    def __init__(self) -> None:
        self.now = 1000.0
        self.sleeps: list[float] = []

    def clock(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds
        await asyncio.sleep(0)


@pytest.mark.parametrize(
    ("attempt", "rand", "expected"),
    [(0, 1.0, 0.5), (1, 1.0, 1.0), (2, 0.5, 1.0), (6, 1.0, 30.0), (50, 1.0, 30.0), (3, 0.0, 0.0)],
)
def test_backoff_is_full_jitter_capped(attempt: int, rand: float, expected: float) -> None:
    """The wait is rand * min(30, 0.5 * 2**attempt)."""
    assert backoff_delay(RetryPolicy(), attempt, rand) == expected


def test_time_scale_multiplies_every_wait() -> None:
    """time_scale shrinks back-off and Retry-After waits alike."""
    policy = RetryPolicy(time_scale=0.01)
    assert backoff_delay(policy, 6, 1.0) == pytest.approx(0.3)
    assert retry_after_delay(policy, None) == pytest.approx(0.05)


@pytest.mark.parametrize(("header", "expected"), [(None, 5.0), (2.0, 2.0), (600.0, 60.0)])
def test_retry_after_defaults_to_5s_and_is_capped(header: float | None, expected: float) -> None:
    """A 429 waits Retry-After (capped at 60 s), or 5 s without one."""
    assert retry_after_delay(RetryPolicy(), header) == expected


@pytest.mark.parametrize(
    ("status", "rule"),
    [(429, Rule.RETRY_AFTER)]
    + [(s, Rule.BACKOFF) for s in (500, 502, 503, 504)]
    + [(s, Rule.NEVER) for s in (400, 401, 402, 403, 404, 409, 422, 501, 418)],
)
def test_status_table(status: int, rule: Rule) -> None:
    """429 waits, 500/502/503/504 back off, every other status is never retried."""
    assert rule_for_status(status) is rule


def test_attempts_are_bounded() -> None:
    """Six attempts means five waits, then give up."""
    state = RetryState(RetryPolicy(), rand=lambda: 1.0)
    delays = [state.delay_for(Rule.BACKOFF) for _ in range(6)]
    assert delays == [0.5, 1.0, 2.0, 4.0, 8.0, None]
    assert state.attempts == 6


def test_identical_5xx_stop_after_three() -> None:
    """The third identical (status, code) answer in a row ends the request."""
    state = RetryState(RetryPolicy(), rand=lambda: 1.0)
    same = (500, "unknown_error")
    assert state.delay_for(Rule.BACKOFF, identity=same) == 0.5
    assert state.delay_for(Rule.BACKOFF, identity=same) == 1.0
    assert state.delay_for(Rule.BACKOFF, identity=same) is None


def test_different_5xx_do_not_count_as_identical() -> None:
    """Alternating 500 and 503 run until the attempt bound instead."""
    state = RetryState(RetryPolicy(), rand=lambda: 0.0)
    answers = [(500, "unknown_error"), (503, "service_unavailable")] * 3
    delays = [state.delay_for(Rule.BACKOFF, identity=a) for a in answers]
    assert delays == [0.0] * 5 + [None]


def test_total_time_is_bounded_even_with_fake_sleep() -> None:
    """Waits count toward max_elapsed, so a 429 storm gives up in bounded time."""
    state = RetryState(RetryPolicy(max_attempts=100, max_elapsed=12.0), rand=lambda: 1.0)
    assert state.delay_for(Rule.RETRY_AFTER) == 5.0
    assert state.delay_for(Rule.RETRY_AFTER) == 5.0
    assert state.delay_for(Rule.RETRY_AFTER) is None


def test_never_rule_gives_up_at_once() -> None:
    """A 4xx answer is never retried."""
    assert RetryState(RetryPolicy(), rand=lambda: 1.0).delay_for(Rule.NEVER) is None


def test_throttle_pause_delays_entry() -> None:
    """After pause_all(3), entering waits out the remaining pause."""
    fake = FakeTime()

    async def scenario() -> None:
        throttle = Throttle(max_concurrency=2, clock=fake.clock, sleep=fake.sleep)
        throttle.pause_all(3.0)
        fake.now += 1.0
        async with throttle:
            pass

    asyncio.run(scenario())
    assert fake.sleeps == [2.0]


def test_throttle_caps_concurrency() -> None:
    """No more than `limit` bodies run at once."""
    peak = 0
    running = 0

    async def work(throttle: Throttle) -> None:
        nonlocal peak, running
        async with throttle:
            running += 1
            peak = max(peak, running)
            await asyncio.sleep(0.001)
            running -= 1

    async def scenario() -> None:
        throttle = Throttle(max_concurrency=3)
        await asyncio.gather(*(work(throttle) for _ in range(12)))
        assert throttle.in_flight == 0

    asyncio.run(scenario())
    assert peak == 3


def test_rate_limit_halves_once_per_pause_and_recovers_slowly() -> None:
    """AIMD: 8 -> 4 on a 429, no second cut during its pause, +1 after N successes."""
    fake = FakeTime()
    throttle = Throttle(max_concurrency=8, clock=fake.clock, sleep=fake.sleep, increase_after=3)
    throttle.on_rate_limited()
    throttle.pause_all(5.0)
    throttle.on_rate_limited()
    assert throttle.limit == 4
    fake.now += 6.0
    throttle.on_rate_limited()
    assert throttle.limit == 2
    for _ in range(3):
        throttle.on_success()
    assert throttle.limit == 3


def test_rate_limit_never_drops_below_one() -> None:
    """Halving stops at one slot."""
    throttle = Throttle(max_concurrency=2)
    for _ in range(5):
        throttle.on_rate_limited()
    assert throttle.limit == 1


def test_cancelled_waiter_gives_its_slot_back() -> None:
    """A task cancelled while queued for a slot does not leak it."""

    async def scenario() -> int:
        throttle = Throttle(max_concurrency=1)
        async with throttle:
            waiter = asyncio.create_task(throttle.__aenter__())
            await asyncio.sleep(0)
            waiter.cancel()
            with pytest.raises(asyncio.CancelledError):
                await waiter
        async with throttle:
            return throttle.in_flight

    assert asyncio.run(scenario()) == 1


def test_our_pause_is_kept_for_sharing_once_and_another_workers_is_not() -> None:
    """``take_unshared`` hands a 429's pause to the ledger once; an honoured one never."""
    fake = FakeTime()
    told: list[bool] = []
    throttle = Throttle(max_concurrency=4, clock=fake.clock, sleep=fake.sleep)
    throttle.on_change = lambda: told.append(True)
    throttle.honour_pause(7.0)
    assert (throttle.paused_for(), throttle.take_unshared(), told) == (7.0, None, [])
    throttle.pause_all(3.0)  # shorter than the honoured pause: the longer one stands
    throttle.pause_all(2.0)
    assert (throttle.take_unshared(), told) == ((7.0, 2), [True, True])
    assert throttle.take_unshared() is None


def test_set_limit_takes_up_a_learned_limit_within_bounds() -> None:
    throttle = Throttle(max_concurrency=4)
    throttle.set_limit(2)
    assert throttle.limit == 2
    throttle.set_limit(9)
    assert throttle.limit == 4
    throttle.set_limit(0)
    assert throttle.limit == 1
