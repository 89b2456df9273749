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
from collections.abc import Callable
from dataclasses import dataclass

from floraq.ledger.leases import PgLeases

HEARTBEATS_PER_LEASE = 3  # renewals per lease period: two may be missed before it passes


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
        except Exception:  # any failure: the lease can no longer be proved
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
