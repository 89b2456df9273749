"""The shared poll budget: a token bucket (core.poll_budget) and the gate every poll waits at."""

from __future__ import annotations

import asyncio
import math

import pytest

from floraq.core.poll_budget import Bucket, PollRank, budget_rate, rank
from floraq.runner.poll_gate import BURST_SECONDS, PollGate


@pytest.mark.parametrize(
    ("tokens", "at", "now", "after", "wait"),
    [
        (3.0, 0.0, 0.0, 2.0, 0.0),  # a token: taken at once
        (0.0, 0.0, 0.0, 0.0, 0.5),  # empty at 2/s: the next one comes in 0.5 s
        (0.0, 0.0, 0.25, 0.5, 0.25),  # half a token by now
        (0.0, 0.0, 0.5, 0.0, 0.0),  # a whole token by now: taken
        (0.0, 0.0, 100.0, 3.0, 0.0),  # refills to the burst (4), not beyond
        (2.0, 10.0, 5.0, 1.0, 0.0),  # a clock that went back adds nothing
    ],
)
def test_bucket_table(tokens: float, at: float, now: float, after: float, wait: float) -> None:
    """Tokens refill at the rate up to the burst; an empty bucket says how long to wait."""
    bucket = Bucket(rate=2.0, burst=4.0, tokens=tokens, at=at)
    got, waited = bucket.take(now)
    assert (got.tokens, waited) == (pytest.approx(after), pytest.approx(wait))


def test_bucket_without_a_limit_never_waits() -> None:
    bucket = Bucket(rate=math.inf, burst=math.inf, tokens=math.inf, at=0.0)
    for now in (0.0, 0.0, 1.0):
        bucket, wait = bucket.take(now)
        assert wait == 0.0


@pytest.mark.parametrize(
    ("floor", "completions", "rate"),
    [(10.0, None, 10.0), (10.0, 1.0, 10.0), (10.0, 20.0, 60.0), (10.0, math.nan, 10.0)],
)
def test_budget_rate_table(floor: float, completions: float | None, rate: float) -> None:
    """Three polls per completed run, never below the floor."""
    assert budget_rate(floor, completions) == rate


@pytest.mark.parametrize(
    ("pending", "predicted", "expected"),
    [
        (True, False, PollRank.PENDING),
        (True, True, PollRank.PENDING),
        (False, True, PollRank.DUE),
        (False, False, PollRank.RUNNING),
    ],
)
def test_rank_table(pending: bool, predicted: bool, expected: PollRank) -> None:
    assert rank(pending=pending, predicted=predicted) is expected


class FakeTime:
    """A clock that only moves when the gate sleeps (after the tasks it woke have run)."""

    def __init__(self) -> None:
        self.now = 0.0

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(0)
        self.now += seconds


def test_gate_within_budget_never_waits() -> None:
    """Polls under the rate go at once, without a sleep."""
    time = FakeTime()

    async def main() -> None:
        gate = PollGate(rate=5.0, clock=lambda: time.now, sleep=time.sleep)
        for _ in range(int(5.0 * BURST_SECONDS)):  # the burst: BURST_SECONDS' worth
            await gate.admit(PollRank.RUNNING, 0.0)
        gate.close()

    asyncio.run(main())
    assert time.now == 0.0


def test_gate_over_budget_serves_the_likeliest_finished_first() -> None:
    """Past the burst, polls go at the rate, due runs before running ones before pending."""
    time = FakeTime()
    order: list[tuple[str, float]] = []

    async def main() -> None:
        gate = PollGate(rate=1.0, clock=lambda: time.now, sleep=time.sleep)
        for _ in range(int(BURST_SECONDS)):
            await gate.admit(PollRank.RUNNING, 0.0)  # the burst is spent

        async def poll(name: str, which: PollRank, due: float) -> None:
            await gate.admit(which, due)
            order.append((name, time.now))

        await asyncio.gather(
            poll("pending", PollRank.PENDING, 0.0),
            poll("running late", PollRank.RUNNING, 1.0),
            poll("due", PollRank.DUE, 2.0),
            poll("running early", PollRank.RUNNING, 0.5),
        )
        gate.close()

    asyncio.run(main())
    assert order == [
        ("due", pytest.approx(1.0)),
        ("running early", pytest.approx(2.0)),
        ("running late", pytest.approx(3.0)),
        ("pending", pytest.approx(4.0)),
    ]


def test_gate_skips_a_cancelled_waiter() -> None:
    """A poll whose task was cancelled while it waited does not use up a token."""
    time = FakeTime()
    served: list[str] = []

    async def main() -> None:
        gate = PollGate(rate=1.0, clock=lambda: time.now, sleep=time.sleep)
        for _ in range(int(BURST_SECONDS)):
            await gate.admit(PollRank.RUNNING, 0.0)

        async def poll(name: str, which: PollRank) -> None:
            await gate.admit(which, 0.0)
            served.append(name)

        doomed = asyncio.create_task(poll("cancelled", PollRank.DUE))
        kept = asyncio.create_task(poll("kept", PollRank.PENDING))
        await asyncio.sleep(0)
        doomed.cancel()
        await kept
        gate.close()

    asyncio.run(main())
    assert served == ["kept"]
    assert time.now == pytest.approx(1.0)
