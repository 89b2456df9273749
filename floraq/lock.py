"""One floraq process per ledger: a non-blocking OS lock on a file beside it.

The kernel releases an flock when its process dies, even by kill -9, so a crashed
run never leaves a stale lock behind and the next cron run takes over at once.
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path
from types import TracebackType

from floraq.errors import LedgerBusy, LedgerError, UsageError


def lock_path_for(ledger_path: Path) -> Path:
    return ledger_path.with_name(ledger_path.name + ".lock")


def ensure_private_dir(path: Path) -> None:
    """Create the ledger's folder user-only (0700) if it does not exist yet."""
    try:
        path.mkdir(mode=0o700, parents=True, exist_ok=True)
    except OSError as e:
        raise UsageError(
            f"cannot create the ledger folder {path}: {e.strerror or e};"
            " choose another place with --ledger or FLORAQ_LEDGER"
        ) from None


def writable(path: Path) -> bool:
    """Whether floraq may write the ledger: the file, and its folder (for -wal, -shm, lock).

    ``os.access`` says no for a read-only mount even to root (who ignores file modes).
    """
    return os.access(path, os.W_OK) and os.access(path.parent, os.W_OK | os.X_OK)


def read_only_reason(path: Path) -> str | None:
    """Why floraq cannot write the ledger at ``path``, in one line; None when it can."""
    if not path.exists():
        folder = path.parent
        if folder.is_dir() and not os.access(folder, os.W_OK | os.X_OK):
            return f"cannot create the ledger {path}: its folder is read-only; pass --ledger"
        return None
    if not writable(path):
        if os.statvfs(path.parent).f_flag & os.ST_RDONLY:
            place = "it is on a read-only file system"
        else:
            place = "its " + ("file" if not os.access(path, os.W_OK) else "folder")
            place += " cannot be written"
        return (
            f"the ledger {path} is read-only ({place}): `status`,"
            " `export`, `report`, `verify` and `batches` can read it; to submit, resume"
            " or retry, make it writable or copy it to a writable folder"
        )
    return None


class LedgerLock:
    """Hold the ledger's lock for the life of a ``with`` block, or raise LedgerBusy."""

    def __init__(self, ledger_path: Path) -> None:
        self.path = lock_path_for(ledger_path)
        self.ledger_path = ledger_path
        self._fd: int | None = None

    def acquire(self) -> None:
        """Take the lock; a read-only ledger is refused first (every writer locks)."""
        reason = read_only_reason(self.ledger_path)
        if reason is not None:
            raise LedgerError(reason)
        ensure_private_dir(self.path.parent)
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        except OSError as e:
            raise LedgerError(
                f"cannot create the lock file {self.path}: {e.strerror or e}"
            ) from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            holder = self._holder()
            raise LedgerBusy(
                f"another floraq process{holder} is using the ledger {self.path.parent}/"
                f"{self.path.name.removesuffix('.lock')}; wait for it to finish, then try again"
            ) from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._fd = fd

    def release(self) -> None:
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None

    def _holder(self) -> str:
        try:
            pid = self.path.read_text().strip()
        except OSError:
            return ""
        return f" (pid {pid})" if pid.isdigit() else ""

    def __enter__(self) -> LedgerLock:
        self.acquire()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.release()
