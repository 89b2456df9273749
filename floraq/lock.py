"""One floraq process per ledger: a non-blocking OS lock on a file beside it.

The kernel releases an flock when its process dies, even by kill -9, so a crashed
run never leaves a stale lock behind and the next cron run takes over at once.
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path
from types import TracebackType

from floraq.errors import LedgerBusy, UsageError


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


class LedgerLock:
    """Hold the ledger's lock for the life of a ``with`` block, or raise LedgerBusy."""

    def __init__(self, ledger_path: Path) -> None:
        self.path = lock_path_for(ledger_path)
        self._fd: int | None = None

    def acquire(self) -> None:
        ensure_private_dir(self.path.parent)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
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
