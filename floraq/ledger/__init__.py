"""The ledger: the one place floraq keeps what it did, behind ``LedgerBackend``.

``Ledger`` is the SQLite implementation (the only one today); callers import from here.
"""

from floraq.ledger.interface import LedgerBackend
from floraq.ledger.reads import QuoteGroup, StateTotals
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

Ledger = SqliteLedger

__all__ = [
    "BatchRecord",
    "JobFields",
    "JobRecord",
    "JobView",
    "Ledger",
    "LedgerBackend",
    "NewJob",
    "OutputRecord",
    "QuoteGroup",
    "SeenRows",
    "SqliteLedger",
    "StateTotals",
    "StoredFile",
]
