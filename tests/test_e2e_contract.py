"""floraq against a second FLORA implementation that makes every other open choice."""

from __future__ import annotations

import hashlib
import subprocess
import sys
from pathlib import Path

import yaml
from conftest import clean_env
from other_flora import KEY, serving


def run_floraq(cwd: Path, base_url: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = clean_env()
    env.update(
        FLORA_API_KEY=KEY,
        FLORA_BASE_URL=base_url,
        FLORAQ_LEDGER=str(cwd / "state" / "floraq.db"),
        FLORAQ_TIME_SCALE="0.01",
    )
    return subprocess.run(
        [sys.executable, "-m", "floraq", *args],
        cwd=cwd, env=env, capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL,
    )  # fmt: skip


def test_batch_completes_against_an_independent_implementation(tmp_path: Path) -> None:
    """Opaque ids, 201 without poll_url, late charge, localhost media: every output lands."""
    manifest = {
        "version": 1,
        "batch": "other",
        "output_dir": "out",
        "jobs": [{"technique": "sketch", "rows": [{"subject": f"owl {n}"} for n in range(4)]}],
    }
    (tmp_path / "jobs.yaml").write_text(yaml.safe_dump(manifest))
    with serving() as flora:
        base = f"http://127.0.0.1:{flora.port}/v1"
        done = run_floraq(tmp_path, base, "submit", "jobs.yaml")
        assert done.returncode == 0, done.stderr
        files = sorted((tmp_path / "out" / "sketch").glob("*/sketch.webp"))
        assert len(files) == 4
        expected = {hashlib.sha256(r.body).hexdigest() for r in flora.runs.values()}
        assert {hashlib.sha256(f.read_bytes()).hexdigest() for f in files} == expected
        assert len(flora.runs) == 4 and flora.media_gets == 4
        status = run_floraq(tmp_path, base, "status")
        assert "charged 1.0000 USD" in status.stdout, status.stdout
        again = run_floraq(tmp_path, base, "submit", "jobs.yaml")
        assert again.returncode == 0 and len(flora.runs) == 4 and flora.media_gets == 4
