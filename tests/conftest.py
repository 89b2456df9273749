"""Fixtures for end-to-end tests: a real sandbox on 127.0.0.1 and the real floraq CLI."""

from __future__ import annotations

import hashlib
import json
import os
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml
from ledgers import ledger_with, new_ledger, postgres_schema  # noqa: F401 (fixtures for every module)

from floraq.sandbox import SandboxConfig, SandboxServer

TIME_SCALE = "0.01"  # polls and back-off 100x faster, matching the sandbox's scaled runs


@pytest.fixture
def sandbox() -> Iterator[SandboxServer]:
    """A fresh sandbox whose 5-60 s runs take 0.05-0.6 s."""
    with SandboxServer(SandboxConfig(seed=1, time_scale=0.01)) as server:
        yield server


@dataclass
class Floraq:
    """The real `floraq` command, run in a scratch folder against one sandbox."""

    cwd: Path
    env: dict[str, str] = field(default_factory=dict)

    @property
    def ledger_path(self) -> Path:
        return Path(self.env["FLORAQ_LEDGER"])

    def __call__(
        self, *args: str, timeout: float = 180, **env: str
    ) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "floraq", *args],
            cwd=self.cwd,
            env={**self.env, **env},
            capture_output=True,
            text=True,
            timeout=timeout,
            stdin=subprocess.DEVNULL,
        )

    def start(self, *args: str, **env: str) -> subprocess.Popen[str]:
        return subprocess.Popen(
            [sys.executable, "-m", "floraq", *args],
            cwd=self.cwd,
            env={**self.env, **env},
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            stdin=subprocess.DEVNULL,
        )

    def query(self, sql: str, params: tuple[Any, ...] = ()) -> list[dict[str, Any]]:
        """Read the ledger the way an operator with sqlite3 would."""
        conn = sqlite3.connect(f"file:{self.ledger_path}?mode=ro", uri=True)
        conn.row_factory = sqlite3.Row
        try:
            return [dict(r) for r in conn.execute(sql, params).fetchall()]
        finally:
            conn.close()

    def states(self) -> dict[str, int]:
        return {
            r["state"]: r["n"]
            for r in self.query("SELECT state, COUNT(*) AS n FROM jobs GROUP BY state")
        }

    def write_manifest(self, name: str = "jobs.yaml", **manifest: Any) -> Path:
        manifest.setdefault("version", 1)
        manifest.setdefault("output_dir", "outputs")
        path = self.cwd / name
        path.write_text(yaml.safe_dump(manifest, sort_keys=False))
        return path


REPO = Path(__file__).resolve().parent.parent


def clean_env() -> dict[str, str]:
    """The parent's environment without the developer's FLORA/floraq settings.

    PYTHONPATH points at this checkout, so `python -m floraq` runs the code under test
    even when the installed (editable) copy is another checkout.
    """
    env = {k: v for k, v in os.environ.items() if not k.startswith(("FLORA", "FLORAQ"))}
    env["PYTHONPATH"] = str(REPO)
    return env


def floraq_against(cwd: Path, server: SandboxServer) -> Floraq:
    """The CLI in `cwd`, pointed at `server`, with its ledger under `cwd/state`."""
    env = clean_env()
    env.update(
        FLORA_API_KEY=server.api_key,
        FLORA_BASE_URL=server.base_url,
        FLORAQ_LEDGER=str(cwd / "state" / "floraq.db"),
        FLORAQ_TIME_SCALE=TIME_SCALE,
    )
    return Floraq(cwd=cwd, env=env)


@pytest.fixture
def floraq(tmp_path: Path, sandbox: SandboxServer) -> Floraq:
    return floraq_against(tmp_path, sandbox)


def ledger_states(floraq: Floraq) -> dict[str, int]:
    """The ledger's state counts while another process writes it ({} until it exists)."""
    try:
        return floraq.states()
    except sqlite3.Error:
        return {}


def output_files(root: Path, pattern: str = "*") -> list[Path]:
    """The files under an output folder, without floraq's own (``.floraq/``: owner, thumbs)."""
    return [
        p for p in root.rglob(pattern) if p.is_file() and ".floraq" not in p.relative_to(root).parts
    ]


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def served_outputs(sandbox: SandboxServer) -> dict[str, str]:
    """idempotency key -> sha256 of each output the sandbox served, keyed 'key/output_id'."""
    result: dict[str, str] = {}
    for run in sandbox.runs():
        for out in run.get("outputs") or []:
            result[f"{run['idempotency_key']}/{out['output_id']}"] = out["sha256"]
    return result


def status_json(floraq: Floraq, *args: str) -> dict[str, Any]:
    done = floraq("status", "--json", *args)
    assert done.returncode == 0, done.stderr
    return dict(json.loads(done.stdout))
