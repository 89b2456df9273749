"""The ledger: the one place floraq keeps what it did, behind ``LedgerBackend``.

Two backends: ``SqliteLedger`` (a file; the default, and ``Ledger``) and
``PostgresLedger`` (a ``postgresql://`` URL). ``open_ledger`` picks one from the target;
callers import from here.
"""

import time
from collections.abc import Callable
from pathlib import Path

from floraq.ledger.assets import AssetRecord
from floraq.ledger.interface import LedgerBackend
from floraq.ledger.pg_connection import is_postgres_url, masked
from floraq.ledger.postgres import PostgresLedger
from floraq.ledger.records import (
    BatchRecord,
    JobFields,
    JobRecord,
    JobView,
    NewJob,
    OutputRecord,
    StoredFile,
)
from floraq.ledger.seen import SeenRows
from floraq.ledger.sqlite import SqliteLedger
from floraq.ledger.totals import QuoteGroup, StateTotals

Ledger = SqliteLedger


def open_ledger(target: str | Path, *, clock: Callable[[], float] = time.time) -> LedgerBackend:
    """Open and migrate the ledger at ``target``: a PostgreSQL URL, else a SQLite path."""
    if isinstance(target, str) and is_postgres_url(target):
        return PostgresLedger.open(target, clock=clock)
    return SqliteLedger.open(Path(target), clock=clock)


def open_ledger_readonly(target: str | Path) -> LedgerBackend | None:
    """An existing, up-to-date ledger for reading only; None if there is none there yet."""
    if isinstance(target, str) and is_postgres_url(target):
        return PostgresLedger.open_readonly(target)
    return SqliteLedger.open_readonly(Path(target))


def ledger_name(target: str | Path) -> str:
    """How messages name a ledger: its path, or its URL with any password masked."""
    return masked(target) if isinstance(target, str) and is_postgres_url(target) else str(target)


__all__ = [
    "AssetRecord",
    "BatchRecord",
    "JobFields",
    "JobRecord",
    "JobView",
    "Ledger",
    "LedgerBackend",
    "NewJob",
    "OutputRecord",
    "PostgresLedger",
    "QuoteGroup",
    "SeenRows",
    "SqliteLedger",
    "StateTotals",
    "StoredFile",
    "ledger_name",
    "open_ledger",
    "open_ledger_readonly",
]
