"""The throttle shared through the ledger: one pause and one learned concurrency per workspace.

FLORA limits a workspace, not a process: a 429 one worker sees must pause every worker
sending under that workspace, and the concurrency learned tonight is where tomorrow
starts. ``SharedRate`` reads the ledger's row before the first request (``start``), then
at least every ``READ_EVERY`` seconds and at once after a 429 of ours (``run``), and
once more at the end (``finish``). The rules are ``floraq.core.limits``'s.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable

import httpx

from floraq.core.limits import (
    READ_EVERY,
    WRITE_EVERY,
    ApiLimit,
    LimitKey,
    key_workspace,
    reconcile,
    starting,
    sync_interval,
)
from floraq.errors import DiskError, LedgerError
from floraq.ledger import LedgerBackend
from floraq.retry import Throttle


def limit_key(base_url: str, key_fingerprint: str) -> LimitKey:
    """The shared row of this API (host and port) and this key's workspace."""
    url = httpx.URL(base_url)
    host = url.host + (f":{url.port}" if url.port is not None else "")
    return LimitKey(api_host=host, workspace=key_workspace(key_fingerprint))


class SharedRate:
    """Keeps one process's ``Throttle`` and the ledger's shared row in step."""

    def __init__(
        self,
        ledger: LedgerBackend,
        throttle: Throttle,
        key: LimitKey,
        *,
        time_scale: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.key = key
        self._ledger = ledger
        self._throttle = throttle
        self._clock = clock
        self._read_every = sync_interval(READ_EVERY, time_scale)
        self._write_every = sync_interval(WRITE_EVERY, time_scale)
        self._learned = starting(None, throttle.max_concurrency)
        self._failure: Exception | None = None  # what stopped a sync started by a 429

    def start(self) -> None:
        """Before the first request: a pause in force is honoured, the learned limit taken."""
        row = self._ledger.api_limit(self.key)
        self._learned = starting(row.concurrency if row else None, self._throttle.max_concurrency)
        self._throttle.set_limit(self._learned.set_to)
        if row is not None and row.pause_left > 0:
            self._throttle.honour_pause(row.pause_left)

    def sync(self, *, final: bool = False) -> None:
        """Share our pause (if any), take up the others', and merge the learned limit."""
        throttle = self._throttle
        ours = throttle.take_unshared()
        row: ApiLimit | None
        if ours is not None:
            row = self._ledger.rate_limited(self.key, pause=ours[0], count=ours[1])
        else:
            row = self._ledger.api_limit(self.key)
        if row is not None and row.pause_left > 0:
            throttle.honour_pause(row.pause_left)
        step = reconcile(
            self._learned,
            local=throttle.limit,
            shared=row.concurrency if row else None,
            cap=throttle.max_concurrency,
            now=self._clock(),
            write_every=self._write_every,
            final=final,
        )
        if step.limit is not None:
            throttle.set_limit(step.limit)
        if step.write is not None:
            self._ledger.save_concurrency(self.key, step.write)
        self._learned = step.learned

    async def run(self) -> None:
        """Sync until cancelled: every ``READ_EVERY`` (scaled), and at once after our 429."""
        loop = asyncio.get_running_loop()

        def soon() -> None:
            loop.call_soon(self._sync_now)

        self._throttle.on_change = soon
        try:
            while self._failure is None:
                await asyncio.sleep(self._read_every)
                self.sync()
        except (LedgerError, DiskError):
            return  # the rows' own commits meet the same trouble and report it
        finally:
            self._throttle.on_change = None
        if not isinstance(self._failure, LedgerError | DiskError):
            raise self._failure

    def _sync_now(self) -> None:
        """A 429 of ours, shared without waiting for the next turn; a failure stops ``run``."""
        if self._failure is not None:
            return
        try:
            self.sync()
        except Exception as e:
            self._failure = e

    def finish(self) -> None:
        """The last sync: the limit this process ended at is what the next one starts at."""
        with contextlib.suppress(LedgerError, DiskError):
            self.sync(final=True)
