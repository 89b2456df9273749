"""The SQL of the trigger-kept totals (`state_totals`, `quote_totals`), frozen with 0009.

Both backends' triggers are built from these strings (``migrations`` for SQLite,
``pg_schema`` for PostgreSQL), so the two keep the same counts.
"""

from __future__ import annotations

# What one job adds to its (batch, technique, state) totals, as (column, SQL of row r).
# Which states count as unsettled is decided when reading (``reads.state_counts``), from
# ``uncharged`` and ``prior_unsettled``, so a new state needs no new trigger.
TOTALS_SQL: tuple[tuple[str, str], ...] = (
    ("n", "1"),
    ("estimated_micros", "COALESCE({r}.estimated_micros, 0)"),
    ("charged_micros", "COALESCE({r}.charged_micros, 0) + {r}.prior_charged_micros"),
    ("uncharged", "CASE WHEN {r}.charged_micros IS NULL THEN 1 ELSE 0 END"),
    ("prior_unsettled", "{r}.prior_unsettled"),
)
TOTALS_COLUMNS: tuple[str, ...] = tuple(column for column, _ in TOTALS_SQL)
TOTALS_WATCHED = "state, estimated_micros, charged_micros, prior_charged_micros, prior_unsettled"


# Frozen with this step, as 0004's list: the states of a finished run (lifecycle's
# RUN_FINISHED); a charge off its quote there is a cost change `status` shows.
FINISHED_0009 = "'completed', 'downloaded', 'expired', 'download_failed'"


def off_quote(row: str) -> str:
    """SQL: 1 when job ``row`` is a finished run charged other than its quote, else 0."""
    return (
        f"CASE WHEN {row}.charged_micros IS NOT NULL AND {row}.state IN ({FINISHED_0009})"
        f" AND {row}.charged_micros != COALESCE({row}.estimated_micros, 0) THEN 1 ELSE 0 END"
    )


def quotes_add(row: str) -> str:
    """SQL counting job ``row`` (NEW) at its quote, if it has one (an upsert)."""
    return (
        f"INSERT INTO quote_totals (batch, technique, quote, n, differs)"
        f" SELECT {row}.batch, {row}.technique, {row}.estimated_micros, 1, {off_quote(row)}"
        f" WHERE {row}.estimated_micros IS NOT NULL ON CONFLICT (batch, technique, quote)"
        " DO UPDATE SET n = quote_totals.n + 1, differs = quote_totals.differs + excluded.differs"
    )


def quotes_remove(row: str) -> str:
    """SQL taking job ``row`` (OLD) off its quote's count (nothing if it had no quote)."""
    return (
        f"UPDATE quote_totals SET n = n - 1, differs = differs - ({off_quote(row)})"
        f" WHERE batch = {row}.batch AND technique = {row}.technique"
        f" AND quote = {row}.estimated_micros"
    )


def totals_add(row: str) -> str:
    """SQL adding job ``row`` (NEW) to its totals row (an upsert; SQLite and PostgreSQL)."""
    columns = ", ".join(TOTALS_COLUMNS)
    added = ", ".join(sql.format(r=row) for _, sql in TOTALS_SQL)
    sums = ", ".join(f"{c} = state_totals.{c} + excluded.{c}" for c in TOTALS_COLUMNS)
    return (
        f"INSERT INTO state_totals (batch, technique, state, {columns})"
        f" VALUES ({row}.batch, {row}.technique, {row}.state, {added})"
        f" ON CONFLICT (batch, technique, state) DO UPDATE SET {sums}"
    )


def totals_remove(row: str) -> str:
    """SQL taking job ``row`` (OLD) out of its totals row."""
    less = ", ".join(f"{c} = {c} - ({sql.format(r=row)})" for c, sql in TOTALS_SQL)
    return (
        f"UPDATE state_totals SET {less} WHERE batch = {row}.batch"
        f" AND technique = {row}.technique AND state = {row}.state"
    )
