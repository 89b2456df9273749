"""The retry policy as data: what is retried, how long to wait, and when to stop.

Both HTTP edges (``api.py`` and ``downloads.py``) run their own loops, but every
decision about waiting or giving up is made here, by ``RetryState``, from the table
below. ``Throttle`` is the shared brake: a 429 pauses every request of a client, not
only the one that got it, and halves how many may be in flight.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from enum import StrEnum
from types import TracebackType

import httpx


class Rule(StrEnum):
    RETRY_AFTER = "retry_after"  # wait what the server asked (capped), 5 s if it did not say
    BACKOFF = "backoff"  # capped exponential back-off with full jitter, bounded
    NEVER = "never"  # retrying cannot help: raise at once


STATUS_RULES: Mapping[int, Rule] = {
    429: Rule.RETRY_AFTER,
    500: Rule.BACKOFF,
    502: Rule.BACKOFF,
    503: Rule.BACKOFF,
    504: Rule.BACKOFF,
    400: Rule.NEVER,
    401: Rule.NEVER,
    402: Rule.NEVER,
    403: Rule.NEVER,
    404: Rule.NEVER,
    409: Rule.NEVER,
    422: Rule.NEVER,
}

# No HTTP answer at all: connect/read/write errors, resets, timeouts, a cut-off body.
RETRIED_ERRORS: tuple[type[httpx.HTTPError], ...] = (
    httpx.TimeoutException,
    httpx.NetworkError,
    httpx.RemoteProtocolError,
)

# Methods safe to repeat as they are; a POST is repeated only with an idempotency key.
IDEMPOTENT_METHODS: frozenset[str] = frozenset({"GET", "HEAD", "OPTIONS", "PUT", "DELETE"})


def rule_for_status(status: int) -> Rule:
    """How to react to an HTTP status; anything not in the table is never retried."""
    return STATUS_RULES.get(status, Rule.NEVER)


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """How hard one request tries before it gives up; every wait is in seconds."""

    max_attempts: int = 6
    max_elapsed: float = 300.0
    base_delay: float = 0.5
    max_delay: float = 30.0
    default_retry_after: float = 5.0
    max_retry_after: float = 60.0
    max_identical_5xx: int = 3
    time_scale: float = 1.0  # multiplies every wait (tests/sandbox use 0.01)


def backoff_delay(policy: RetryPolicy, attempt: int, rand: float) -> float:
    """Full jitter: anywhere in [0, min(cap, base * 2**attempt)), so retries spread out."""
    ceiling = min(policy.max_delay, policy.base_delay * 2.0 ** min(attempt, 64))
    return rand * ceiling * policy.time_scale


def retry_after_delay(policy: RetryPolicy, retry_after: float | None) -> float:
    """The wait a 429 asks for: `Retry-After` capped, or the vendor's 5 s when absent."""
    seconds = policy.default_retry_after if retry_after is None else retry_after
    return max(0.0, min(seconds, policy.max_retry_after)) * policy.time_scale


class RetryState:
    """One request's retry budget: attempts made, time spent, identical 5xx in a row.

    Call ``delay_for`` after each failed attempt; it answers how long to wait before the
    next one, or None to give up. Time spent counts the waits even when ``sleep`` is a
    fake, so a test sees the time bound without sleeping.
    """

    def __init__(
        self,
        policy: RetryPolicy,
        *,
        rand: Callable[[], float],
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._policy = policy
        self._rand = rand
        self._clock = clock
        self._started = clock()
        self._waited = 0.0
        self._backoffs = 0
        self._last_identity: tuple[int, str] | None = None
        self._identical = 0
        self.attempts = 1

    @property
    def identical(self) -> int:
        """Identical 5xx-like answers in a row so far (0 when the last answer was not one)."""
        return self._identical

    def delay_for(
        self,
        rule: Rule,
        *,
        identity: tuple[int, str] | None = None,
        retry_after: float | None = None,
    ) -> float | None:
        """The wait before the next attempt, or None when this request should stop.

        ``identity`` is the (status, code) of a 5xx-like answer; ``max_identical_5xx`` of
        the same identity in a row end the request even with attempts to spare.
        """
        policy = self._policy
        if identity is not None and identity == self._last_identity:
            self._identical += 1
        else:
            self._identical = 1 if identity is not None else 0
        self._last_identity = identity
        if rule is Rule.NEVER or self.attempts >= policy.max_attempts:
            return None
        if identity is not None and self._identical >= policy.max_identical_5xx:
            return None
        if rule is Rule.RETRY_AFTER:
            delay = retry_after_delay(policy, retry_after)
        else:
            delay = backoff_delay(policy, self._backoffs, self._rand())
            self._backoffs += 1
        elapsed = max(self._clock() - self._started, self._waited)
        if elapsed + delay > policy.max_elapsed:
            return None
        self._waited += delay
        self.attempts += 1
        return delay


class Throttle:
    """Shared by every request of one client: a common pause after a 429, and AIMD.

    ``async with throttle:`` waits until any shared pause is over, then for one of
    ``limit`` slots. A 429 halves ``limit`` (once per pause, not once per request that
    was already in flight); ``increase_after`` successes in a row add one slot back.
    Several processes share one through the ledger (``floraq.runner.limits``): their
    pauses (``honour_pause``) and their learned limit (``set_limit``).
    """

    def __init__(
        self,
        *,
        max_concurrency: int,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        increase_after: int = 10,
    ) -> None:
        if max_concurrency < 1:
            raise ValueError(f"max_concurrency must be at least 1, not {max_concurrency}")
        self.max_concurrency = max_concurrency
        self._clock = clock
        self._sleep = sleep
        self._increase_after = increase_after
        self._limit = max_concurrency
        self._in_flight = 0
        self._successes = 0
        self._paused_until = float("-inf")
        self._unshared = 0  # 429s of ours whose pause the other workers have not heard of
        self._waiters: deque[asyncio.Future[None]] = deque()
        self.on_change: Callable[[], None] | None = None  # told of each 429's pause

    @property
    def limit(self) -> int:
        """How many requests may be in flight right now."""
        return self._limit

    @property
    def in_flight(self) -> int:
        return self._in_flight

    def paused_for(self) -> float:
        """Seconds left in the shared pause (0 when none)."""
        return max(0.0, self._paused_until - self._clock())

    def pause_all(self, seconds: float) -> None:
        """Nobody sends before now + seconds (a 429 here); a longer pause already set is kept.

        The pause is also kept for ``take_unshared``, and ``on_change`` is told, so other
        workers of the workspace hear of it (``floraq.runner.limits``).
        """
        self._paused_until = max(self._paused_until, self._clock() + seconds)
        self._unshared += 1
        if self.on_change is not None:
            self.on_change()

    def honour_pause(self, seconds: float) -> None:
        """Another worker's pause, read from the ledger: kept like ours, never shared back."""
        self._paused_until = max(self._paused_until, self._clock() + seconds)

    def take_unshared(self) -> tuple[float, int] | None:
        """Seconds left of a pause of ours not yet shared, and how many 429s set it (then
        forgotten); None when there is none."""
        if not self._unshared:
            return None
        count, self._unshared = self._unshared, 0
        return self.paused_for(), count

    def set_limit(self, limit: int) -> None:
        """Take up the concurrency learned elsewhere (the ledger), within 1..max."""
        self._limit = max(1, min(limit, self.max_concurrency))
        self._successes = 0
        self._wake()

    def on_rate_limited(self) -> None:
        """Multiplicative decrease: halve the allowed concurrency (min 1)."""
        self._successes = 0
        if self.paused_for() > 0:
            return
        self._limit = max(1, self._limit // 2)

    def on_success(self) -> None:
        """Additive increase: one more slot after ``increase_after`` successes in a row."""
        self._successes += 1
        if self._successes >= self._increase_after and self._limit < self.max_concurrency:
            self._limit += 1
            self._successes = 0
            self._wake()

    async def __aenter__(self) -> Throttle:
        slept_until = await self._wait_out_pause(None)
        await self._acquire()
        try:
            await self._wait_out_pause(slept_until)
        except BaseException:
            self._release()
            raise
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._release()

    async def _wait_out_pause(self, slept_until: float | None) -> float | None:
        # Sleep once per distinct deadline, so a fake sleep never spins on a real clock.
        while self._paused_until != slept_until:
            until = self._paused_until
            wait = until - self._clock()
            if wait <= 0:
                break
            await self._sleep(wait)
            slept_until = until
        return slept_until

    async def _acquire(self) -> None:
        if self._in_flight < self._limit and not self._waiters:
            self._in_flight += 1
            return
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        try:
            await waiter
        except asyncio.CancelledError:
            if waiter.done() and not waiter.cancelled():
                self._release()  # the slot was handed to us just as we were cancelled
            elif waiter in self._waiters:
                self._waiters.remove(waiter)
            raise

    def _release(self) -> None:
        self._in_flight -= 1
        self._wake()

    def _wake(self) -> None:
        while self._waiters and self._in_flight < self._limit:
            waiter = self._waiters.popleft()
            if not waiter.done():
                self._in_flight += 1
                waiter.set_result(None)
