"""The shared poll budget at work: every poll of the loop waits here for a token.

``core.poll_budget`` decides (the bucket, the rate, who goes first); this module only
keeps the waiters and wakes them. A poll that finds a token and nobody queued goes at
once, so a batch within its budget is not slowed at all.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
from collections.abc import Awaitable, Callable

from floraq.core.poll_budget import Bucket, PollRank

BURST_SECONDS = 5.0  # the bucket holds this many seconds' worth of polls (a batch's start)


class PollGate:
    """Tokens for polls, refilled at a rate the loop adjusts; the likeliest-finished first."""

    def __init__(
        self,
        *,
        rate: float,
        clock: Callable[[], float],
        sleep: Callable[[float], Awaitable[None]],
    ) -> None:
        burst = max(1.0, rate * BURST_SECONDS)
        self._bucket = Bucket(rate=rate, burst=burst, tokens=burst, at=clock())
        self._clock = clock
        self._sleep = sleep
        self._waiting: list[tuple[PollRank, float, int, asyncio.Future[None]]] = []
        self._order = itertools.count()
        self._dispatcher: asyncio.Task[None] | None = None

    @property
    def rate(self) -> float:
        return self._bucket.rate

    def set_rate(self, rate: float) -> None:
        """Refill at ``rate`` per second from now (the bucket keeps its tokens)."""
        now = self._clock()
        bucket = self._bucket.with_rate(rate, now)
        self._bucket = Bucket(rate, max(1.0, rate * BURST_SECONDS), bucket.tokens, bucket.at)

    async def admit(self, rank: PollRank, now: float) -> None:
        """Return once this poll may go: at once if a token is free and nobody waits.

        ``now`` is the loop's clock as the poll came due (the caller has just read it);
        among waiters of one rank, the one due first goes first.
        """
        if not self._waiting:
            bucket, wait = self._bucket.take(now)
            if wait == 0.0:
                self._bucket = bucket
                return
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        heapq.heappush(self._waiting, (rank, now, next(self._order), future))
        if self._dispatcher is None or self._dispatcher.done():
            self._dispatcher = asyncio.create_task(self._dispatch())
        await future

    async def _dispatch(self) -> None:
        """Hand each token, as it comes, to the best waiter still waiting."""
        while True:
            while self._waiting and self._waiting[0][3].done():
                heapq.heappop(self._waiting)  # its task was cancelled
            if not self._waiting:
                return
            bucket, wait = self._bucket.take(self._clock())
            if wait > 0.0:
                await self._sleep(wait)
                continue
            self._bucket = bucket
            heapq.heappop(self._waiting)[3].set_result(None)

    def close(self) -> None:
        """Stop handing out tokens (the loop is ending); every waiter is cancelled too."""
        if self._dispatcher is not None:
            self._dispatcher.cancel()
        for *_, future in self._waiting:
            future.cancel()
        self._waiting.clear()
