"""Local files end to end (issue 11): the real CLI, the sandbox's assets API, crashes.

Every test checks what a user would: each content uploaded once (the sandbox counts
uploads per asset), every run's input bytes equal to its row's file (the sandbox hashes
what it took), no run created before its asset was ready (the sandbox refuses one under
``check_asset_inputs``), and never the API key on the upload host.
"""

from __future__ import annotations

import hashlib
import http.server
import random
import signal
import ssl
import subprocess
import threading
import time
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import Floraq, clean_env, floraq_against
from other_flora import serving

from floraq.crashpoints import UPLOAD_POINTS
from floraq.runner.assets import MAX_RENEWALS
from floraq.sandbox import SandboxConfig, SandboxServer

ROWS, DUPLICATES = 16, 4  # 12 contents: more than the 4 creates in flight and every NTH


def png(n: int) -> bytes:
    """A small valid PNG whose bytes depend on ``n``."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return len(data).to_bytes(4, "big") + body + zlib.crc32(body).to_bytes(4, "big")

    header = (4).to_bytes(4, "big") * 2 + bytes([8, 2, 0, 0, 0])
    pixels = b"".join(b"\x00" + n.to_bytes(12, "big") for _ in range(4))
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(pixels))
        + chunk(b"IEND", b"")
    )


@pytest.fixture
def sandbox() -> Iterator[SandboxServer]:
    config = SandboxConfig(seed=5, time_scale=0.01, check_asset_inputs=True)
    with SandboxServer(config) as server:
        yield server


def photo_batch(cwd: Path, *, batch: str = "photos", folder: str = "photos") -> dict[str, str]:
    """A CSV of ROWS local paths, DUPLICATES of them the same bytes as another; style -> sha."""
    (cwd / folder).mkdir(exist_ok=True)
    lines, expected = ["sku,image,style"], {}
    for n in range(ROWS):
        content = png(n % (ROWS - DUPLICATES))
        name = f"{folder}/p{n:02d}.png"
        (cwd / name).write_bytes(content)
        path = name if n % 2 else str(cwd / name)  # relative and absolute paths both
        lines.append(f"s{n:02d},{path},style {n}")
        expected[f"style {n}"] = hashlib.sha256(content).hexdigest()
    (cwd / f"{batch}.csv").write_text("\n".join(lines) + "\n")
    (cwd / f"{batch}.yaml").write_text(
        f"version: 1\nbatch: {batch}\noutput_dir: out-{batch}\njobs:\n"
        "  - technique: product-shot\n"
        f"    rows_from: {{csv: {batch}.csv, key: sku, columns: {{input_image: image}}}}\n"
    )
    return expected


def assert_inputs_are_the_files(sandbox: SandboxServer, expected: dict[str, str]) -> None:
    """Each run got its row's file: the asset it names holds exactly that file's bytes."""
    runs = sandbox.runs()
    assert len(runs) == len(expected)
    for run in runs:
        style = next(i["value"] for i in run["inputs"] if i["id"] == "style")
        assert run["input_assets"] == {"input_image": expected[style]}


def assert_each_content_uploaded_once(
    sandbox: SandboxServer, contents: int, *, unseen: int = 0
) -> None:
    """One ready asset per content, uploaded once; at most ``unseen`` more: assets FLORA
    would not replay (a 409 reading of idempotency), never uploaded to."""
    assets = sandbox.assets()
    assert contents <= len(assets) <= contents + unseen, "a content got a second asset"
    ready = [a for a in assets if a["status"] == "ready"]
    assert len(ready) == contents and all(a["uploads"] == 1 for a in ready), assets
    assert all(a["uploads"] == 0 for a in assets if a["status"] != "ready")
    assert len({a["sha256"] for a in ready}) == contents
    stats = sandbox.stats()
    assert stats["uploads"] == contents and stats["upload_auth_rejections"] == 0


def test_a_csv_of_local_paths_uploads_each_content_once(
    tmp_path: Path, sandbox: SandboxServer
) -> None:
    """16 rows, 4 repeated contents: 12 uploads, 16 runs, every run's input its file."""
    cli = floraq_against(tmp_path, sandbox)
    expected = photo_batch(tmp_path)
    plan = cli("plan", "photos.yaml")
    assert plan.returncode == 0, plan.stderr
    size = sum(len(png(n)) for n in range(ROWS - DUPLICATES))
    contents = ROWS - DUPLICATES
    assert f"local files: {contents} to upload ({size:,} bytes), 0 of them already uploaded" in (
        plan.stdout
    )
    assert sandbox.stats()["uploads"] == 0  # plan sends nothing
    done = cli("submit", "photos.yaml")
    assert done.returncode == 0, done.stderr
    assert cli.states() == {"downloaded": ROWS}
    assert_each_content_uploaded_once(sandbox, ROWS - DUPLICATES)
    assert_inputs_are_the_files(sandbox, expected)
    # The same files in another folder and another batch: nothing is uploaded again.
    moved = photo_batch(tmp_path, batch="again", folder="moved")
    replan = cli("plan", "again.yaml")
    assert f"{contents} to upload" in replan.stdout
    assert f"{contents} of them already uploaded" in replan.stdout
    assert cli("submit", "again.yaml").returncode == 0
    assert sandbox.stats()["uploads"] == ROWS - DUPLICATES
    assert len(sandbox.runs()) == 2 * ROWS and len(moved) == ROWS


def test_editing_a_file_changes_its_row(tmp_path: Path, sandbox: SandboxServer) -> None:
    """The key covers the content: an edited file is "changed since it was submitted"."""
    cli = floraq_against(tmp_path, sandbox)
    photo_batch(tmp_path)
    assert cli("submit", "photos.yaml").returncode == 0
    (tmp_path / "photos" / "p03.png").write_bytes(png(999))
    again = cli("submit", "photos.yaml")
    assert again.returncode == 2
    assert "(key 's03') changed since it was submitted in this batch" in again.stderr
    assert sandbox.stats()["uploads"] == ROWS - DUPLICATES


NTH = {  # which time each upload crash point is reached when the process dies there
    "after_asset_intent": 1,
    "after_asset_post_before_commit": 4,
    "after_upload_before_commit": 3,
    "after_complete_before_commit": 5,
}


def test_every_upload_crash_point_is_tested() -> None:
    assert set(NTH) == UPLOAD_POINTS


# Each point under a 409 reading (the strict one: a lost create costs an asset there); the
# replay reading only where it changes the path, a create whose reply the crash lost (replayed
# as the same asset). At the other points no create is sent again, so both readings are alike.
CRASHES = [(point, "suppress") for point in sorted(UPLOAD_POINTS)] + [
    ("after_asset_post_before_commit", "replay")
]


@pytest.mark.parametrize(("point", "mode"), CRASHES)
def test_a_crash_at_each_upload_step_resumes_without_a_second_upload(
    tmp_path: Path, sandbox: SandboxServer, point: str, mode: str
) -> None:
    """Under both readings of idempotency: each content uploaded once, every row runs.

    Only a 409 reading can cost assets: those whose ids were lost with the process (at
    most the 4 creates in flight) are never replayed, so fresh keys make others (nothing
    is uploaded to the lost ones).
    """
    sandbox.configure(idempotency=mode)
    cli = floraq_against(tmp_path, sandbox)
    expected = photo_batch(tmp_path)
    crashed = cli("submit", "photos.yaml", FLORAQ_CRASH_AT=f"{point}:{NTH[point]}")
    assert crashed.returncode == -signal.SIGKILL, crashed.stderr
    resumed = cli("resume")
    # Runs flow while files upload, so the kill may also cut a run POST's reply: under a
    # 409 reading that row is rightly unknown_outcome (FLORA has its run; floraq cannot
    # learn it), and only then may resume exit 1.
    states = cli.states()
    unknown = states.pop("unknown_outcome", 0) if mode == "suppress" else 0
    assert resumed.returncode == (1 if unknown else 0), resumed.stderr
    assert states == {"downloaded": ROWS - unknown}
    stuck = cli.query("SELECT idempotency_key FROM jobs WHERE state = 'unknown_outcome'")
    assert {r["idempotency_key"] for r in stuck} <= {r["idempotency_key"] for r in sandbox.runs()}
    lost = mode == "suppress" and point == "after_asset_post_before_commit"
    assert_each_content_uploaded_once(sandbox, ROWS - DUPLICATES, unseen=4 if lost else 0)
    assert_inputs_are_the_files(sandbox, expected)


@pytest.mark.parametrize("seed", [11, 12, 13])
def test_sigkill_at_random_instants_of_the_upload_phase(
    tmp_path: Path, sandbox: SandboxServer, seed: int
) -> None:
    """Killed two or three times while files upload, then resumed: each content once."""
    sandbox.configure(asset_ready_delay=0.05, latency=0.002)
    cli = floraq_against(tmp_path, sandbox)
    expected = photo_batch(tmp_path)
    draw = random.Random(seed)
    for kill in range(3):
        args = ("submit", "photos.yaml") if kill == 0 else ("resume",)
        before = sandbox.stats()["requests"].get("POST /assets", 0)
        process = cli.start(*args)
        deadline = time.monotonic() + 60  # the upload phase has begun: its first create
        while sandbox.stats()["requests"].get("POST /assets", 0) == before:
            if process.poll() is not None or time.monotonic() > deadline:
                break
            time.sleep(0.01)
        time.sleep(draw.uniform(0.0, 0.4))
        process.send_signal(signal.SIGKILL)
        process.communicate()
        if sandbox.stats()["uploads"] == ROWS - DUPLICATES:
            break
    final = cli("resume")
    assert final.returncode == 0, final.stderr
    assert cli.states() == {"downloaded": ROWS}
    assert_each_content_uploaded_once(sandbox, ROWS - DUPLICATES)
    assert_inputs_are_the_files(sandbox, expected)


def test_an_expired_reservation_is_renewed_not_replaced(
    tmp_path: Path, sandbox: SandboxServer
) -> None:
    """Reservations that lapse are renewed with retry (never a second asset), a few times,
    then the row is rejected with the reason; nothing was uploaded, no run was made."""
    sandbox.configure(upload_ttl=0.001)
    cli = floraq_against(tmp_path, sandbox)
    (tmp_path / "a.png").write_bytes(png(1))
    (tmp_path / "jobs.yaml").write_text(
        "version: 1\nbatch: exp\njobs:\n  - technique: portrait-enhancer\n"
        "    rows: [{input_image: a.png}]\n"
    )
    done = cli("submit", "jobs.yaml")
    assert done.returncode == 1, done.stderr
    (job,) = cli.query("SELECT state, error_code, error_message FROM jobs")
    assert (job["state"], job["error_code"]) == ("rejected", "asset_failed")
    assert "its upload was refused" in job["error_message"]
    stats = sandbox.stats()
    assert len(sandbox.assets()) == 1 and stats["assets_created"] == 1
    assert stats["requests"]["POST /assets/{asset_id}/retry"] == MAX_RENEWALS
    assert stats["uploads"] == 0 and stats["runs_created"] == 0


def test_upload_faults_are_retried_like_any_request(tmp_path: Path, sandbox: SandboxServer) -> None:
    sandbox.configure(upload_5xx_rate=0.5)
    cli = floraq_against(tmp_path, sandbox)
    expected = photo_batch(tmp_path)
    done = cli("submit", "photos.yaml")
    assert done.returncode == 0, done.stderr
    assert sandbox.stats()["upload_faults"] > 0
    assert_each_content_uploaded_once(sandbox, ROWS - DUPLICATES)
    assert_inputs_are_the_files(sandbox, expected)


def test_several_workspaces_and_none_chosen_is_a_plan_error(tmp_path: Path) -> None:
    """Against a FLORA whose key has two workspaces, plan lists them; `workspace:` picks one."""
    (tmp_path / "a.png").write_bytes(png(1))
    manifest = "version: 1\nbatch: ws\njobs:\n  - technique: restyle\n    rows: [{photo: a.png}]\n"
    (tmp_path / "jobs.yaml").write_text(manifest)
    with serving() as flora:
        env = clean_env() | {
            "FLORA_API_KEY": "sk_live_other_0123456789",
            "FLORA_BASE_URL": f"http://127.0.0.1:{flora.port}/v1",
            "FLORAQ_LEDGER": str(tmp_path / "state" / "floraq.db"),
            "FLORAQ_TIME_SCALE": "0.01",
        }
        cli = Floraq(cwd=tmp_path, env=env)
        refused = cli("submit", "jobs.yaml")
        assert refused.returncode == 2
        assert (
            "error: jobs.yaml: workspace: this API key has 2 workspaces (ws_other_a (Studio A),"
            " ws_other_b (Studio B)): set `workspace:` in the manifest" in refused.stderr
        )
        (tmp_path / "jobs.yaml").write_text("workspace: Studio B\n" + manifest)
        done = cli("submit", "jobs.yaml")
        assert done.returncode == 0, done.stderr
        (asset,) = flora.assets.values()
        assert asset.workspace_id == "ws_other_b" and asset.uploads == 1
        assert flora.upload_auth_headers == 0
        assert flora.run_inputs == [hashlib.sha256(png(1)).hexdigest()]


def test_reupload_makes_new_assets_for_the_rows_still_to_run(
    tmp_path: Path, sandbox: SandboxServer
) -> None:
    """`submit --reupload` uploads the files of the rows it runs again, as new assets."""
    cli = floraq_against(tmp_path, sandbox)
    photo_batch(tmp_path)
    assert cli("submit", "photos.yaml").returncode == 0
    expected = photo_batch(tmp_path, batch="again")
    done = cli("submit", "again.yaml", "--reupload")
    assert done.returncode == 0, done.stderr
    assert sandbox.stats()["uploads"] == 2 * (ROWS - DUPLICATES)
    fresh = {a["url"] for a in sandbox.assets()[ROWS - DUPLICATES :]}
    later = sandbox.runs()[ROWS:]
    assert {i["value"] for r in later for i in r["inputs"] if i["id"] == "input_image"} == fresh
    assert all(r["input_assets"]["input_image"] in expected.values() for r in later)


def test_an_export_names_the_files_and_reads_back_as_the_same_rows(
    tmp_path: Path, sandbox: SandboxServer
) -> None:
    """Export shows each row's file (not a content reference); fed back, nothing is new."""
    cli = floraq_against(tmp_path, sandbox)
    photo_batch(tmp_path)
    assert cli("submit", "photos.yaml").returncode == 0
    assert cli("export", "-o", "results.csv").returncode == 0
    text = (tmp_path / "results.csv").read_text()
    assert "floraq-file:" not in text
    last = ROWS - 1  # its bytes are p{last - (ROWS - DUPLICATES)}'s: the row's own path is shown
    assert f"{tmp_path}/photos/p{last:02d}.png" in text
    (tmp_path / "back.yaml").write_text(
        "version: 1\nbatch: photos\noutput_dir: out-photos\njobs:\n"
        "  - technique: product-shot\n    rows_from: {csv: results.csv, key: row_key}\n"
    )
    again = cli("submit", "back.yaml")
    assert again.returncode == 0, again.stderr
    assert f"photos: {ROWS} row(s): downloaded {ROWS}" in again.stdout
    assert sandbox.stats()["uploads"] == ROWS - DUPLICATES and len(sandbox.runs()) == ROWS


@pytest.fixture
def https_files(tmp_path: Path) -> Iterator[tuple[str, Path, dict[str, int]]]:
    """An https:// server on 127.0.0.1 (a host FLORA does not list) serving two PNGs."""
    root, cert, key = tmp_path / "www", tmp_path / "cert.pem", tmp_path / "key.pem"
    root.mkdir()
    (root / "a.png").write_bytes(png(70))
    (root / "b.png").write_bytes(png(70))  # the same bytes under another URL
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
         "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
         "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True,
    )  # fmt: skip
    hits: dict[str, int] = {}

    class Handler(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, directory=str(root), **kwargs)

        def do_GET(self) -> None:
            assert "authorization" not in {h.lower() for h in self.headers}
            hits[self.path] = hits.get(self.path, 0) + 1
            super().do_GET()

        def log_message(self, *args: Any) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"https://127.0.0.1:{server.server_address[1]}", cert, hits
    finally:
        server.shutdown()
        server.server_close()


def test_upload_remote_fetches_urls_flora_will_not_and_uploads_them_once(
    tmp_path: Path, sandbox: SandboxServer, https_files: tuple[str, Path, dict[str, int]]
) -> None:
    """Without it, a warning and the URL as is; with it, downloaded and uploaded by content."""
    base, cert, hits = https_files
    cli = floraq_against(tmp_path, sandbox)
    cli.env["SSL_CERT_FILE"] = str(cert)
    rows = [{"input_image": f"{base}/a.png"}, {"input_image": f"{base}/b.png"}]
    cli.write_manifest(batch="remote", jobs=[{"technique": "portrait-enhancer", "rows": rows}])
    plain = cli("plan", "jobs.yaml")
    assert "is not a documented FLORA input host" in plain.stdout and hits == {}
    plan = cli("plan", "jobs.yaml", "--upload-remote")
    assert plan.returncode == 0, plan.stdout + plan.stderr
    assert "not a documented FLORA input host" not in plan.stdout
    assert "local files: 1 to upload" in plan.stdout
    done = cli("submit", "jobs.yaml", "--upload-remote")
    assert done.returncode == 0, done.stderr
    assert_each_content_uploaded_once(sandbox, 1)
    sha = hashlib.sha256(png(70)).hexdigest()
    # Two URLs with the same bytes are one row's inputs twice: one run (a duplicate row).
    assert [r["input_assets"] for r in sandbox.runs()] == [{"input_image": sha}]
    assert (tmp_path / "state" / "remote" / sha).read_bytes() == png(70)
