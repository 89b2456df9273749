"""End to end: an output folder the OS refuses by its mode (EACCES), as a user meets it.

Root writes through any mode, so under root (CI) the real `floraq` CLI runs as `nobody`
(``setpriv``, else ``runuser``), in a scratch folder that user owns: its ledger and output
folder are nobody's, the sandbox stays in this (root) process. ``setpriv`` also grants
CAP_DAC_READ_SEARCH, which lets nobody *read* the interpreter under /root (mode 0700) and
nothing more: every write is checked against nobody's rights. Not root: the CLI runs as
the current user. Without either tool, root skips with one line (under CI=true it fails).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from conftest import Floraq, floraq_against, served_outputs, sha256, status_json

from floraq.errors import ExitCode
from floraq.ledger.lean_rows import OUTPUT_PATH
from floraq.sandbox import SandboxServer

NOBODY = 65534
POSTS = "POST /techniques/{slug}/runs"
SKUS = [f"sku-{n}" for n in range(4)]


def _prefix() -> list[str]:
    """How to run a command as an unprivileged user from here ([] when already one)."""
    if os.geteuid() != 0:
        return []
    if setpriv := shutil.which("setpriv"):
        return [
            setpriv,
            f"--reuid={NOBODY}",
            f"--regid={NOBODY}",
            "--clear-groups",
            "--inh-caps=+dac_read_search",
            "--ambient-caps=+dac_read_search",
            "--",
        ]
    if runuser := shutil.which("runuser"):
        return [runuser, "-u", "nobody", "--"]
    reason = "running as root without setpriv or runuser: cannot test file modes"
    if os.environ.get("CI") == "true":
        pytest.fail(f"{reason}; under CI=true this test must run", pytrace=False)
    pytest.skip(reason)


@dataclass
class Unprivileged(Floraq):
    """The real CLI, started through ``prefix`` (as nobody when this process is root)."""

    prefix: list[str] = field(default_factory=list)

    def __call__(
        self, *args: str, timeout: float = 180, **env: str
    ) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*self.prefix, sys.executable, "-m", "floraq", *args],
            cwd=self.cwd,
            env={**self.env, **env},
            capture_output=True,
            text=True,
            timeout=timeout,
            stdin=subprocess.DEVNULL,
        )


@pytest.fixture
def user_cli(sandbox: SandboxServer) -> Iterator[Unprivileged]:
    """The CLI as the unprivileged user, in a scratch folder that user owns."""
    prefix = _prefix()
    base = Path(tempfile.mkdtemp(prefix="floraq-mode-"))
    try:
        if prefix:
            os.chown(base, NOBODY, NOBODY)
        base.chmod(0o755)
        cli = floraq_against(base, sandbox)
        yield Unprivileged(cwd=base, env=cli.env, prefix=prefix)
    finally:
        for path in [base, *base.rglob("*")]:
            if path.is_dir() and not path.is_symlink():
                path.chmod(0o755)
        shutil.rmtree(base)


def _posters(cli: Floraq) -> Path:
    (cli.cwd / "rows.csv").write_text(
        "sku,prompt\n" + "".join(f"{s},a poster of {s}\n" for s in SKUS)
    )
    if os.geteuid() == 0:
        os.chown(cli.cwd / "rows.csv", NOBODY, NOBODY)
    job = {"technique": "poster-maker", "rows_from": {"csv": "rows.csv", "key": "sku"}}
    return cli.write_manifest(batch="mode", jobs=[job])


def test_an_output_dir_made_read_only_stops_downloads_with_exit_7_then_resume_finishes(
    user_cli: Unprivileged, sandbox: SandboxServer
) -> None:
    """Planned and sent, then output_dir becomes mode 0555: the row shows the OS error with
    its path, exit 7; after chmod 755, `resume` brings every file, no run sent twice."""
    jobs = _posters(user_cli)
    done = user_cli("submit", "--no-wait", str(jobs))
    assert done.returncode == ExitCode.INCOMPLETE, done.stdout + done.stderr
    outputs = user_cli.cwd / "outputs"
    owner = os.geteuid() if not user_cli.prefix else NOBODY  # the user floraq ran as
    assert user_cli.ledger_path.stat().st_uid == owner
    assert (outputs / ".floraq" / "owner.json").stat().st_uid == owner
    outputs.chmod(0o555)

    done = user_cli("resume")
    assert done.returncode == ExitCode.DISK, done.stdout + done.stderr
    assert "Traceback" not in done.stderr
    refused = f"cannot write {outputs}/poster-maker"
    assert refused in done.stderr and "Permission denied (EACCES)" in done.stderr
    assert "fix the disk, then run `floraq resume`" in done.stderr
    failures = status_json(user_cli)["failures"]
    assert 1 <= len(failures) <= len(SKUS)  # each row that tried to land its file
    for failure in failures:
        assert (failure["error_code"], failure["state"]) == ("disk_error", "completed")
        assert failure["error_message"].startswith(refused)
        assert "Permission denied (EACCES)" in failure["error_message"]
    assert user_cli.states() == {"completed": len(SKUS)}
    runs = sandbox.stats()["runs_created"]

    outputs.chmod(0o755)
    done = user_cli("resume")
    assert done.returncode == ExitCode.OK, done.stdout + done.stderr
    assert user_cli.states() == {"downloaded": len(SKUS)}
    served = served_outputs(sandbox)
    rows = user_cli.query(
        f"SELECT {OUTPUT_PATH} AS path, o.sha256, o.output_id, j.idempotency_key FROM outputs o"
        " JOIN jobs j ON j.id = o.job_id JOIN batches b ON b.name = j.batch"
    )
    assert len(rows) == len(SKUS)
    for row in rows:
        assert sha256(Path(row["path"])) == row["sha256"]
        assert row["sha256"] == served[f"{row['idempotency_key']}/{row['output_id']}"]
    assert sandbox.stats()["runs_created"] == runs == len(SKUS)
    assert status_json(user_cli)["failures"] == []


def test_a_read_only_output_dir_by_mode_is_refused_before_anything_is_sent(
    user_cli: Unprivileged, sandbox: SandboxServer
) -> None:
    """output_dir of mode 0555 (the user's own folder): plan and submit exit 2, one line
    naming it, no POST, no ledger."""
    jobs = _posters(user_cli)
    outputs = user_cli.cwd / "outputs"
    outputs.mkdir()
    if os.geteuid() == 0:
        os.chown(outputs, NOBODY, NOBODY)
    outputs.chmod(0o555)
    for command in ("plan", "submit"):
        done = user_cli(command, str(jobs))
        assert done.returncode == ExitCode.USAGE, done.stdout + done.stderr
        text = done.stdout + done.stderr
        assert (
            f"output_dir: {outputs} cannot be written: {outputs} refuses new files"
            " (Permission denied, EACCES); set output_dir to a folder floraq can write" in text
        )
        assert "Traceback" not in text
    assert sandbox.stats()["requests"].get(POSTS, 0) == 0
    assert not user_cli.ledger_path.exists()
    assert list(outputs.iterdir()) == []
