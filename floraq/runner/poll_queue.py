"""`ServerQueue`: this process's runs in the server's queue, and when each waiting one starts.

The server serves its queue first come, first served, by creation (``created_at``); every
completion of a run frees a slot for the run at its head. So once one waiting run has been
seen started (an anchor: its ``created_at`` and ``started_at``), each completion after that
start starts the next of our runs behind it, and a waiting run's start is known from the
completions alone, with no poll of it (``core.poll_aim.start_by_completions``). Before any
start is seen, the earliest-created run seen ``pending`` stands in: it starts at the first
completion after that answer. Times are the server's seconds (its ``created_at``,
``started_at`` and ``completed_at``), so our clock's lags do not enter.

If other clients' runs share the slots, our runs start sooner than this says and are seen
later, never lost: the estimate only schedules polls, and a run that is still ``pending``
when polled waits for the next completion after that answer.
"""

from __future__ import annotations

import asyncio
import bisect
import math
from collections import deque
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

from floraq.core.poll_aim import start_by_completions

CHECKED = 10  # the waited starts whose prediction is checked
MISSES = 3  # of them started sooner than predicted: the model does not hold here


class ServerQueue:
    """Creation order, completions and the latest start seen of this process's runs."""

    def __init__(self) -> None:
        self._created: list[int] = []  # created_at (epoch ms) of every run sent or polled
        self._freed: list[float] = []  # completed_at (s) since the anchor, sorted
        self._anchor: tuple[int, float] | None = None  # (created_at ms, started_at s)
        self._mark: tuple[int, float] | None = None  # earliest created seen pending, and when
        self._running: set[int] = set()  # job ids whose last answer said running
        self._signal = asyncio.Event()
        self._offset: float | None = None  # our clock minus the server's, at best
        self._checks: deque[bool] = deque(maxlen=CHECKED)  # recent starts: did one come early?

    def sent(self, created_ms: int, offset: float) -> None:
        """A run of ours is in the server's queue (or was): its place in creation order.

        ``offset`` is its submitted time on our clock minus its ``created_at``: our clock
        minus the server's, plus how late the answer came; the least seen is the best.
        """
        bisect.insort(self._created, created_ms)
        self._offset = offset if self._offset is None else min(self._offset, offset)

    def on_our_clock(self, server_s: float, offset: float) -> float:
        """A server time (s) on our clock, by the best offset seen (``offset`` if none)."""
        return server_s + (offset if self._offset is None else min(offset, self._offset))

    def pending(self, job_id: int, created_ms: int, server_now: float) -> None:
        """A run answered ``pending`` at about ``server_now`` (the server's seconds)."""
        self._running.discard(job_id)
        if self._anchor is None and (self._mark is None or created_ms < self._mark[0]):
            self._mark = (created_ms, server_now)

    def running(
        self, job_id: int, created_ms: int, started: float, *, waited: bool, tolerance: float
    ) -> None:
        """A run answered ``running``; a run that waited is an anchor if it started last.

        ``waited``: it waited for a slot, and this is its first ``running`` answer. One
        that started more than ``tolerance`` s before the completions seen say (by the
        time it is seen started, the completions before its start have been seen: running
        runs are polled at their ends) counts against the model: other clients' runs free
        slots too, or the queue is not first come, first served. With ``MISSES`` of the
        last ``CHECKED`` off, it is not used (``tells``) until its predictions hold again.
        """
        self._running.add(job_id)
        if not waited:
            return
        basis = self._basis(created_ms)
        if basis is not None and basis[0] > 0:  # behind the anchor: a completion frees it
            said = start_by_completions(ahead=basis[0], since=basis[1], freed=self._freed)
            self._checks.append(said is None or started < said - tolerance)
        if self._anchor is not None and started <= self._anchor[1]:
            return
        self._anchor, self._mark = (created_ms, started), None
        del self._freed[: bisect.bisect_right(self._freed, started)]

    def finished(self, job_id: int, completed: float) -> None:
        """A run of ours ended at ``completed`` (server seconds): a slot freed then."""
        self._running.discard(job_id)
        if self._anchor is None or completed > self._anchor[1]:
            bisect.insort(self._freed, completed)
        self._signal.set()
        self._signal = asyncio.Event()

    def gone(self, job_id: int) -> None:
        """The run is no longer polled by this process (finished, failed or left)."""
        self._running.discard(job_id)

    def start_of(self, created_ms: int, not_before: float | None) -> float | None:
        """When (server seconds) the run created at ``created_ms`` starts, or None: not yet known.

        ``not_before`` is when it last answered ``pending``: it starts at a completion after
        that. None also when nothing can tell (no anchor, or none of our runs is running
        to free a slot, so the slots are held by others).
        """
        basis = self._basis(created_ms) if self.tells() else None
        if basis is None:
            return None
        ahead, since = basis
        start = start_by_completions(ahead=ahead, since=since, freed=self._freed)
        if start is None or not_before is None or start > not_before:
            return start
        return start_by_completions(ahead=1, since=not_before, freed=self._freed)

    def plan(
        self, created_ms: int, offset: float, not_before: float | None, *, now: float, after: float
    ) -> tuple[float, bool] | None:
        """(seconds to wait, whether to poll then) for a waiting run, or None: cannot tell.

        Its start known, the poll comes ``after`` it (``offset``: our clock minus the
        server's). Not yet known: wait without a poll, ``math.inf``. Either way the caller
        wakes at the next completion to think again (one seen late can put a start sooner).
        """
        if not self.tells():
            return None
        start = self.start_of(created_ms, not_before)
        if start is None:
            return math.inf, False
        return max(0.0, self.on_our_clock(start, offset) + after - now), True

    def not_started(self, created_ms: int, offset: float, now: float) -> bool:
        """Whether, by the completions seen, the run's turn has surely not come by ``now``."""
        if not self.tells():
            return False
        start = self.start_of(created_ms, None)
        return start is None or self.on_our_clock(start, offset) > now

    def tells(self) -> bool:
        """Whether completions will say when waiting runs start: an anchor (or a run seen
        pending) is known, and some run of ours is running or has ended since (our runs
        hold slots; waiting behind others' runs only, ours would wait in vain)."""
        known = self._anchor is not None or self._mark is not None
        holds = sum(self._checks) < MISSES
        return known and holds and bool(self._running or self._freed)

    def _basis(self, created_ms: int) -> tuple[int, float] | None:
        """(runs to start, itself included, after a moment; that moment), or None.

        Runs created in the same millisecond may be served in either order: a run counts
        itself first among them, and the anchor's ties as started, so a start is never
        put later than it can be (a poll that comes too soon is answered `pending`).
        """
        rank = bisect.bisect_left(self._created, created_ms) + 1
        if self._anchor is not None:
            created, started = self._anchor
            return rank - bisect.bisect_right(self._created, created), started
        if self._mark is not None:
            created, since = self._mark
            return rank - bisect.bisect_left(self._created, created), since
        return None

    def next_completion(self) -> Coroutine[Any, Any, bool]:
        """What to await for the next completion of one of our runs (from this call on)."""
        return self._signal.wait()

    async def sleep_until_freed(
        self, sleep: Callable[[float], Awaitable[None]], delay: float
    ) -> bool:
        """``sleep(delay)``, or less: until the next completion of one of our runs. True
        when a completion ended the wait."""
        slept = asyncio.ensure_future(sleep(delay))
        freed = asyncio.ensure_future(self.next_completion())
        waits = {slept, freed}
        try:
            await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
            return not slept.done()
        finally:
            for wait in waits:
                wait.cancel()
            await asyncio.gather(*waits, return_exceptions=True)
