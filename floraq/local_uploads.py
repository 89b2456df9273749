"""What plan and submit decide about a manifest's local files before anything is sent.

Which files checker the manifest gets (with ``upload_remote``, one that downloads the
URLs FLORA will not fetch), which workspace its files go to, and how many of their
contents the ledger already has ready there.
"""

from __future__ import annotations

from pathlib import Path

from floraq.api import FloraClient
from floraq.assets_api import list_workspaces
from floraq.core.local_files import AssetState, choose_workspace
from floraq.core.manifest import Manifest
from floraq.core.problems import Problem
from floraq.interrupts import run_interruptibly
from floraq.ledger import LedgerBackend
from floraq.local_inputs import LocalFiles
from floraq.remote_inputs import RemoteFiles
from floraq.results import PlanResult
from floraq.settings import Settings


def remote_folder(settings: Settings) -> Path:
    """Where ``upload_remote`` keeps what it downloaded, until it is uploaded: by the ledger."""
    ledger_dir = settings.ledger_path.parent if settings.ledger_url is None else Path("state")
    return ledger_dir / "remote"


def local_files_for(settings: Settings, manifest: Manifest) -> LocalFiles:
    """The files checker of this manifest: downloading too, with ``upload_remote``."""
    remote = manifest.upload_remote or settings.upload_remote
    return LocalFiles(RemoteFiles(remote_folder(settings)) if remote else None)


def choose_upload_workspace(
    settings: Settings, result: PlanResult, reader: LedgerBackend | None, client: FloraClient
) -> None:
    """Where the local files go (``workspace``, else the key's only one), and how many of
    their contents the ledger already has ready there; a plan error when it is unclear."""

    async def go() -> list[tuple[str, str]]:
        async with client:
            return [(w.workspace_id, w.name) for w in await list_workspaces(client)]

    manifest = result.manifest
    chosen = choose_workspace(run_interruptibly(go()), manifest.workspace)
    if isinstance(chosen, Exception):
        result.problems.append(Problem(f"{manifest.source}: workspace", str(chosen)))
        return
    result.workspace_id = chosen
    if reader is not None:
        known = reader.assets_of(chosen, list(result.uploads))
        result.uploaded = sum(1 for a in known.values() if a.state is AssetState.READY)
