"""Secrets and transport: the API key goes to FLORA's API and nowhere else, over TLS.

A canary key is used for a whole session (faults included, so error paths run too), then
every artefact floraq left is searched for it: the ledger with its WAL and SHM, the lock
file, every output, every export, and everything each command printed.
"""

from __future__ import annotations

import http.server
import shutil
import ssl
import stat
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner
from conftest import Floraq, clean_env, output_files

from floraq.cli import cli
from floraq.sandbox import SandboxConfig, SandboxServer

CANARY = "sk_live_CANARY7f3a9c1e5b2d8046"
IMG = "https://storage.googleapis.com/floraq-secret/{n}.jpg"
COMMANDS = ("plan", "submit", "resume", "status", "techniques", "export", "retry")


@pytest.fixture
def canary(tmp_path: Path) -> Iterator[tuple[SandboxServer, Floraq]]:
    """A sandbox that only accepts the canary key, and floraq configured with it."""
    config = SandboxConfig(seed=5, time_scale=0.01, api_keys=(CANARY,), duration=(1.0, 3.0))
    with SandboxServer(config) as server:
        env = clean_env()
        env.update(
            FLORA_API_KEY=CANARY,
            FLORA_BASE_URL=server.base_url,
            FLORAQ_LEDGER=str(tmp_path / "state" / "floraq.db"),
            FLORAQ_TIME_SCALE="0.01",
        )
        yield server, Floraq(cwd=tmp_path, env=env)


def every_file(root: Path) -> Iterator[Path]:
    yield from (p for p in root.rglob("*") if p.is_file())


def test_canary_key_appears_in_no_artefact(canary: tuple[SandboxServer, Floraq]) -> None:
    """A full session with faults, -v request logs and a 401: the key is in nothing it left."""
    sandbox, floraq = canary
    sandbox.configure(
        error_5xx_rate=0.2, rate_429=0.1, drop_rate=0.05, truncate_rate=0.1, upload_5xx_rate=0.2
    )
    (floraq.cwd / "local.png").write_bytes(b"\x89PNG\r\n\x1a\n" + CANARY.encode()[::-1])
    jobs = floraq.write_manifest(
        batch="secret",
        jobs=[
            {"technique": "portrait-enhancer", "rows": [{"input_image": IMG.format(n=n)}]}
            for n in range(6)
        ]
        + [{"technique": "poster-maker", "rows": [{"prompt": "a kite [[fail:moderation]]"}]}]
        + [{"technique": "portrait-enhancer", "rows": [{"input_image": "local.png"}]}],
    )
    runs = [
        floraq("plan", str(jobs), "-v"),
        floraq("submit", str(jobs), "-v", FLORAQ_CRASH_AT="mid_download:3"),
        floraq("resume", "-v"),
        floraq("status", "-v"),
        floraq("status", "--json"),
        floraq("techniques", "-v"),
        floraq("export", "-o", "rows.csv"),
        floraq("export", "--format", "jsonl"),
    ]
    uploads = sandbox.stats()
    # The upload host is a third party, like the media host: never the key there.
    assert uploads["uploads"] == 1 and uploads["upload_auth_rejections"] == 0
    assert uploads["media_auth_rejections"] == 0
    sandbox.configure(revoked_keys=[CANARY])
    refused = floraq("retry", "--failed", "-v")
    assert refused.returncode == 3, refused.stderr
    assert "the API refused the key" in refused.stderr
    assert runs[2].returncode == 1, runs[2].stderr  # the moderated row failed
    assert any("request: POST /techniques/portrait-enhancer/runs" in r.stderr for r in runs)
    for done in [*runs, refused]:
        assert CANARY not in done.stdout + done.stderr
        assert "Traceback" not in done.stderr
    artefacts = list(every_file(floraq.cwd))
    assert any(p.name == "floraq.db" for p in artefacts)
    assert any(p.suffix == ".png" for p in artefacts)
    for path in artefacts:
        assert CANARY.encode() not in path.read_bytes(), path


def test_no_api_key_flag(canary: tuple[SandboxServer, Floraq]) -> None:
    """The key is read from the environment only: no command has an --api-key flag."""
    _, floraq = canary
    refused = floraq("submit", "--api-key", CANARY, "jobs.yaml")
    assert refused.returncode == 2
    assert "No such option '--api-key'" in refused.stderr
    for command in COMMANDS:  # the help texts, in-process (they are static)
        shown = CliRunner().invoke(cli, [command, "--help"])
        assert shown.exit_code == 0, shown.output
        assert "--api-key" not in shown.output


def test_ledger_wal_shm_and_lock_are_user_only_even_with_umask_0(
    canary: tuple[SandboxServer, Floraq],
) -> None:
    """Under umask 000, the state folder is 0700 and every ledger file 0600, while in use."""
    sandbox, floraq = canary
    sandbox.configure(duration=[100, 100])
    jobs = floraq.write_manifest(
        batch="modes", jobs=[{"technique": "poster-maker", "rows": [{"prompt": "a kite"}]}]
    )
    proc = subprocess.Popen(
        [sys.executable, "-m", "floraq", "submit", str(jobs)],
        cwd=floraq.cwd,
        env=floraq.env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        umask=0,
    )
    try:
        deadline = time.monotonic() + 20
        while sandbox.stats()["runs_created"] < 1 and time.monotonic() < deadline:
            time.sleep(0.01)
        state = floraq.ledger_path.parent
        names = {p.name: stat.S_IMODE(p.stat().st_mode) for p in state.iterdir()}
    finally:
        _, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    assert stat.S_IMODE(state.stat().st_mode) == 0o700
    assert names == dict.fromkeys(
        ["floraq.db", "floraq.db-wal", "floraq.db-shm", "floraq.db.lock"], 0o600
    )


@pytest.mark.parametrize(
    "base_url",
    ["http://app.flora.ai/api/v1", "ftp://127.0.0.1/api/v1", "http://10.0.0.1/api/v1"],
)
def test_plain_http_base_url_is_refused_unless_loopback(
    canary: tuple[SandboxServer, Floraq], base_url: str
) -> None:
    """The key would travel in clear text: refused before any connection, exit 2."""
    _, floraq = canary
    done = floraq("techniques", FLORA_BASE_URL=base_url)
    assert done.returncode == 2
    assert "refusing base URL" in done.stderr and "use https://" in done.stderr
    assert CANARY not in done.stderr


@pytest.fixture
def self_signed(tmp_path: Path) -> Iterator[tuple[str, list[str]]]:
    """An HTTPS server on 127.0.0.1 with a self-signed certificate; records request lines."""
    openssl = shutil.which("openssl")
    if openssl is None:
        pytest.skip("needs the openssl command to make a certificate")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    request = "req -x509 -newkey rsa:2048 -nodes -days 1 -subj /CN=127.0.0.1"
    names = ["-addext", "subjectAltName=IP:127.0.0.1", "-keyout", str(key), "-out", str(cert)]
    subprocess.run(
        [openssl, *request.split(), *names],
        check=True,
        capture_output=True,
    )
    seen: list[str] = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            seen.append(self.requestline)
            self.send_response(200)
            self.end_headers()

        def log_message(self, format: str, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"https://127.0.0.1:{server.server_address[1]}/api/v1", seen
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def test_tls_certificates_are_always_verified(
    canary: tuple[SandboxServer, Floraq], self_signed: tuple[str, list[str]]
) -> None:
    """An HTTPS API with an untrusted certificate gets no request at all, so never the key."""
    _, floraq = canary
    base_url, seen = self_signed
    done = floraq("techniques", FLORA_BASE_URL=base_url)
    assert done.returncode == 1, done.stderr
    assert "CERTIFICATE_VERIFY_FAILED" in done.stderr and "Traceback" not in done.stderr
    assert seen == []
    assert CANARY not in done.stderr


def test_output_file_names_come_from_the_template_only(
    canary: tuple[SandboxServer, Floraq], tmp_path: Path
) -> None:
    """Output ids like '..' from the server never steer a file out of its row's folder."""
    sandbox, floraq = canary
    catalog = tmp_path / "catalog.yaml"
    catalog.write_text(
        yaml.safe_dump(
            {
                "techniques": [
                    {
                        "slug": "sneaky",
                        "technique_id": "tech_sneaky01",
                        "name": "Sneaky",
                        "run_cost": 0.01,
                        "duration": [1, 2],
                        "inputs": [{"id": "prompt", "name": "Prompt", "type": "text"}],
                        "outputs": [
                            {"id": "..", "name": "Up", "type": "imageUrl"},
                            {"id": ".hidden", "name": "Hidden", "type": "text"},
                        ],
                    }
                ]
            }
        )
    )
    sandbox.configure(catalog=str(catalog))
    jobs = floraq.write_manifest(
        batch="names", jobs=[{"technique": "sneaky", "rows": [{"prompt": "a kite"}]}]
    )
    done = floraq("submit", str(jobs))
    assert done.returncode == 0, done.stderr
    outputs = floraq.cwd / "outputs"
    files = sorted(p.relative_to(floraq.cwd) for p in output_files(outputs))
    assert len(files) == 2
    # besides them only floraq's own marker, under a fixed name
    assert sorted(set(every_file(outputs)) - set(output_files(outputs))) == [
        outputs / ".floraq" / "owner.json"
    ]
    for path in files:
        assert path.parts[:2] == ("outputs", "sneaky") and len(path.parts) == 4
        assert path.name.startswith("x") and not path.name.startswith(".")
    assert sorted(p.name for p in floraq.cwd.iterdir()) == [
        "catalog.yaml",
        "jobs.yaml",
        "outputs",
        "state",
    ]


def test_loopback_check_is_not_fooled_by_names(canary: tuple[SandboxServer, Floraq]) -> None:
    """A host merely named like loopback (127.0.0.1.example.com) still needs https://."""
    _, floraq = canary
    done = floraq("techniques", FLORA_BASE_URL="http://127.0.0.1.nip.io/api/v1")
    assert done.returncode == 2
    assert "refusing base URL" in done.stderr


def test_a_key_with_a_trailing_newline_is_the_same_key_on_resume(
    canary: tuple[SandboxServer, Floraq],
) -> None:
    """`export FLORA_API_KEY=$(cat keyfile)` keeps a newline: the intent is still re-sent.

    The key is stripped once, before it is both sent and fingerprinted; a fingerprint of
    the raw value would make the resumed row `unknown_outcome api_key_changed`.
    """
    sandbox, floraq = canary
    jobs = floraq.write_manifest(
        batch="newline-key",
        jobs=[{"technique": "poster-maker", "rows": [{"prompt": "a kite"}]}],
    )
    key = floraq.env["FLORA_API_KEY"]
    crashed = floraq("submit", str(jobs), FLORAQ_CRASH_AT="after_intent_commit")
    assert crashed.returncode == -9, crashed.stderr
    assert floraq.states() == {"submitting": 1}
    done = floraq("resume", FLORA_API_KEY=key + "\n")
    assert done.returncode == 0, done.stderr
    assert floraq.states() == {"downloaded": 1}
    assert sandbox.stats()["runs_created"] == 1
