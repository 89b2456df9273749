"""A ledger on a full disk: one line, exit 7, and every earlier commit kept.

No server can fill the disk on cue, so the connection is wrapped: it raises SQLite's own
``database or disk is full`` at COMMIT, exactly as a full disk makes it do.
"""

from __future__ import annotations

import asyncio
import errno
import sqlite3
from pathlib import Path
from typing import Any

import pytest

from floraq import cli
from floraq.errors import DiskError, ExitCode
from floraq.ledger import Ledger
from floraq.runner.commit import GroupCommitter


class FullDisk:
    """A connection whose COMMIT fails as a full disk makes it (the rest passes through)."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self._conn = conn
        self.full = False

    def execute(self, sql: str, *args: Any) -> sqlite3.Cursor:
        if self.full and sql == "COMMIT":
            raise sqlite3.OperationalError("database or disk is full")
        return self._conn.execute(sql, *args)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._conn, name)


def save(ledger: Ledger, name: str) -> None:
    ledger.save_batch(
        name,
        manifest_path=None,
        output_dir="/tmp/out",
        concurrency=None,
        max_cost=None,
        retry_failed_runs=0,
    )


@pytest.fixture
def full(tmp_path: Path) -> tuple[Ledger, FullDisk]:
    ledger = Ledger.open(tmp_path / "floraq.db")
    save(ledger, "kept")
    wrapper = FullDisk(ledger.conn)
    ledger.conn = wrapper  # type: ignore[assignment]
    wrapper.full = True
    return ledger, wrapper


def test_a_full_disk_at_commit_is_a_disk_error_and_earlier_commits_stay(
    tmp_path: Path, full: tuple[Ledger, FullDisk]
) -> None:
    ledger, wrapper = full
    with pytest.raises(DiskError) as raised:
        save(ledger, "lost")
    error = raised.value
    assert error.exit_code == ExitCode.DISK == 7
    assert str(error) == (
        f"cannot write the ledger {tmp_path / 'floraq.db'}: database or disk is full"
        " (every earlier commit is kept); fix the disk, then run `floraq resume`"
    )
    assert not wrapper.in_transaction
    wrapper.full = False
    ledger.close()
    reopened = Ledger.open(tmp_path / "floraq.db")
    try:
        assert reopened.batch_names() == ["kept"]
    finally:
        reopened.close()


def test_the_group_committer_hands_the_disk_error_to_its_waiter_without_a_traceback(
    full: tuple[Ledger, FullDisk], capsys: pytest.CaptureFixture[str]
) -> None:
    """A runner step awaiting its commit gets the DiskError; the loop prints nothing."""
    ledger, _ = full

    async def go() -> None:
        await GroupCommitter(ledger).commit(lambda: save(ledger, "lost"))

    with pytest.raises(DiskError):
        asyncio.run(go())
    assert capsys.readouterr().err == ""


def test_the_cli_says_it_in_one_line_and_exits_7(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Never 70 with a traceback: the disk error is a user's problem, said once."""

    def full_disk(*args: Any, **kwargs: Any) -> None:
        raise DiskError("the ledger /x/floraq.db", "database or disk is full")

    monkeypatch.setattr(cli.cli, "main", full_disk)
    with pytest.raises(SystemExit) as exited:
        cli.main(["status"])
    assert exited.value.code == ExitCode.DISK
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err
    assert lines[0].endswith(
        "error: cannot write the ledger /x/floraq.db: database or disk is full;"
        " fix the disk, then run `floraq resume`"
    )


def test_a_ledger_that_cannot_be_created_is_one_line_not_a_traceback(tmp_path: Path) -> None:
    """The disk refuses the new ledger file itself: a DiskError naming it (exit 7)."""
    folder = tmp_path / "state"
    folder.mkdir()

    def refuse(*args: object, **kwargs: object) -> int:
        raise OSError(errno.ENOSPC, "No space left on device", str(folder / "floraq.db"))

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr("floraq.ledger.sqlite.os.open", refuse)
        with pytest.raises(DiskError) as caught:
            Ledger.open(folder / "floraq.db")
    assert caught.value.exit_code == 7
    assert str(caught.value).startswith(
        f"cannot write {folder / 'floraq.db'}: No space left on device (ENOSPC)"
    )
