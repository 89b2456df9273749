"""A worker's lease on a PostgreSQL ledger, as the runner keeps it: register, beat, let go.

The server's clock decides when a lease ends; this process only measures how long ago it
asked (``time.monotonic``), so it knows a lower bound of the time its lease has left
without ever comparing its clock with another machine's. A POST attempt may leave only
while that lower bound is longer than the attempt's whole deadline: then no worker that
takes the row over can send the same key while this attempt may still be in flight.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from floraq.core.lifecycle import IN_FLIGHT, JobState
from floraq.errors import LedgerConnectionLost
from floraq.ledger import JobRecord
from floraq.ledger.leases import PgLeases

if TYPE_CHECKING:
    from floraq.runner.context import RunContext

HEARTBEATS_PER_LEASE = 3  # renewals per lease period: two may be missed before it passes
LOOK_AGAIN = 0.25  # of a lease: how often a worker looks for rows a dead worker left
CLAIM_WINDOW = 2  # x concurrency: leased queued rows waiting for their claim, at most
_IN_FLIGHT = tuple(s for s in JobState if s in IN_FLIGHT)


def post_deadline(lease_seconds: float, deadline: float) -> float:
    """One POST attempt's deadline on a leased ledger: it must fit in a lease with room."""
    return min(deadline, lease_seconds / HEARTBEATS_PER_LEASE)


@dataclass(slots=True)
class LeaseKeeper:
    """This worker's lease: when it surely lasts until, and whether it has been lost."""

    ledger: PgLeases
    seconds: float
    deadline: float  # the whole deadline of one POST attempt
    clock: Callable[[], float] = time.monotonic
    until: float = 0.0  # on ``clock``: the lease lasts at least until then
    lost: bool = False
    broken: LedgerConnectionLost | None = None  # why, when the connection itself went

    def start(self) -> str:
        """Register this worker with a fresh lease; its id (tags its part files)."""
        asked = self.clock()
        worker, left = self.ledger.register_worker(self.seconds)
        self.until = asked + left
        return worker

    def renew(self) -> bool:
        """Renew now; False (and lost for good) if the lease had passed or the server failed."""
        if self.lost:
            return False
        asked = self.clock()
        try:
            left = self.ledger.renew_lease(self.seconds)
        except LedgerConnectionLost as exc:
            # Gone while the lease still held: the connection broke (said as itself, exit
            # 8). Gone after it passed: this worker stalled, and the server ended its
            # session for that (a lapse, exit 6).
            self.broken = exc if self.until > asked else None
            left = None
        except Exception:  # any other failure: the lease can no longer be proved
            left = None
        if left is None:
            self.lost = True
            return False
        self.until = asked + left
        return True

    def left(self) -> float:
        return self.until - self.clock()

    def held(self) -> bool:
        """Whether this worker still holds its lease (renewing it if it may have passed)."""
        return not self.lost and (self.left() > 0 or self.renew())

    def may_send(self) -> bool:
        """Whether one more POST attempt may leave now (renewing first if it is too close)."""
        if self.lost:
            return False
        if self.left() > self.deadline:
            return True
        return self.renew() and self.left() > self.deadline

    async def beat(self, on_lost: Callable[[], None]) -> None:
        """Renew the lease every third of its length until cancelled, or until it is lost."""
        while True:
            await asyncio.sleep(self.seconds / HEARTBEATS_PER_LEASE)
            if not self.renew():
                on_lost()
                return

    def release(self) -> None:
        """Hand back every row this worker leases (a clean end)."""
        try:
            self.ledger.release_worker()
        except Exception:
            if not self.lost:
                raise
            self.ledger.worker = None  # unreachable: its rows pass to others with its lease


async def lease_tasks(
    ctx: RunContext,
    lease: LeaseKeeper,
    names: list[str],
    start: Callable[[JobRecord], Awaitable[bool]],
) -> None:
    """A worker on a shared ledger: lease rows as it has room for them, start a task each.

    In-flight rows (a dead worker's: their runs may exist) fill every free slot; queued
    rows are leased a few at a time (``CLAIM_WINDOW``), as this worker claims them, so
    the workers share a batch instead of the first one leasing all of it. The worker ends
    when it has no task left and no row it drives is held by no live worker or by a worker
    that stopped beating (those it waits for: their lease passes, then it takes them over).
    """
    ctx.claims_moved = asyncio.Event()
    window = CLAIM_WINDOW * ctx.config.concurrency
    look_again = lease.seconds * LOOK_AGAIN
    next_look = 0.0  # on lease.clock: when to look for a dead worker's in-flight rows again
    while not ctx.stop_all:
        if not lease.held():  # stalled past its lease (stopped, starved): others have it
            ctx.lease_lost()
            return
        ctx.claims_moved.clear()
        started = 0
        in_flight = lease.clock() >= next_look
        if in_flight:
            next_look = lease.clock() + look_again
        for job in _lease_page(ctx, lease, names, window, in_flight=in_flight):
            if not await start(job):
                return
            started += 1
        if started:
            continue
        if not ctx.tasks:
            if not _left_elsewhere(ctx, lease, names):
                return
            next_look = 0.0  # some may be takeable by the next turn: look for them then
        await _until_something_moves(ctx, look_again)


def _lease_page(
    ctx: RunContext, lease: LeaseKeeper, names: list[str], window: int, *, in_flight: bool
) -> list[JobRecord]:
    """In-flight rows for every free slot (when ``in_flight``: they only appear when a
    worker dies, so they are looked for now and then), then queued rows up to the window."""
    free = ctx.config.max_outstanding - len(ctx.tasks)
    if free <= 0:
        return []
    ledger = lease.ledger
    states = _IN_FLIGHT if ctx.config.wait else (JobState.SUBMITTING,)
    page = ledger.lease_jobs(batches=names, states=states, limit=free) if in_flight else []
    room = min(free - len(page), window - len(ctx.unclaimed))
    open_batches = [name for name in names if not ctx.submitting_stopped(name)]
    if room > 0 and open_batches:
        queued = ledger.lease_jobs(batches=open_batches, states=(JobState.QUEUED,), limit=room)
        ctx.unclaimed.update(job.id for job in queued)
        page += queued
    return page


def _left_elsewhere(ctx: RunContext, lease: LeaseKeeper, names: list[str]) -> int:
    """Rows of the states this worker drives (in flight, only sending with --no-wait; queued,
    of the batches still open) that no live worker holds, or whose worker stopped beating.

    Rows nobody holds count too: a worker that ends hands its rows back, and a worker whose
    lease lapsed hands back those nobody had taken yet; ending then would leave rows this
    worker could take (and its exit code would count them as undone).
    """
    return lease.ledger.left_elsewhere(
        batches=names,
        states=_IN_FLIGHT if ctx.config.wait else (JobState.SUBMITTING,),
        queued_batches=[name for name in names if not ctx.submitting_stopped(name)],
        after=lease.seconds / HEARTBEATS_PER_LEASE * 1.5,
    )


async def _until_something_moves(ctx: RunContext, timeout: float) -> None:
    """Wait for a task to end, a claim to be decided, or ``timeout`` seconds."""
    assert ctx.claims_moved is not None
    moved = asyncio.ensure_future(ctx.claims_moved.wait())
    try:
        await asyncio.wait({*ctx.tasks, moved}, timeout=timeout, return_when="FIRST_COMPLETED")
    finally:
        moved.cancel()
