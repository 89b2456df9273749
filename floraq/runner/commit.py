"""The group committer: every transition decided in one loop turn lands in one transaction.

A task continues only once its transition is on disk, and a turn costs one fsync however
many tasks moved in it.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from floraq.errors import LedgerRefused
from floraq.ledger import LedgerBackend

T = TypeVar("T")
_Pending = list[tuple[Callable[[], Any], asyncio.Future[Any]]]
CONFLICT_RETRIES = 3  # times an op the server rolled back for a conflict is run again


class GroupCommitter:
    """Collect the transitions decided in one loop turn and commit them together.

    The common path runs every op of the turn in one transaction without savepoints; only
    if one raises is the turn rolled back and re-run with a savepoint per op, so a bad op
    cannot undo its neighbours. Ops are ledger calls only, so running one again is safe:
    an op the server rolled back to break a deadlock with another worker (their group
    commits update shared total rows in their own orders) is run again in its savepoint.
    """

    def __init__(self, ledger: LedgerBackend) -> None:
        self.ledger = ledger
        self._pending: _Pending = []
        self._scheduled = False

    async def commit(self, op: Callable[[], T]) -> T:
        """Run ``op`` in the next group commit; its result once the commit is on disk."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[T] = loop.create_future()
        self._pending.append((op, future))
        if not self._scheduled:
            self._scheduled = True
            loop.call_soon(self._flush_soon)
        return await asyncio.shield(future)

    def _flush_soon(self) -> None:
        """``flush`` from the event loop: a failed commit is already each waiter's exception,
        so it is not raised again into the loop (which would print a traceback)."""
        with contextlib.suppress(Exception):
            self.flush()

    def flush(self) -> None:
        """Commit everything pending now (also called on shutdown)."""
        self._scheduled = False
        pending, self._pending = self._pending, []
        if not pending:
            return
        try:
            outcomes = self._together(pending)
        except _OpFailed:
            outcomes = None
        except BaseException as e:
            self._settle(pending, [e] * len(pending))
            raise
        if outcomes is None:
            try:
                outcomes = self._one_by_one(pending)
            except BaseException as e:
                self._settle(pending, [e] * len(pending))
                raise
        self._settle(pending, outcomes)

    def _together(self, pending: _Pending) -> list[Any]:
        """Every op in one transaction; _OpFailed (all rolled back) if any op raises."""
        results: list[Any] = []
        with self.ledger.transaction():
            for op, _ in pending:
                try:
                    results.append(_Done(op()))
                except Exception as e:
                    raise _OpFailed from e
        return results

    def _one_by_one(self, pending: _Pending) -> list[Any]:
        """Every op in its own savepoint of one transaction: a failing op is undone alone."""
        with self.ledger.transaction():
            return [self._in_savepoint(op) for op, _ in pending]

    def _in_savepoint(self, op: Callable[[], Any]) -> Any:
        """One op, undone alone if it raises; run again when the server refused it only to
        break a conflict with another worker's transaction (a deadlock on shared rows)."""
        tries = 0
        while True:
            try:
                with self.ledger.savepoint():
                    return _Done(op())
            except LedgerRefused as e:
                if not e.retryable or tries == CONFLICT_RETRIES:
                    return e
                tries += 1
            except Exception as e:
                return e

    @staticmethod
    def _settle(pending: _Pending, outcomes: list[Any]) -> None:
        for (_, future), outcome in zip(pending, outcomes, strict=True):
            if future.done():
                continue
            if isinstance(outcome, _Done):
                future.set_result(outcome.value)
            else:
                future.set_exception(outcome)


@dataclass(frozen=True, slots=True)
class _Done:
    """An op's result (a wrapper, so an op may return an exception object as a value)."""

    value: Any


class _OpFailed(Exception):
    """One op of a group commit raised: the group is re-run op by op."""
