"""The ``assets`` table (SQL both backends run): one row per content and workspace.

Each step of an upload is committed before the request it allows leaves (the intent
before ``POST /assets``, the asset id the moment it answers), so a crash anywhere
resumes from the step it was at; see ``floraq.runner.uploads``.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from floraq.core.keys import asset_key
from floraq.core.local_files import AssetState
from floraq.ledger.base import chunks, marks
from floraq.ledger.writes import SqliteWrites

_COLUMNS = (
    "state",
    "source_path",
    "attempt",
    "idempotency_key",
    "renewals",
    "asset_id",
    "url",
    "upload",
    "failure_message",
    "ready_at",
    "checked_at",
)


@dataclass(frozen=True, slots=True)
class AssetRecord:
    """One content's upload in one workspace, as the ledger has it."""

    sha256: str
    workspace_id: str
    state: AssetState
    source_path: str
    size: int
    content_type: str
    attempt: int
    idempotency_key: str
    renewals: int
    asset_id: str | None
    url: str | None
    upload: dict[str, Any] | None  # the reservation: url, form_fields, file_field, expires_at
    failure_message: str | None
    created_at: float
    updated_at: float
    ready_at: float | None
    checked_at: float | None


def _record(row: Any) -> AssetRecord:
    data = dict(row)
    data["state"] = AssetState(data["state"])
    data["upload"] = json.loads(data["upload"]) if data["upload"] else None
    return AssetRecord(**data)


class LedgerAssets(SqliteWrites):
    """The assets rows: remembered at queue time, moved step by step by the uploader."""

    def remember_files(
        self,
        workspace_id: str,
        files: Iterable[tuple[str, str, int, str]],
        *,
        fresh: bool = False,
    ) -> None:
        """Know these contents (sha256, path, size, type); a known one keeps its state.

        The path is updated: the last file seen holding a content is the one uploaded. A
        content whose asset failed starts again as a new asset (a new key), and so does
        every one with ``fresh`` (``submit --reupload``).
        """
        now = self.clock()
        with self.transaction():
            for sha256, path, size, content_type in files:
                known = self.asset(sha256, workspace_id)
                if known is not None and (fresh or known.state is AssetState.FAILED):
                    self._start_over(known)
                self.conn.execute(
                    """
                    INSERT INTO assets (sha256, workspace_id, state, source_path, size,
                        content_type, idempotency_key, created_at, updated_at)
                    VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)
                    ON CONFLICT (sha256, workspace_id) DO UPDATE SET
                        source_path = excluded.source_path
                    """,
                    (
                        sha256,
                        workspace_id,
                        AssetState.NEW.value,
                        path,
                        size,
                        content_type,
                        asset_key(sha256=sha256, workspace_id=workspace_id, attempt=1),
                        now,
                        now,
                    ),
                )

    def _start_over(self, known: AssetRecord) -> None:
        attempt = known.attempt + 1
        key = asset_key(sha256=known.sha256, workspace_id=known.workspace_id, attempt=attempt)
        self.conn.execute(
            "UPDATE assets SET state = ?, attempt = ?, idempotency_key = ?, renewals = 0,"
            " asset_id = NULL, url = NULL, upload = NULL, failure_message = NULL,"
            " ready_at = NULL, checked_at = NULL, updated_at = ?"
            " WHERE sha256 = ? AND workspace_id = ?",
            (AssetState.NEW.value, attempt, key, self.clock(), known.sha256, known.workspace_id),
        )

    def asset(self, sha256: str, workspace_id: str) -> AssetRecord | None:
        row = self.conn.execute(
            "SELECT * FROM assets WHERE sha256 = ? AND workspace_id = ?", (sha256, workspace_id)
        ).fetchone()
        return None if row is None else _record(row)

    def assets_of(self, workspace_id: str, shas: Sequence[str]) -> dict[str, AssetRecord]:
        """The known rows among ``shas`` in one workspace."""
        found: dict[str, AssetRecord] = {}
        for part in chunks(list(shas)):
            rows = self.conn.execute(
                f"SELECT * FROM assets WHERE workspace_id = ? AND sha256 IN ({marks(part)})",
                (workspace_id, *part),
            ).fetchall()
            found.update({r["sha256"]: _record(r) for r in rows})
        return found

    def asset_paths(self, shas: Sequence[str]) -> dict[str, str]:
        """The file each content was last read from (any workspace)."""
        found: dict[str, str] = {}
        for part in chunks(list(shas)):
            rows = self.conn.execute(
                f"SELECT sha256, source_path FROM assets WHERE sha256 IN ({marks(part)})",
                tuple(part),
            ).fetchall()
            found.update({r[0]: r[1] for r in rows})
        return found

    def update_asset(self, sha256: str, workspace_id: str, **fields: Any) -> None:
        """Set some of ``_COLUMNS`` (``upload`` as a dict) in one commit."""
        unknown = set(fields) - set(_COLUMNS)
        if unknown:
            raise ValueError(f"not an assets column: {', '.join(sorted(unknown))}")
        values = {
            k: (json.dumps(v) if k == "upload" and v is not None else v) for k, v in fields.items()
        }
        values = {k: (v.value if isinstance(v, AssetState) else v) for k, v in values.items()}
        assignments = "".join(f", {name} = ?" for name in values)
        with self.transaction():
            self.conn.execute(
                f"UPDATE assets SET updated_at = ?{assignments}"
                " WHERE sha256 = ? AND workspace_id = ?",
                [self.clock(), *values.values(), sha256, workspace_id],
            )

    def set_batch_workspace(self, name: str, workspace_id: str) -> None:
        with self.transaction():
            self.conn.execute(
                "UPDATE batches SET workspace_id = ? WHERE name = ?", (workspace_id, name)
            )
