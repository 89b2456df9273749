"""Each local file's content uploaded once, crash-safe, before any run that needs it.

One task per content (however many rows name it), at most ``concurrency`` uploading at
once, beside the runs. Every step is committed before the request it allows: the intent
(state ``creating``) before ``POST /assets``, whose Idempotency-Key comes from the
content and the workspace, so a crash replays the same asset; the asset id and its
reservation the moment they arrive; ``uploading`` before the file leaves, so a resumed
``uploading`` asks ``complete`` first and uploads again only if FLORA has no file. An
expired or failed reservation is renewed with ``retry``, never a second asset.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from floraq import assets_api
from floraq.api import FloraClient
from floraq.assets_api import AssetInfo, AssetStatus
from floraq.core.keys import asset_key
from floraq.core.local_files import AssetState
from floraq.core.submission import JOB_ROUNDS
from floraq.crashpoints import CrashPoints
from floraq.errors import ApiError, IdempotencyDuplicate, TransportError
from floraq.ledger import AssetRecord, LedgerBackend
from floraq.runner.commit import GroupCommitter
from floraq.uploads import UploadHost

READY_POLL = 1.0  # seconds between GETs while an asset is processed (FLORA's SDK)
READY_WAIT = 120.0  # seconds of processing before this process leaves it for resume
MAX_RENEWALS = 3  # retries of a failed or refused reservation before the asset is given up
RECHECK_AFTER = 24 * 3600.0  # a ready asset older than this is asked about again
MAX_STEPS = 30
_REFUSED_UPLOAD = (400, 403, 404, 409, 410)  # the upload host will not take this form again


@dataclass(frozen=True, slots=True)
class AssetProblem:
    """Why a content has no ready asset now; ``final``: the rows that need it cannot run."""

    message: str
    final: bool


class AssetUploads:
    """The upload side of a run: ``ready_url`` per content, each uploaded at most once."""

    def __init__(
        self,
        *,
        ledger: LedgerBackend,
        committer: GroupCommitter,
        client: FloraClient,
        host: UploadHost,
        crash: CrashPoints,
        time_scale: float,
        concurrency: int = 4,
        pause_round: Callable[[int], Awaitable[None]] | None = None,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.ledger, self.committer, self.client, self.host = ledger, committer, client, host
        self.crash, self.scale, self.sleep, self.clock = crash, time_scale, sleep, clock
        self._slots = asyncio.Semaphore(concurrency)
        self._pause_round = pause_round
        self._tasks: dict[tuple[str, str], asyncio.Task[str | AssetProblem]] = {}

    async def ready_url(self, sha256: str, workspace_id: str) -> str | AssetProblem:
        """The ready asset's URL for this content; one task per content, shared."""
        key = (sha256, workspace_id)
        task = self._tasks.get(key)
        if task is None or (task.done() and isinstance(task.result(), AssetProblem)):
            task = self._tasks[key] = asyncio.create_task(self._ensure(sha256, workspace_id))
        return await asyncio.shield(task)

    async def aclose(self) -> None:
        """Stop every upload still going (the run is stopping); each step so far is saved."""
        live = [task for task in self._tasks.values() if not task.done()]
        for task in live:
            task.cancel()
        await asyncio.gather(*live, return_exceptions=True)

    def known_url(self, sha256: str, workspace_id: str) -> str | None:
        """The URL of a content's asset if the ledger says it is ready (no request)."""
        record = self.ledger.asset(sha256, workspace_id)
        ready = record is not None and record.state is AssetState.READY
        return record.url if ready and record is not None else None

    async def _ensure(self, sha256: str, workspace_id: str) -> str | AssetProblem:
        """Step the content's asset to ready; after the client gives up, a few rounds more
        (as every other step gets), then the rows wait for ``resume``."""
        rounds = 0
        while True:
            record = self.ledger.asset(sha256, workspace_id)
            if record is None:
                return AssetProblem("this file's content is not in the ledger", final=True)
            try:
                return await self._steps(record)
            except (ApiError, TransportError) as e:
                rounds += 1
                if rounds > JOB_ROUNDS or self._pause_round is None:
                    return AssetProblem(f"asset upload stopped: {e}", final=False)
                await self._pause_round(rounds)
            except OSError as e:
                why = f"cannot read {record.source_path}: {e.strerror}"
                return await self._give_up(record, why)

    async def _steps(self, record: AssetRecord) -> str | AssetProblem:
        for _ in range(MAX_STEPS):
            done = await self._step(record)
            if not isinstance(done, AssetRecord):
                return done
            record = done
        return AssetProblem("asset upload made no progress; run `floraq resume`", final=False)

    async def _step(self, record: AssetRecord) -> AssetRecord | str | AssetProblem:
        state = record.state
        if state is AssetState.READY:
            return await self._still_ready(record)
        if state in (AssetState.NEW, AssetState.CREATING):
            async with self._slots:  # creates too: at most `concurrency` ids in doubt
                return await self._create(record)
        if state is AssetState.RESERVED:
            async with self._slots:
                return await self._upload(record)
        if state is AssetState.UPLOADING:
            return await self._after_crash(record)
        if state is AssetState.COMPLETING:
            return await self._complete(record)
        return AssetProblem(record.failure_message or "the asset failed", final=True)

    async def _save(self, record: AssetRecord, **fields: Any) -> AssetRecord:
        """Commit a step, and the record as it is now."""
        sha, ws = record.sha256, record.workspace_id
        await self.committer.commit(lambda: self.ledger.update_asset(sha, ws, **fields))
        found = self.ledger.asset(sha, ws)
        assert found is not None
        return found

    async def _create(self, record: AssetRecord) -> AssetRecord:
        record = await self._save(record, state=AssetState.CREATING)
        self.crash("after_asset_intent")
        try:
            info = await assets_api.create_asset(
                self.client,
                workspace_id=record.workspace_id,
                file_name=Path(record.source_path).name,
                content_type=record.content_type,
                key=record.idempotency_key,
            )
        except IdempotencyDuplicate:
            # FLORA keeps the key's asset to itself: a fresh key makes a fresh asset.
            attempt = record.attempt + 1
            key = asset_key(sha256=record.sha256, workspace_id=record.workspace_id, attempt=attempt)
            return await self._save(
                record, state=AssetState.NEW, attempt=attempt, idempotency_key=key
            )
        self.crash("after_asset_post_before_commit")
        state = AssetState.READY if info.status == AssetStatus.READY else AssetState.RESERVED
        return await self._save(
            record,
            state=state,
            asset_id=info.asset_id,
            url=info.url,
            upload=info.upload,
            checked_at=self.clock() if state is AssetState.READY else None,
        )

    async def _upload(self, record: AssetRecord) -> AssetRecord | AssetProblem:
        if record.upload is None or _expired(record.upload, self.clock()):
            return await self._renew(record)
        path = Path(record.source_path)
        if await asyncio.to_thread(_sha256, path) != record.sha256:
            return await self._give_up(record, f"{path} changed since it was queued")
        record = await self._save(record, state=AssetState.UPLOADING)
        try:
            await self.host.upload(record.upload or {}, path, record.content_type)
        except ApiError as e:
            if e.status not in _REFUSED_UPLOAD:
                raise
            return await self._renew(record)
        self.crash("after_upload_before_commit")
        return await self._save(record, state=AssetState.COMPLETING)

    async def _after_crash(self, record: AssetRecord) -> AssetRecord | str | AssetProblem:
        """``uploading`` found on disk: the file may be there. Ask complete before sending it."""
        try:
            info = await self._complete_call(record)
        except IdempotencyDuplicate:  # this key completed it already (a 409 reading)
            info = await assets_api.get_asset(self.client, record.asset_id or "")
        except ApiError as e:
            if e.status not in (400, 404, 422):
                raise
            return await self._save(record, state=AssetState.RESERVED)
        record = await self._save(record, state=AssetState.COMPLETING)
        return await self._settle(record, info)

    async def _complete(self, record: AssetRecord) -> AssetRecord | str | AssetProblem:
        try:
            info = await self._complete_call(record)
        except IdempotencyDuplicate:
            info = await assets_api.get_asset(self.client, record.asset_id or "")
        return await self._settle(record, info)

    async def _complete_call(self, record: AssetRecord) -> AssetInfo:
        key = f"{record.idempotency_key}-complete-{record.renewals}"
        info = await assets_api.complete_asset(self.client, record.asset_id or "", key=key)
        self.crash("after_complete_before_commit")
        return info

    async def _settle(
        self, record: AssetRecord, info: AssetInfo
    ) -> AssetRecord | str | AssetProblem:
        """Wait for processing to end: ready (the URL), or failed (a fresh reservation)."""
        waited = 0.0
        while info.status == AssetStatus.PENDING_UPLOAD and waited < READY_WAIT:
            await self.sleep(READY_POLL * self.scale)
            waited += READY_POLL
            info = await assets_api.get_asset(self.client, record.asset_id or "")
        if info.status == AssetStatus.READY:
            now = self.clock()
            url = info.url or record.url
            await self._save(record, state=AssetState.READY, url=url, ready_at=now, checked_at=now)
            return url or AssetProblem("FLORA gave the ready asset no url", final=True)
        if info.status == AssetStatus.FAILED:
            record = await self._save(record, failure_message=info.failure_message)
            return await self._renew(record)
        return AssetProblem(f"asset {record.asset_id} is still processing", final=False)

    async def _renew(self, record: AssetRecord) -> AssetRecord | AssetProblem:
        """A fresh reservation for the same asset (``retry``), a few times at most."""
        if record.renewals >= MAX_RENEWALS:
            why = record.failure_message or "its upload was refused"
            return await self._give_up(record, f"asset {record.asset_id} failed: {why}")
        key = f"{record.idempotency_key}-retry-{record.renewals + 1}"
        info = await assets_api.retry_asset(self.client, record.asset_id or "", key=key)
        return await self._save(
            record, state=AssetState.RESERVED, renewals=record.renewals + 1, upload=info.upload
        )

    async def _still_ready(self, record: AssetRecord) -> str | AssetRecord:
        """A ready asset, asked about again when old: gone or failed starts it over."""
        if self.clock() - (record.checked_at or 0) < RECHECK_AFTER and record.url:
            return record.url
        try:
            info = await assets_api.get_asset(self.client, record.asset_id or "")
        except ApiError as e:
            if e.status != 404:
                raise
            info = None
        if info is not None and info.status == AssetStatus.READY:
            await self._save(record, checked_at=self.clock())
            return info.url or record.url or ""
        attempt = record.attempt + 1
        key = asset_key(sha256=record.sha256, workspace_id=record.workspace_id, attempt=attempt)
        return await self._save(
            record, state=AssetState.NEW, attempt=attempt, idempotency_key=key, renewals=0
        )

    async def _give_up(self, record: AssetRecord, message: str) -> AssetProblem:
        await self._save(record, state=AssetState.FAILED, failure_message=message)
        return AssetProblem(message, final=True)


def _expired(upload: dict[str, Any], now: float) -> bool:
    raw = upload.get("expires_at")
    if not isinstance(raw, str):
        return False
    try:
        return datetime.fromisoformat(raw.replace("Z", "+00:00")).timestamp() <= now
    except ValueError:
        return False


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(1024 * 1024):
            digest.update(chunk)
    return digest.hexdigest()
