"""End to end: a big manifest's check with no room for its temporary files.

`submit` spools every checked row to a temporary file before it queues them, and the
duplicate check keeps what it has seen in a temporary SQLite database: both live in
TMPDIR. Here TMPDIR is a real 256 KiB tmpfs, mounted in a private mount namespace
(``unshare -m``) for the one command; where that cannot be done the tests are skipped.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from conftest import Floraq

from floraq.sandbox import SandboxServer

IMG = "https://storage.googleapis.com/floraq-demo/{n}.jpg"
TINY = 'mount -t tmpfs -o size=256k tmpfs "$0" && exec "$@"'


def _can_mount_tmpfs() -> bool:
    if shutil.which("unshare") is None:
        return False
    probe = subprocess.run(
        ["unshare", "-m", "sh", "-c", "mount -t tmpfs -o size=64k tmpfs /mnt"],
        capture_output=True,
    )
    return probe.returncode == 0


pytestmark = pytest.mark.skipif(
    not _can_mount_tmpfs(), reason="needs `unshare -m` and a tmpfs mount (root in a container)"
)


def in_tiny_tmpdir(
    folder: Path, argv: list[str], *, env: dict[str, str], cwd: Path
) -> subprocess.CompletedProcess[str]:
    """ARGV run with TMPDIR on a fresh 256 KiB tmpfs mounted over ``folder``."""
    folder.mkdir(exist_ok=True)
    return subprocess.run(
        ["unshare", "-m", "sh", "-c", TINY, str(folder), *argv],
        cwd=cwd,
        env={**env, "TMPDIR": str(folder)},
        capture_output=True,
        text=True,
        timeout=300,
        stdin=subprocess.DEVNULL,
    )


def advice(folder: Path, why: str) -> str:
    return (
        f"floraq: error: cannot write floraq's temporary files in {folder}: {why}; free"
        " space there or set TMPDIR to a folder with room (about 300 bytes a row), then"
        " run the same command again; nothing was queued\n"
    )


def test_submit_with_a_full_tmpdir_queues_nothing_says_so_and_runs_again_elsewhere(
    floraq: Floraq, sandbox: SandboxServer
) -> None:
    """3,000 checked rows need ~900 KB of spool: exit 7, one line, no ledger, no POST."""
    rows = [{"input_image": IMG.format(n=n)} for n in range(3000)]
    manifest = floraq.write_manifest(
        batch="big", jobs=[{"technique": "portrait-enhancer", "rows": rows}]
    )
    tiny = floraq.cwd / "tiny"
    args = ["submit", "--no-wait", "--max-cost", "0", str(manifest)]
    full = in_tiny_tmpdir(tiny, [sys.executable, "-m", "floraq", *args], env=floraq.env,
                          cwd=floraq.cwd)  # fmt: skip
    assert full.returncode == 7, full.stderr
    assert full.stderr.endswith(advice(tiny, "No space left on device (ENOSPC)")), full.stderr
    assert "Traceback" not in full.stderr
    assert not floraq.ledger_path.exists(), "the check comes before the ledger is written"
    assert sandbox.stats()["runs_created"] == 0
    again = floraq(*args)
    assert again.returncode == 4, again.stderr  # paused at the 0 cap, as asked: rows queued
    assert "3000 new row(s) queued" in again.stdout
    assert floraq.query("SELECT COUNT(*) AS n FROM jobs WHERE state = 'queued'") == [{"n": 3000}]


def test_the_duplicate_check_with_a_full_tmpdir_is_the_same_one_line(tmp_path: Path) -> None:
    """SeenRows' runs on disk (its SQLite temp database) meet SQLITE_FULL: a DiskError."""
    probe = textwrap.dedent(
        """
        from floraq.errors import DiskError
        from floraq.ledger.seen import SeenRows
        seen = SeenRows()
        seen.conn.execute("PRAGMA cache_size = 4")  # spill the temp database at once
        try:
            for start in range(0, 200_000, 1000):
                keys = [f"fq1_{n:048d}" for n in range(start, start + 1000)]
                seen.add(keys, [("t", k[-12:], f"row {k}") for k in keys])
        except DiskError as e:
            print(e.exit_code, e)
        """
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    done = in_tiny_tmpdir(tmp_path / "tiny", [sys.executable, "-c", probe], env=env,
                          cwd=tmp_path)  # fmt: skip
    assert done.returncode == 0, done.stderr
    want = advice(tmp_path / "tiny", "no space left on device (SQLITE_FULL)")
    assert done.stdout == "7 " + want.removeprefix("floraq: error: ")
