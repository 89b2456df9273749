"""End to end: the disk is checked before paying, a disk that refuses writes stops the batch
with exit 7, and each output folder knows the batch and ledger that own it."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

from conftest import Floraq, floraq_against, served_outputs, sha256, status_json

from floraq.errors import ExitCode
from floraq.ledger.lean_rows import OUTPUT_PATH
from floraq.sandbox import SandboxServer

POSTS = "POST /techniques/{slug}/runs"
SKUS = [f"sku-{n}" for n in range(8)]


def posters(floraq: Floraq, name: str = "jobs.yaml", **manifest: object) -> Path:
    """Keyed poster-maker rows, so each row's folder is outputs/poster-maker/<sku>."""
    (floraq.cwd / "rows.csv").write_text(
        "sku,prompt\n" + "".join(f"{s},a poster of {s}\n" for s in SKUS)
    )
    job = {"technique": "poster-maker", "rows_from": {"csv": "rows.csv", "key": "sku"}}
    manifest.setdefault("batch", "disk")
    return floraq.write_manifest(name, jobs=[job], **manifest)


def test_dangling_symlink_output_dir_is_refused_by_plan_and_submit(
    floraq: Floraq, sandbox: SandboxServer
) -> None:
    """output_dir through a symlink to nowhere: exit 2 from plan and submit, one line, no POST."""
    os.symlink(floraq.cwd / "gone", floraq.cwd / "outputs")
    jobs = posters(floraq)
    for command in ("plan", "submit"):
        done = floraq(command, str(jobs))
        assert done.returncode == ExitCode.USAGE, done.stdout + done.stderr
        text = done.stdout + done.stderr
        assert f"output_dir: {floraq.cwd}/outputs is a symlink to {floraq.cwd}/gone" in text
        assert "which does not exist; create its target or set output_dir" in text
        assert "Traceback" not in text
    assert sandbox.stats()["requests"].get(POSTS, 0) == 0
    assert not floraq.ledger_path.exists() and not (floraq.cwd / "gone").exists()


def test_skip_invalid_does_not_skip_an_unwritable_output_dir(
    floraq: Floraq, sandbox: SandboxServer
) -> None:
    """--skip-invalid skips bad rows, never a batch whose files could not land."""
    (floraq.cwd / "blocker").write_text("a file")
    done = floraq("submit", "--skip-invalid", str(posters(floraq, output_dir="blocker/out")))
    assert done.returncode == ExitCode.USAGE, done.stderr
    assert "blocker is a file, not a folder" in done.stderr
    assert sandbox.stats()["requests"].get(POSTS, 0) == 0
    assert not floraq.ledger_path.exists()


def wait_for_downloads(floraq: Floraq, at_least: int, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            rows = floraq.query("SELECT COUNT(*) AS n FROM outputs WHERE state = 'downloaded'")
            if rows[0]["n"] >= at_least:
                return
        except Exception:  # the ledger may not exist yet
            pass
        time.sleep(0.02)
    raise AssertionError("no download landed in time")


def test_a_folder_that_becomes_a_file_stops_the_batch_with_exit_7_then_resume_finishes(
    floraq: Floraq, sandbox: SandboxServer
) -> None:
    """The technique folder becomes a regular file mid-batch (root cannot write through
    that): exit 7 naming the path, the row shows it, downloads stop; fixed, `resume`
    brings every file with the served sha256 and sends no new run."""
    sandbox.configure(duration=[40, 400])  # 0.4-4 s: the first file lands well before the last
    process = floraq.start("submit", str(posters(floraq, concurrency=8)))
    wait_for_downloads(floraq, 1)
    folder = floraq.cwd / "outputs" / "poster-maker"
    aside = floraq.cwd / "outputs" / "aside"
    os.rename(folder, aside)
    folder.write_text("not a folder")
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == ExitCode.DISK, stderr
    assert "Traceback" not in stderr
    assert f"cannot write {folder}/" in stderr and "(ENOTDIR)" in stderr
    assert "fix the disk, then run `floraq resume`" in stderr
    downloaded = floraq.query("SELECT COUNT(*) AS n FROM jobs WHERE state = 'downloaded'")[0]["n"]
    assert 1 <= downloaded < len(SKUS)
    refused = [f for f in status_json(floraq)["failures"] if f["error_code"] == "disk_error"]
    assert len(refused) == 1 and refused[0]["state"] == "completed"
    assert f"cannot write {folder}/" in refused[0]["error_message"]
    shown = floraq("status")
    assert "completed disk_error: cannot write" in shown.stdout
    runs = sandbox.stats()["runs_created"]

    folder.unlink()
    os.rename(aside, folder)
    done = floraq("resume")
    assert done.returncode == ExitCode.OK, done.stderr
    assert floraq.states() == {"downloaded": len(SKUS)}
    served = served_outputs(sandbox)
    outputs = floraq.query(
        f"SELECT {OUTPUT_PATH} AS path, o.sha256, o.output_id, j.idempotency_key FROM outputs o"
        " JOIN jobs j ON j.id = o.job_id JOIN batches b ON b.name = j.batch"
    )
    assert len(outputs) == len(SKUS)
    for out in outputs:
        assert sha256(Path(out["path"])) == out["sha256"]
        assert out["sha256"] == served[f"{out['idempotency_key']}/{out['output_id']}"]
    assert sandbox.stats()["runs_created"] == runs == len(SKUS)
    assert status_json(floraq)["failures"] == []


def test_the_owner_marker_keeps_another_ledger_out_of_the_folder(
    floraq: Floraq, sandbox: SandboxServer
) -> None:
    """outputs/.floraq/owner.json names batch and ledger; a batch of another ledger (another
    working directory) aiming at that folder is refused by plan and submit, naming the owner."""
    assert floraq("submit", str(posters(floraq, output_dir="shared"))).returncode == 0
    marker = json.loads((floraq.cwd / "shared" / ".floraq" / "owner.json").read_text())
    assert marker["ledger"] == str(floraq.ledger_path.resolve())
    assert marker["batches"] == ["disk"] and marker["created_at"] > 0

    elsewhere = floraq.cwd / "elsewhere"
    elsewhere.mkdir()
    other = floraq_against(elsewhere, sandbox)
    other.write_manifest(
        batch="intruder",
        output_dir=str(floraq.cwd / "shared"),
        jobs=[{"technique": "poster-maker", "rows": [{"prompt": "another kite"}]}],
    )
    posts = sandbox.stats()["requests"][POSTS]
    for command in ("plan", "submit"):
        done = other(command, "jobs.yaml")
        assert done.returncode == ExitCode.USAGE, done.stdout + done.stderr
        assert (
            f"output_dir: {floraq.cwd}/shared belongs to batch 'disk' of another ledger,"
            f" {floraq.ledger_path.resolve()}" in done.stdout + done.stderr
        )
    assert sandbox.stats()["requests"][POSTS] == posts
    assert not other.ledger_path.exists()


def test_a_changed_output_dir_for_an_existing_batch_is_an_error(
    floraq: Floraq, sandbox: SandboxServer
) -> None:
    """Same batch, same ledger, another output_dir: refused, not a batch split in two."""
    assert floraq("submit", str(posters(floraq, output_dir="first"))).returncode == 0
    posts = sandbox.stats()["requests"][POSTS]
    done = floraq("submit", str(posters(floraq, output_dir="second")))
    assert done.returncode == ExitCode.USAGE, done.stderr
    assert (
        f"batch 'disk' writes to {floraq.cwd}/first, not {floraq.cwd}/second:"
        " put output_dir back, or give the batch a new name" in done.stderr
    )
    assert sandbox.stats()["requests"][POSTS] == posts
    assert not (floraq.cwd / "second").exists()
