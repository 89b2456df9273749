"""The ledger as the rest of floraq sees it: typed reads and moves, no connection, no SQL.

A second backend (PostgreSQL, shared by several machines) implements this Protocol; the
runner and the commands do not change. Its promises: every write joins the open
``transaction()`` or makes its own; ``savepoint()`` undoes one part of a transaction;
``claim`` checks the cap and writes the intent under one lock; leaving a state in
``core.lifecycle.QUOTE_COMMITTED`` releases that row's quote.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from contextlib import AbstractContextManager
from decimal import Decimal
from typing import Any, Protocol, Unpack

from floraq.core.lifecycle import JobState
from floraq.ledger.assets import AssetRecord
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


class LedgerBackend(Protocol):
    """What a ledger backend provides; ``SqliteLedger`` is the reference implementation."""

    commits: int

    def close(self) -> None: ...
    def transaction(self) -> AbstractContextManager[None]: ...
    def savepoint(self) -> AbstractContextManager[None]: ...
    def integrity_ok(self) -> bool: ...

    # batches and techniques
    def save_batch(
        self,
        name: str,
        *,
        manifest_path: str | None,
        output_dir: str,
        concurrency: int | None,
        max_cost: Decimal | None,
        retry_failed_runs: int,
    ) -> None: ...
    def batch(self, name: str) -> BatchRecord | None: ...
    def batch_names(self) -> list[str]: ...
    def save_technique(
        self, slug: str, definition: Mapping[str, Any], run_cost: Decimal
    ) -> None: ...
    def technique(self, slug: str) -> dict[str, Any] | None: ...
    def techniques_used(self, batches: Sequence[str]) -> list[str]: ...

    # jobs
    def existing_rows(
        self, batch: str, technique: str, row_keys: Sequence[str]
    ) -> dict[str, str]: ...
    def folders_of_other_batches(
        self, batch: str, output_dir: str, technique: str, row_keys: Sequence[str]
    ) -> dict[str, str]: ...
    def insert_jobs(self, jobs: Iterable[NewJob]) -> int: ...
    def jobs(
        self,
        *,
        batches: Sequence[str],
        states: Iterable[JobState],
        after_id: int = 0,
        limit: int = 500,
    ) -> list[JobRecord]: ...
    def job(self, job_id: int) -> JobRecord: ...
    def job_id_for_key(self, key: str) -> int: ...
    def move(
        self, job_id: int, current: JobState, new: JobState, **fields: Unpack[JobFields]
    ) -> None: ...
    def update(self, job_id: int, **fields: Unpack[JobFields]) -> None: ...
    def claim(
        self,
        job_id: int,
        *,
        at: float,
        quote: Decimal,
        key_fingerprint: str | None,
        cap: Decimal | None,
    ) -> bool: ...
    def new_attempt(
        self,
        job_id: int,
        current: JobState,
        *,
        attempt: int,
        idempotency_key: str,
        auto_retries: int = 0,
    ) -> None: ...
    def event(
        self, job_id: int | None, batch: str | None, kind: str, detail: Any = None
    ) -> None: ...

    # assets: local files uploaded once per content and workspace
    def remember_files(
        self,
        workspace_id: str,
        files: Iterable[tuple[str, str, int, str]],
        *,
        fresh: bool = False,
    ) -> None: ...
    def asset(self, sha256: str, workspace_id: str) -> AssetRecord | None: ...
    def assets_of(self, workspace_id: str, shas: Sequence[str]) -> dict[str, AssetRecord]: ...
    def asset_paths(self, shas: Sequence[str]) -> dict[str, str]: ...
    def update_asset(self, sha256: str, workspace_id: str, **fields: Any) -> None: ...
    def set_batch_workspace(self, name: str, workspace_id: str) -> None: ...

    # outputs
    def record_outputs(self, job_id: int, outputs: Iterable[tuple[str, str, str]]) -> None: ...
    def outputs(self, job_id: int) -> list[OutputRecord]: ...
    def output_downloaded(
        self,
        job_id: int,
        output_id: str,
        *,
        path: str,
        size: int,
        sha256: str,
        content_type: str | None,
    ) -> None: ...
    def output_expired(self, job_id: int, output_id: str, error: str) -> None: ...
    def output_missing(self, job_id: int, output_id: str) -> None: ...
    def refetch(self, job_id: int, output_ids: Iterable[str]) -> bool: ...
    def refetch_expired(self, batches: Sequence[str]) -> int: ...

    # reading for status, exports, reports, verify
    def committed_cost(self, batch: str) -> Decimal: ...
    def state_counts(self, batches: Sequence[str]) -> list[StateTotals]: ...
    def problem_rows(self, batches: Sequence[str]) -> list[dict[str, Any]]: ...
    def quotes(self, batches: Sequence[str]) -> list[QuoteGroup]: ...
    def typical_durations(self, technique: str, limit: int = 50) -> list[float]: ...
    def last_activity(self) -> dict[str, float]: ...
    def job_views(
        self,
        batches: Sequence[str],
        *,
        states: Iterable[JobState] | None = None,
        technique: str | None = None,
        after_id: int = 0,
        limit: int = 500,
    ) -> list[JobView]: ...
    def input_ids(self, batches: Sequence[str], technique: str | None = None) -> list[str]: ...
    def output_ids(self, batches: Sequence[str], technique: str | None = None) -> list[str]: ...
    def downloaded_by_url(self) -> dict[str, str]: ...
    def downloaded_files(
        self, batches: Sequence[str], *, after_id: int = 0, limit: int = 500
    ) -> list[StoredFile]: ...
