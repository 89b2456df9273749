"""The PostgreSQL ledger: the same schema and moves as SQLite's, on a server many can share.

The reads, writes and repairs are the SQLite ledger's own code (portable SQL through
``PgConnection``); what differs is said here: transactions start with a plain ``BEGIN``
(READ COMMITTED), a claim locks its batch row (``SELECT … FOR UPDATE``) so concurrent
claimers of one batch take turns at the cap, and the cap's counter is a PL/pgSQL trigger
(``pg_schema``). Many workers share one ledger: they lease rows (``leases``) rather than
lock the whole ledger. No API key and no password is ever written to it or shown.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable

from floraq.errors import LedgerBusy, LedgerError
from floraq.ledger import pg_schema
from floraq.ledger.leases import PgLeases
from floraq.ledger.limits import LedgerLimits
from floraq.ledger.pg_connection import PgConnection, masked, scrubbed


class PostgresLedger(PgLeases, LedgerLimits):
    """Owns one connection to a PostgreSQL ledger: migrates on open, every move atomic."""

    _BEGIN = "BEGIN"
    _LOCK_BATCH = " FOR UPDATE OF b"
    _INPUTS_JSON = "j.inputs::json"
    _DB_NOW = "EXTRACT(EPOCH FROM clock_timestamp())::float8"  # one clock for every machine
    _LOCK_ROW = " FOR UPDATE"

    def __init__(
        self, conn: PgConnection, *, url: str, clock: Callable[[], float] = time.time
    ) -> None:
        super().__init__(conn, clock=clock)
        self.pg = conn
        self.shown = masked(url)  # the URL as messages show it (no password)
        self.name = self.shown
        self._url = url

    @classmethod
    def open(cls, url: str, *, clock: Callable[[], float] = time.time) -> PostgresLedger:
        """Connect to ``url`` and bring its schema up to date (once, under a lock)."""
        ledger = cls(PgConnection.connect(url), url=url, clock=clock)
        try:
            ledger.migrate()
        except BaseException:
            ledger.close()
            raise
        return ledger

    @classmethod
    def open_readonly(cls, url: str) -> PostgresLedger | None:
        """A read-only session on an up-to-date ledger; None if there is no ledger there yet."""
        import psycopg  # loaded by connect; not at import: a SQLite ledger never needs it

        conn = PgConnection.connect(url)
        try:
            conn.execute("SET default_transaction_read_only = on")
            applied = pg_schema.refuse_if_not_ours(conn, masked(url))
        except psycopg.Error as e:
            conn.close()
            shown = masked(url)
            raise LedgerError(f"cannot read the ledger {shown}: {scrubbed(str(e), url)}") from None
        except BaseException:
            conn.close()
            raise
        if pg_schema.pending(applied):
            conn.close()
            return None
        return cls(conn, url=url)

    def migrate(self) -> list[str]:
        """Apply the pending schema steps; the names this call applied."""
        import psycopg

        try:
            return pg_schema.apply(self.pg, self.shown)
        except psycopg.Error as e:
            raise LedgerError(
                f"cannot migrate the ledger {self.shown}: {scrubbed(str(e), self._url)}"
            ) from None

    def applied_steps(self) -> list[str]:
        return pg_schema.applied_steps(self.pg) or []

    def integrity_ok(self) -> bool:
        """The server keeps its own pages sound; what floraq can break is the cap's counter.

        True when every batch's kept counter equals the sum over its rows.
        """
        return all(
            self.committed_cost(name) == self.committed_cost_recomputed(name)
            for name in self.batch_names()
        )

    def hold_lock(self) -> None:
        """One process at a time on this ledger (a tool that needs it alone): LedgerBusy.

        floraq's own commands no longer take it: their workers lease rows instead.

        The PostgreSQL twin of ``floraq.lock.LedgerLock``: a session-level advisory lock,
        which the server drops when this connection closes or its process dies (even by
        kill -9), so a crashed run never leaves it behind.
        """
        row = self.conn.execute(
            "SELECT pg_try_advisory_lock(hashtext('floraq ledger ' || current_schema()))"
        ).fetchone()
        if not row[0]:
            raise LedgerBusy(
                f"another floraq process is using the ledger {self.shown};"
                " wait for it to finish, then try again"
            )

    def close(self) -> None:
        """Let go of the ledger lock first (at once, not when the server notices the
        closed connection), so the next process is never turned away by a race."""
        import psycopg

        with contextlib.suppress(psycopg.Error, LedgerError):  # a lost session has no locks
            self.pg.execute("SELECT pg_advisory_unlock_all()")
        self.pg.close()
