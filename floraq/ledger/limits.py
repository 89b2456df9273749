"""The shared API limits in the ledger (SQL both backends run): one row per host and workspace.

Every worker of a workspace reads its row often (one primary-key lookup) and writes it
rarely: after a 429 (the pause, merged with any longer one already there) and when its
learned concurrency changes. The rules are ``floraq.core.limits``'s; this is only the SQL.
Times are read and written on the ledger's clock: PostgreSQL's server clock (``_DB_NOW``),
which every machine sees alike, or the SQLite process's own, the only one there is.
"""

from __future__ import annotations

from typing import Any

from floraq.core.limits import ApiLimit, LimitKey, later_pause, recent_429s
from floraq.ledger.base import SqliteBase

_COLUMNS = "api_host, workspace, paused_until, concurrency, recent_429s, updated_at"


class LedgerLimits(SqliteBase):
    """Reads and writes of ``api_limits``."""

    _DB_NOW: str | None = None  # SQL for "now" on the server's clock; None: ``self.clock``
    _LOCK_ROW = ""  # SQLite's BEGIN IMMEDIATE already holds the only write lock

    def _now_sql(self) -> tuple[str, tuple[float, ...]]:
        """The ledger's clock as a select-list item, and its parameters."""
        if self._DB_NOW is None:
            return "?", (self.clock(),)
        return self._DB_NOW, ()

    def _db_now(self) -> float:
        sql, params = self._now_sql()
        return float(self.conn.execute(f"SELECT {sql}", params).fetchone()[0])

    def rate_limited(self, key: LimitKey, *, pause: float, count: int = 1) -> ApiLimit:
        """Record ``count`` 429s: nobody sends before now + ``pause``, or a later pause set.

        Returns the row as it now stands.
        """
        where = (key.api_host, key.workspace)
        with self.transaction():
            self.conn.execute(
                "INSERT INTO api_limits (api_host, workspace, updated_at) VALUES (?, ?, ?)"
                " ON CONFLICT (api_host, workspace) DO NOTHING",
                (*where, self._db_now()),
            )
            row = self.conn.execute(
                "SELECT paused_until, recent_429s FROM api_limits"
                f" WHERE api_host = ? AND workspace = ?{self._LOCK_ROW}",
                where,
            ).fetchone()
            now = self._db_now()
            self.conn.execute(
                "UPDATE api_limits SET paused_until = ?, recent_429s = ?, updated_at = ?"
                " WHERE api_host = ? AND workspace = ?",
                (
                    later_pause(row["paused_until"], now + max(0.0, pause)),
                    recent_429s(row["recent_429s"], row["paused_until"], now, count),
                    now,
                    *where,
                ),
            )
        limit = self.api_limit(key)
        assert limit is not None
        return limit

    def save_concurrency(self, key: LimitKey, concurrency: int) -> None:
        """Remember the concurrency learned under this workspace (the next start's)."""
        with self.transaction():
            self.conn.execute(
                "INSERT INTO api_limits (api_host, workspace, concurrency, updated_at)"
                " VALUES (?, ?, ?, ?) ON CONFLICT (api_host, workspace) DO UPDATE"
                " SET concurrency = excluded.concurrency, updated_at = excluded.updated_at",
                (key.api_host, key.workspace, concurrency, self._db_now()),
            )

    def api_limit(self, key: LimitKey) -> ApiLimit | None:
        """The shared row for this host and workspace, with the ledger's "now"; None if none."""
        now, params = self._now_sql()
        row = self.conn.execute(
            f"SELECT {_COLUMNS}, {now} AS now FROM api_limits WHERE api_host = ? AND workspace = ?",
            (*params, key.api_host, key.workspace),
        ).fetchone()
        return None if row is None else _limit(row)

    def api_limits(self) -> list[ApiLimit]:
        """Every host and workspace's row (for `status`)."""
        now, params = self._now_sql()
        rows = self.conn.execute(
            f"SELECT {_COLUMNS}, {now} AS now FROM api_limits ORDER BY api_host, workspace",
            params,
        ).fetchall()
        return [_limit(r) for r in rows]


def _limit(row: Any) -> ApiLimit:
    return ApiLimit(
        api_host=row["api_host"],
        workspace=row["workspace"],
        paused_until=None if row["paused_until"] is None else float(row["paused_until"]),
        concurrency=row["concurrency"],
        recent_429s=int(row["recent_429s"]),
        updated_at=float(row["updated_at"]),
        now=float(row["now"]),
    )
