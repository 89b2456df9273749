"""The group committer's op-by-op pass: an op the server rolled back only to break a
conflict with another worker (a deadlock) is run again; any other failure is that op's."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, cast

import pytest

from floraq.errors import LedgerError, LedgerRefused
from floraq.ledger import LedgerBackend
from floraq.runner.commit import CONFLICT_RETRIES, GroupCommitter


class FakeLedger:
    """Transactions and savepoints, counted; what an op wrote is kept only if it returned."""

    def __init__(self) -> None:
        self.kept: list[str] = []
        self.savepoints = 0
        self._open: list[str] = []

    @contextmanager
    def transaction(self) -> Iterator[None]:
        self._open = []
        yield
        self.kept += self._open

    @contextmanager
    def savepoint(self) -> Iterator[None]:
        self.savepoints += 1
        mark = len(self._open)
        try:
            yield
        except BaseException:
            del self._open[mark:]
            raise

    def write(self, what: str) -> str:
        self._open.append(what)
        return what


def deadlock(retryable: bool = True) -> LedgerRefused:
    return LedgerRefused("postgresql://db", "deadlock detected", retryable=retryable)


def failing(ledger: FakeLedger, what: str, errors: list[Exception]) -> Callable[[], str]:
    def op() -> str:
        ledger.write(what)
        if errors:
            raise errors.pop(0)
        return what

    return op


def run(ledger: FakeLedger, *ops: Callable[[], Any]) -> list[Any]:
    async def go() -> list[Any]:
        committer = GroupCommitter(cast(LedgerBackend, ledger))
        return await asyncio.gather(*(committer.commit(op) for op in ops), return_exceptions=True)

    return asyncio.run(go())


def test_a_deadlocked_op_is_run_again_and_its_neighbours_are_kept() -> None:
    ledger = FakeLedger()
    a = failing(ledger, "a", [])
    b = failing(ledger, "b", [deadlock(), deadlock()])  # the first pass and one retry
    assert run(ledger, a, b) == ["a", "b"]
    # The first pass has no savepoints; then a once, b twice (refused, then run again).
    assert ledger.kept == ["a", "b"] and ledger.savepoints == 3


def test_a_conflict_that_persists_and_any_other_refusal_reach_their_task() -> None:
    ledger = FakeLedger()
    stuck = failing(ledger, "stuck", [deadlock() for _ in range(CONFLICT_RETRIES + 2)])
    timeout = failing(ledger, "slow", [deadlock(retryable=False)])
    broken = failing(ledger, "bug", [LedgerError("no job 9 in the ledger")])
    fine = failing(ledger, "fine", [])
    [first, second, third, fourth] = run(ledger, stuck, timeout, broken, fine)
    assert isinstance(first, LedgerRefused) and first.retryable
    assert isinstance(second, LedgerRefused) and not second.retryable
    assert isinstance(third, LedgerError) and str(third) == "no job 9 in the ledger"
    assert fourth == "fine" and ledger.kept == ["fine"]
    # The first pass stops at stuck; then stuck 1 + CONFLICT_RETRIES times, the others once.
    assert ledger.savepoints == 1 + CONFLICT_RETRIES + 3


@pytest.mark.parametrize("sqlstate", ["40P01", "40001"])
def test_only_a_rolled_back_transaction_is_retryable(sqlstate: str) -> None:
    from psycopg import errors

    from floraq.ledger.pg_connection import PgConnection

    conn = PgConnection.__new__(PgConnection)
    conn._url = "postgresql://u:secret@db/x"
    conn.raw = cast(Any, type("Raw", (), {"closed": False, "broken": False})())
    conflict = errors.lookup(sqlstate)("conflict")
    timeout = errors.lookup("57014")("canceling statement due to statement timeout")
    refused = conn._failed(conflict)
    assert isinstance(refused, LedgerRefused) and refused.retryable
    assert "secret" not in str(refused)
    plain = conn._failed(timeout)
    assert isinstance(plain, LedgerRefused) and not plain.retryable
