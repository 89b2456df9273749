"""A batch's output folder: can floraq write there, and which batch owns it.

Checked before anything is paid for: a folder floraq cannot create or write would take
the money and lose the files. Each output folder carries a marker,
``<output_dir>/.floraq/owner.json`` (its ledger, the batches writing it, when it was
made), written before the first download, so two batches never fill one folder even
through different ledgers (the default ledger follows the working directory, the folder
follows the manifest).
"""

from __future__ import annotations

import errno
import json
import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from floraq.errors import DiskError, UsageError
from floraq.ledger.pg_connection import is_postgres_url, masked

MARKER = Path(".floraq") / "owner.json"
PROBE_PREFIX = ".floraq-probe-"


@dataclass(frozen=True, slots=True)
class Owner:
    """Who fills an output folder: the batches of one ledger (the first one made it)."""

    ledger: str  # the ledger's resolved path, or its PostgreSQL URL masked
    batches: tuple[str, ...]
    created_at: float

    def to_json(self) -> dict[str, Any]:
        return {"ledger": self.ledger, "batches": list(self.batches), "created_at": self.created_at}


def ledger_identity(ledger: str | Path) -> str:
    """The ledger as the marker names it: its absolute, resolved path, or its URL masked
    (the marker is a file anyone may read: never a password in it)."""
    if isinstance(ledger, str) and is_postgres_url(ledger):
        return masked(ledger)
    return str(Path(ledger).expanduser().resolve())


def unwritable(folder: Path) -> str | None:
    """Why floraq could not create or write ``folder``, or None if it can.

    Probes by creating (and at once removing) a scratch entry, so a read-only mount,
    ``/proc`` or a folder root may not write is found even when the mode bits say yes.
    """
    path = folder
    while not path.exists():
        if path.is_symlink():
            what = "is" if path == folder else f"cannot be created: {path} is"
            return (
                f"{folder} {what} a symlink to {os.readlink(path)}, which does not exist;"
                " create its target or set output_dir to a real folder"
            )
        if path.parent == path:
            break
        path = path.parent
    if not path.is_dir():
        what = "is" if path == folder else "cannot be created:"
        where = "" if path == folder else f" {path} is"
        return f"{folder} {what}{where} a file, not a folder; set output_dir to a folder"
    try:
        if path == folder:
            fd, name = tempfile.mkstemp(prefix=PROBE_PREFIX, dir=path)
            os.close(fd)
            os.unlink(name)
        else:
            os.rmdir(tempfile.mkdtemp(prefix=PROBE_PREFIX, dir=path))
    except OSError as e:
        return (
            f"{folder} cannot be {'written' if path == folder else 'created'}: {path}"
            f" refuses new files ({_why(e)}); set output_dir to a folder floraq can write"
        )
    return None


def read_owner(folder: Path) -> Owner | str | None:
    """The batch that owns ``folder`` (None: no marker yet), or why its marker is unreadable."""
    marker = folder / MARKER
    try:
        data = json.loads(marker.read_text(encoding="utf-8"))
        return Owner(
            ledger=str(data["ledger"]),
            batches=tuple(str(b) for b in data["batches"]),
            created_at=float(data["created_at"]),
        )
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, TypeError) as e:
        return (
            f"its owner marker {marker} cannot be read ({e}); remove it if no batch uses {folder}"
        )


def owned_by_another(folder: Path, batch: str, ledger: str | Path) -> str | None:
    """Why ``batch`` of this ledger may not write ``folder``: its marker names another ledger.

    Batches of one ledger may share a folder: that ledger refuses a row whose own folder
    another batch fills (``admission``). Another ledger cannot see those rows, so its
    batches are refused the whole folder.
    """
    owner = read_owner(folder)
    if owner is None:
        return None
    if isinstance(owner, str):
        return f"{folder}: {owner}"
    if owner.ledger == ledger_identity(ledger):
        return None
    names = ", ".join(repr(b) for b in owner.batches) or "?"
    return (
        f"{folder} belongs to batch {names} of another ledger, {owner.ledger}"
        f" (see {folder / MARKER}); set another output_dir for batch {batch!r}"
    )


def claim(folder: Path, batch: str, ledger: str | Path) -> None:
    """Create ``folder`` with its owner marker naming this batch; before the first download.

    A folder another ledger owns is a UsageError; a disk that refuses the marker a DiskError.
    """
    refused = owned_by_another(folder, batch, ledger)
    if refused is not None:
        raise UsageError(refused)
    owner = read_owner(folder)
    if isinstance(owner, Owner) and batch in owner.batches:
        return
    if isinstance(owner, Owner):
        owner = Owner(owner.ledger, (*owner.batches, batch), owner.created_at)
    else:
        owner = Owner(ledger_identity(ledger), (batch,), time.time())
    marker = folder / MARKER
    part = marker.with_name(marker.name + ".part")
    try:
        marker.parent.mkdir(parents=True, exist_ok=True)
        part.write_text(json.dumps(owner.to_json(), indent=2) + "\n", encoding="utf-8")
        os.replace(part, marker)
    except OSError as e:
        raise DiskError.from_os_error(e, marker) from e


def _why(e: OSError) -> str:
    name = errno.errorcode.get(e.errno or 0)
    return (e.strerror or str(e)) + (f", {name}" if name else "")
