"""End to end: a ledger floraq may not write is still read, and never written.

Tests run as root, who ignores file modes, so "read-only" here is the real thing: the
ledger's folder is bind-mounted read-only in a private mount namespace (``unshare -m``),
which the kernel refuses to write for anyone, root included. Where that cannot be done
the test is skipped; ``test_ledger.py`` covers the SQLite side without a mount.
"""

from __future__ import annotations

import hashlib
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import Floraq

from floraq.ledger.migrations import MIGRATION_NAMES, migrations
from floraq.sandbox import SandboxServer

IMG = "https://storage.googleapis.com/floraq-demo/{n}.jpg"


def _can_mount_read_only() -> bool:
    if shutil.which("unshare") is None:
        return False
    probe = subprocess.run(
        [
            "unshare",
            "-m",
            "sh",
            "-c",
            "mount --bind /tmp /tmp && mount -o remount,bind,ro /tmp /tmp",
        ],
        capture_output=True,
    )
    return probe.returncode == 0


pytestmark = pytest.mark.skipif(
    not _can_mount_read_only(), reason="needs `unshare -m` and bind mounts (root in a container)"
)


def read_only(floraq: Floraq, *args: str) -> subprocess.CompletedProcess[str]:
    """`floraq ARGS` with the ledger's folder mounted read-only for this process only."""
    folder = str(floraq.ledger_path.parent)
    script = 'mount --bind "$0" "$0" && mount -o remount,bind,ro "$0" "$0" && exec "$@"'
    return subprocess.run(
        ["unshare", "-m", "sh", "-c", script, folder, sys.executable, "-m", "floraq", *args],
        cwd=floraq.cwd,
        env=floraq.env,
        capture_output=True,
        text=True,
        timeout=180,
        stdin=subprocess.DEVNULL,
    )


def folder_digest(folder: Path) -> dict[str, str]:
    """Every file of the ledger's folder, by name, with its sha256."""
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())}


@pytest.fixture
def finished(floraq: Floraq, sandbox: SandboxServer) -> Floraq:
    """A batch of 3 rows downloaded, its ledger closed cleanly (no -wal, no -shm)."""
    manifest = floraq.write_manifest(
        batch="ro",
        jobs=[
            {
                "technique": "portrait-enhancer",
                "rows": [{"input_image": IMG.format(n=n)} for n in range(3)],
            }
        ],
    )
    done = floraq("submit", str(manifest))
    assert done.returncode == 0, done.stderr
    return floraq


@pytest.mark.parametrize(
    "args",
    [
        ("status",),
        ("status", "--json"),
        ("batches",),
        ("verify",),
        ("export", "--format", "csv"),
        ("report", "-o", "report.html"),
    ],
    ids=["status", "status-json", "batches", "verify", "export", "report"],
)
def test_a_read_only_ledger_is_read_and_left_byte_for_byte(
    finished: Floraq, args: tuple[str, ...]
) -> None:
    """Every reading command works on a read-only mount; the folder is unchanged after."""
    folder = finished.ledger_path.parent
    before = folder_digest(folder)
    done = read_only(finished, *args)
    assert done.returncode == 0, done.stderr
    assert "Traceback" not in done.stderr
    assert folder_digest(folder) == before
    if args[0] == "status":
        assert "ro" in done.stdout and "downloaded" in done.stdout
    if args[0] == "export":
        assert len(done.stdout.splitlines()) == 4  # the header and 3 rows


@pytest.mark.parametrize(
    "args",
    [("resume",), ("retry", "--failed"), ("submit", "jobs.yaml")],
    ids=["resume", "retry", "submit"],
)
def test_commands_that_write_say_why_they_cannot(finished: Floraq, args: tuple[str, ...]) -> None:
    """`submit`, `resume`, `retry` on a read-only ledger: exit 2, one line naming it."""
    folder = finished.ledger_path.parent
    before = folder_digest(folder)
    done = read_only(finished, *args)
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr
    [line] = done.stderr.strip().splitlines()
    assert line.startswith("floraq: error: ") and str(finished.ledger_path) in line
    assert "is read-only (it is on a read-only file system)" in line, line
    assert folder_digest(folder) == before


def test_a_read_only_ledger_that_needs_a_migration_says_to_open_it_writable_once(
    finished: Floraq,
) -> None:
    """An older ledger on a read-only mount: one line, and the file is not touched."""
    table = migrations.migrations_table
    conn = sqlite3.connect(finished.ledger_path)
    conn.execute(f"DELETE FROM {table} WHERE name = ?", (MIGRATION_NAMES[-1],))
    conn.commit()
    conn.close()
    folder = finished.ledger_path.parent
    before = folder_digest(folder)
    done = read_only(finished, "status")
    assert done.returncode == 2, done.stderr
    [line] = done.stderr.strip().splitlines()
    assert str(finished.ledger_path) in line and "writable once" in line
    assert folder_digest(folder) == before
