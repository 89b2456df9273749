"""How a command opens its ledger: a SQLite file or a PostgreSQL URL, by one road each.

Every command that writes takes the ledger through ``locked_ledger`` (SQLite: one process
at a time, by its lock file; PostgreSQL: any number, whose runners lease rows, see
``floraq.ledger.leases``); every command that only reads through ``open_for_reading``.
Messages name the ledger as ``Settings.ledger_shown``, so a URL's password is never printed.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from floraq.errors import UsageError
from floraq.ledger import (
    LedgerBackend,
    PostgresLedger,
    SqliteLedger,
    open_ledger,
    open_ledger_readonly,
)
from floraq.lock import LedgerLock
from floraq.settings import Settings


@contextmanager
def locked_ledger(settings: Settings) -> Iterator[LedgerBackend]:
    """The ledger, opened (and migrated) for writing: held by this process alone on SQLite,
    shared with other workers on PostgreSQL (their runners lease rows, never the ledger)."""
    if settings.ledger_url is None:
        with LedgerLock(settings.ledger_path):
            ledger: LedgerBackend = SqliteLedger.open(settings.ledger_path)
            try:
                yield ledger
            finally:
                ledger.close()
        return
    shared = open_ledger(settings.ledger_url)
    try:
        assert isinstance(shared, PostgresLedger)
        yield shared
    finally:
        shared.close()


def read_if_there(settings: Settings) -> LedgerBackend | None:
    """An existing, up-to-date ledger to check against, read-only; None if there is none."""
    return open_ledger_readonly(settings.ledger_target)


def exists(settings: Settings) -> bool:
    """Whether a ledger is there yet (a file; or a schema floraq has set up on the server)."""
    if settings.ledger_url is None:
        return settings.ledger_path.exists()
    reader = open_ledger_readonly(settings.ledger_url)
    if reader is None:
        return False
    reader.close()
    return True


def require_ledger(settings: Settings) -> None:
    """The one "no ledger" error; called before taking the lock, so it creates no folder."""
    if not exists(settings):
        raise _no_ledger(settings)


def _no_ledger(settings: Settings) -> UsageError:
    return UsageError(
        f"no ledger at {settings.ledger_shown}: nothing has been submitted yet"
        " (or pass --ledger / FLORAQ_LEDGER)"
    )


def open_for_reading(settings: Settings) -> LedgerBackend:
    """The ledger of a command that only reads: opened read-only, never written."""
    if settings.ledger_url is None:
        require_ledger(settings)
        return SqliteLedger.open_for_reading(settings.ledger_path)
    reader = open_ledger_readonly(settings.ledger_url)
    if reader is None:
        raise _no_ledger(settings)
    return reader
