"""PostgreSQL as the ledger's ``Connection``: psycopg 3, ``?`` placeholders, rows by name.

Credentials come only from what libpq reads itself (the URL's password, ``PGPASSWORD``,
``~/.pgpass``); floraq never prints or stores a password: every message shows the URL
through ``masked``, and error text from the server has the password cut out.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from functools import lru_cache
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote, urlsplit

from floraq.core.text import one_line
from floraq.errors import LedgerConnectionLost, LedgerError, LedgerRefused

if TYPE_CHECKING:  # psycopg is imported when a PostgreSQL ledger is opened, not before:
    import psycopg  # every command on a SQLite ledger starts without it
    from psycopg.rows import RowMaker

URL_SCHEMES = ("postgresql://", "postgres://")
CONNECT_TIMEOUT_S = 10  # an unreachable server is a one-line error, not a long hang
# SQLSTATE classes of a session that is gone: connection exceptions, and the server
# ending it (admin shutdown, crash shutdown, cannot connect now).
_LOST_SQLSTATES = ("08", "57P01", "57P02", "57P03")
# SQLSTATE class of a transaction the server rolled back to break a conflict (a deadlock, a
# serialization failure): running it again is the cure.
_ROLLED_BACK = "40"

_USERINFO_PASSWORD = re.compile(r"(://[^:/@?#]*):[^@/?#]*@")
_QUERY_PASSWORD = re.compile(r"([?&]password=)[^&#]*", re.IGNORECASE)


def is_postgres_url(target: str) -> bool:
    return target.startswith(URL_SCHEMES)


def masked(url: str) -> str:
    """The URL as floraq shows it: any password replaced by ``***``."""
    return _QUERY_PASSWORD.sub(r"\1***", _USERINFO_PASSWORD.sub(r"\1:***@", url))


def _passwords(url: str) -> list[str]:
    """Every spelling of the URL's password (as written and decoded), longest first."""
    found: set[str] = set()
    try:
        password = urlsplit(url).password
    except ValueError:
        password = None
    if password:
        found |= {password, unquote(password)}
    for match in re.finditer(r"[?&]password=([^&#]*)", url, re.IGNORECASE):
        if match.group(1):
            found |= {match.group(1), unquote(match.group(1))}
    return sorted(found, key=len, reverse=True)


def scrubbed(text: str, url: str) -> str:
    """Error text on one line, with the URL masked and its password nowhere in it."""
    text = text.replace(url, masked(url))
    for password in _passwords(url):
        text = text.replace(password, "***")
    return one_line(text)


class Row:
    """A result row that answers ``row[0]``, ``row["name"]`` and ``dict(row)`` (as sqlite3.Row)."""

    __slots__ = ("_index", "_values")

    def __init__(self, index: dict[str, int], values: Sequence[Any]) -> None:
        self._index = index
        self._values = values

    def __getitem__(self, key: int | str) -> Any:
        return self._values[self._index[key] if isinstance(key, str) else key]

    def keys(self) -> list[str]:
        return list(self._index)

    def __iter__(self) -> Iterator[Any]:
        return iter(self._values)

    def __len__(self) -> int:
        return len(self._values)


def _rows(cursor: psycopg.Cursor[Any]) -> RowMaker[Row]:
    index = {column.name: i for i, column in enumerate(cursor.description or ())}
    return lambda values: Row(index, values)


@lru_cache(maxsize=512)
def _placeholders(sql: str) -> str:
    """SQLite's ``?`` as psycopg's ``%s`` (a literal ``%`` doubled first)."""
    return sql.replace("%", "%%").replace("?", "%s")


class PgConnection:
    """A psycopg connection in autocommit mode; the ledger sends BEGIN/COMMIT itself.

    A connection that breaks under a statement (the server restarted, an admin ended the
    session, the network went) is a ``LedgerConnectionLost``: one line, never a traceback;
    the server rolled back the open transaction, so nothing committed is lost.
    """

    def __init__(self, raw: psycopg.Connection[Row], url: str = "") -> None:
        self.raw = raw
        self._url = url

    @classmethod
    def connect(cls, url: str) -> PgConnection:
        """Connect to ``url``; any failure is a LedgerError naming the masked URL."""
        import psycopg

        try:
            params = psycopg.conninfo.conninfo_to_dict(url)
            params.setdefault("connect_timeout", CONNECT_TIMEOUT_S)
            params.setdefault("application_name", "floraq")
            raw = psycopg.connect(**params, autocommit=True, row_factory=_rows)  # type: ignore[arg-type]
        except psycopg.Error as e:
            raise LedgerError(
                f"cannot open the ledger {masked(url)}: {scrubbed(str(e), url)};"
                " check the server and the URL in --ledger / FLORAQ_LEDGER"
            ) from None
        return cls(raw, url)

    @property
    def in_transaction(self) -> bool:
        """Inside BEGIN … COMMIT; False on a broken connection (nothing there to roll back)."""
        from psycopg.pq import TransactionStatus

        status = self.raw.info.transaction_status
        return status not in (TransactionStatus.IDLE, TransactionStatus.UNKNOWN)

    def execute(self, sql: str, parameters: Sequence[Any] = (), /) -> psycopg.Cursor[Row]:
        with self._said_plainly():
            if not parameters:
                return self.raw.execute(sql)
            return self.raw.execute(_placeholders(sql), parameters)

    def executemany(self, sql: str, parameters: Iterable[Sequence[Any]], /) -> None:
        with self._said_plainly(), self.raw.cursor() as cur:
            cur.executemany(_placeholders(sql), list(parameters))

    @contextmanager
    def _said_plainly(self) -> Iterator[None]:
        """A failed statement raised as what it is (``_failed``): a lost session or a
        refused statement in one line, anything else as it came."""
        try:
            yield
        except Exception as e:
            failed = self._failed(e)
            if failed is e:
                raise
            raise failed from None

    def _is_lost(self, e: psycopg.Error) -> bool:
        """Whether ``e`` means the session is gone (not a lock timeout or a conflict)."""
        if self.raw.closed or self.raw.broken:
            return True
        return (e.sqlstate or "").startswith(_LOST_SQLSTATES)

    def _failed(self, e: Exception) -> Exception:
        """What a failed statement is, in one line: a session that is gone
        (``LedgerConnectionLost``), a statement the live session's server refused
        (``LedgerRefused``: a timeout, a lock wait, a deadlock), else ``e`` itself."""
        import psycopg

        if not isinstance(e, psycopg.OperationalError | psycopg.InterfaceError):
            return e
        if self._is_lost(e):
            return LedgerConnectionLost(masked(self._url), self._first_line(e))
        if isinstance(e, psycopg.OperationalError):
            retryable = (e.sqlstate or "").startswith(_ROLLED_BACK)
            return LedgerRefused(masked(self._url), self._first_line(e), retryable=retryable)
        return e

    def _first_line(self, e: psycopg.Error) -> str:
        """The server's first line, the URL's password cut out."""
        first = next((line for line in str(e).splitlines() if line.strip()), type(e).__name__)
        return scrubbed(first, self._url)

    def close(self) -> None:
        self.raw.close()
