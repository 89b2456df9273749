"""Bad input: one located error line per problem, exit 2, and nothing touched.

"Nothing touched" means what an operator could check: no run POSTed (the sandbox counts
requests), no ledger created, and an existing ledger byte-for-byte unchanged.
"""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import Floraq, floraq_against

from floraq.sandbox import SandboxConfig, SandboxServer

POSTS = "POST /techniques/{slug}/runs"
IMG = "https://storage.googleapis.com/floraq-input/{n}.jpg"
HEAD = "version: 1\nbatch: bad\noutput_dir: outputs\n"
PORTRAIT_CSV = (
    HEAD + "jobs:\n  - technique: portrait-enhancer\n"
    "    rows_from: {csv: rows.csv, columns: {input_image: url}}\n"
)
POSTER_CSV = HEAD + "jobs:\n  - technique: poster-maker\n    rows_from: {csv: rows.csv, key: sku}\n"


@pytest.fixture(scope="module")
def shared() -> Iterator[SandboxServer]:
    """One sandbox for the whole module; every case checks that no POST reached it."""
    with SandboxServer(SandboxConfig(seed=3, time_scale=0.01)) as server:
        yield server


@pytest.fixture
def cli(tmp_path: Path, shared: SandboxServer) -> Floraq:
    return floraq_against(tmp_path, shared)


def write(folder: Path, manifest: str, csv: bytes | None = None) -> None:
    (folder / "jobs.yaml").write_text(manifest)
    if csv is not None:
        (folder / "rows.csv").write_bytes(csv)


def rows_yaml(*values: str) -> str:
    rows = "".join(f"      - input_image: {v}\n" for v in values)
    return HEAD + f"jobs:\n  - technique: portrait-enhancer\n    rows:\n{rows}"


BOMB = (
    HEAD + 'a: &a ["x","x","x","x","x","x","x","x","x"]\n'
    "b: &b [*a,*a,*a,*a,*a,*a,*a,*a,*a]\n"
    "c: &c [*b,*b,*b,*b,*b,*b,*b,*b,*b]\n"
    "d: &d [*c,*c,*c,*c,*c,*c,*c,*c,*c]\n"
    "e: [*d,*d,*d,*d,*d,*d,*d,*d,*d]\n"
    "jobs: []\n"
)


def to_folder(output_dir: str) -> str:
    """One valid row whose batch writes to ``output_dir`` (rows.csv is a regular file)."""
    return (
        f"version: 1\nbatch: bad\noutput_dir: {output_dir}\n"
        f"jobs:\n  - technique: portrait-enhancer\n    rows:\n"
        f"      - input_image: {IMG.format(n=1)}\n"
    )


CASES: dict[str, tuple[str, bytes | None, str]] = {
    # name: (manifest, rows.csv bytes, a regex the error line must match)
    "malformed-yaml": (
        HEAD + "jobs:\n  - technique: [unclosed\n",
        None,
        r"jobs\.yaml.*line \d+.*YAML syntax error",
    ),
    "yaml-python-tag": (
        HEAD + "jobs: !!python/object/apply:os.system ['touch pwned']\n",
        None,
        r"jobs\.yaml.*line \d+.*no !!tags",
    ),
    "alias-bomb": (BOMB, None, r"jobs\.yaml.*line \d+.*anchors and aliases"),
    "schema": (
        HEAD + "concurrency: 0\njobs:\n  - technique: poster-maker\n    rows: [{prompt: a}]\n",
        None,
        r"jobs\.yaml.*concurrency.*",
    ),
    "unknown-version": (
        "version: 2\nbatch: bad\njobs:\n  - technique: poster-maker\n    rows: [{prompt: a}]\n",
        None,
        r"jobs\.yaml.*version",
    ),
    "unknown-technique": (
        HEAD + "jobs:\n  - technique: no-such-thing\n    rows: [{prompt: a}]\n",
        None,
        r"jobs\.yaml: job 1 \(no-such-thing\).*unknown technique",
    ),
    "empty-manifest": ("", None, r"jobs\.yaml.*empty"),
    "missing-csv": (PORTRAIT_CSV, None, r"jobs\.yaml: job 1 .*rows_from\.csv.*no such file"),
    "latin-1-csv": (
        POSTER_CSV,
        b"sku,prompt\nA1,un caf\xe9 au lait\n",
        r"rows\.csv line 2.*not UTF-8 \(byte 0xe9\)",
    ),
    "missing-column": (
        PORTRAIT_CSV,
        b"sku,image\nA1,https://storage.googleapis.com/a.jpg\n",
        r"rows\.csv line 1.*column 'url'.*not in the header",
    ),
    "header-only-csv": (
        POSTER_CSV,
        b"sku,prompt\n",
        r"jobs\.yaml: job 1 \(poster-maker\), rows\.csv: has a header but no rows",
    ),
    "header-and-blank-lines-csv": (
        POSTER_CSV,
        b"\xef\xbb\xbfsku,prompt\r\n\r\n  \r\n",
        r"rows\.csv: has a header but no rows; add rows below the header, or remove the job",
    ),
    "field-over-the-limit": (
        POSTER_CSV,
        b'sku,prompt\nA1,"' + b"x" * (17 * 1024 * 1024) + b'"\n',
        r"rows\.csv line \d+.*too large",
    ),
    "same-output-path": (
        POSTER_CSV,
        b"sku,prompt\nA1,a red kite\nA1,a blue kite\n",
        r"row 2 \(rows\.csv line 3\).*same output folder poster-maker/A1",
    ),
    "http-url": (rows_yaml("http://example.com/a.jpg"), None, r"row 1, field 'input_image'.*http"),
    "nul-in-a-value": (
        POSTER_CSV,
        b"sku,prompt\nA1,a red\x00kite\n",
        r"row 1 \(rows\.csv line 2\), field 'prompt'.*control character U\+0000 at position 6",
    ),
    "escape-sequence-in-a-value": (
        POSTER_CSV,
        b"sku,prompt\nA1,\x1b[31ma red kite\n",
        r"row 1 \(rows\.csv line 2\), field 'prompt'.*control character U\+001B",
    ),
    "credentials-in-a-url": (
        rows_yaml("https://ops:hunter2@storage.googleapis.com/a.jpg"),
        None,
        r"row 1, field 'input_image'.*'https://\*\*\*@storage\.googleapis\.com/a\.jpg'"
        r" carries credentials",
    ),
    "nul-in-output-dir": (
        'version: 1\nbatch: bad\noutput_dir: "out\\0put"\n'
        "jobs:\n  - technique: poster-maker\n    rows: [{prompt: a}]\n",
        None,
        r"jobs\.yaml: output_dir \(line 3\): must not contain control characters",
    ),
    "nul-in-csv-path": (
        HEAD + 'jobs:\n  - technique: poster-maker\n    rows_from: {csv: "rows\\0.csv"}\n',
        None,
        r"jobs\.yaml: job 1 \(poster-maker\), rows_from\.csv.*must not contain control",
    ),
    "output-dir-is-a-file": (
        to_folder("rows.csv"),
        b"a,b\n",
        r"jobs\.yaml: output_dir: /.*/rows\.csv is a file, not a folder; set output_dir",
    ),
    "output-dir-under-a-file": (
        to_folder("rows.csv/out"),
        b"a,b\n",
        r"output_dir: /.*/rows\.csv/out cannot be created: /.*/rows\.csv is a file, not a folder",
    ),
    # Root ignores file modes; /proc and /sys refuse new entries even to root.
    "output-dir-in-proc": (
        to_folder("/proc/floraq-out"),
        None,
        r"output_dir: /proc/floraq-out cannot be created: /proc refuses new files \(.*ENOENT\)",
    ),
    "output-dir-in-sys": (
        to_folder("/sys/floraq-out"),
        None,
        r"output_dir: /sys/floraq-out cannot be created: /sys refuses new files \(.*EPERM\)",
    ),
    # Local files (issue 11): rows.csv stands for the file; its bytes are what it holds.
    "local-file-missing": (
        rows_yaml("photos/gone.jpg"),
        None,
        r"row 1, field 'input_image': file 'photos/gone\.jpg' does not exist \(looked for /",
    ),
    "local-file-is-a-folder": (
        rows_yaml("."),
        None,
        r"row 1, field 'input_image': file '\.' is a folder, not a file",
    ),
    "local-jpg-that-is-text": (
        rows_yaml("rows.csv"),
        b"just some text, not a JPEG\n",
        r"file 'rows\.csv' is not a file type FLORA takes for an input of type imageUrl"
        r" \(jpeg, png",
    ),
    "local-file-too-large": (
        rows_yaml("rows.csv"),
        b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + (20000).to_bytes(4, "big") * 2,
        r"file 'rows\.csv' is 400\.0 megapixels, over FLORA's limit of 150",
    ),
    "local-file-wrong-type": (
        rows_yaml("rows.csv"),
        b"%PDF-1.7\n",
        r"file 'rows\.csv' is application/pdf by its bytes, not what an input of type"
        r" imageUrl takes",
    ),
    "local-file-on-another-host": (
        rows_yaml("file://nas/photos/a.jpg"),
        None,
        r"'file://nas/photos/a\.jpg' names a file on host 'nas'; use file:///path",
    ),
    "url-over-the-limit": (
        rows_yaml("https://storage.googleapis.com/" + "a" * 9000),
        None,
        r"row 1, field 'input_image'.*URL is 9,031 characters long \(at most 8,192\)",
    ),
}


@pytest.mark.parametrize("case", list(CASES))
def test_bad_input_is_one_located_line_and_touches_nothing(
    cli: Floraq, shared: SandboxServer, case: str
) -> None:
    """Each kind of bad input: exit 2, a located error, no POST and no ledger file."""
    manifest, csv, pattern = CASES[case]
    write(cli.cwd, manifest, csv)
    posts = shared.stats()["requests"].get(POSTS, 0)
    done = cli("submit", "jobs.yaml", timeout=60)
    assert done.returncode == 2, done.stdout + done.stderr
    errors = [line for line in done.stderr.splitlines() if line.startswith("error: ")]
    assert errors and re.search(pattern, errors[0]), done.stderr
    assert done.stderr.splitlines()[-1].endswith("problem(s) in the input; nothing was sent")
    assert "Traceback" not in done.stderr and done.stdout == ""
    assert shared.stats()["requests"].get(POSTS, 0) == posts
    assert not cli.ledger_path.parent.exists()
    assert not (cli.cwd / "pwned").exists()
    assert "hunter2" not in done.stderr


@pytest.mark.parametrize(
    ("args", "env", "pattern"),
    [
        (("--max-cost", "nan"), {}, r"--max-cost nan: give a finite amount"),
        (("--max-cost", "inf"), {}, r"--max-cost inf: give a finite amount"),
        ((), {"FLORAQ_IDEMPOTENCY_WINDOW": "nan"}, r"FLORAQ_IDEMPOTENCY_WINDOW='nan' must be"),
        ((), {"FLORAQ_IDEMPOTENCY_WINDOW": "-1"}, r"FLORAQ_IDEMPOTENCY_WINDOW='-1' must be"),
        ((), {"FLORAQ_TIME_SCALE": "inf"}, r"FLORAQ_TIME_SCALE='inf' must be a finite number"),
        ((), {"FLORAQ_LEASE_SECONDS": "nan"}, r"FLORAQ_LEASE_SECONDS='nan' must be a finite"),
        ((), {"FLORAQ_LEASE_SECONDS": "0.5"}, r"FLORAQ_LEASE_SECONDS='0.5' must be at least 1 s"),
        ((), {"FLORAQ_LEASE_SECONDS": "soon"}, r"FLORAQ_LEASE_SECONDS='soon' is not a number"),
        ((), {"FLORA_API_KEY": "   "}, r"no API key: set FLORA_API_KEY"),
        (("--max-cost", "1e30"), {}, r"--max-cost 1e\+30: give at most 1,000,000,000 USD"),
        (
            (),
            {"FLORAQ_LEDGER": "postgresql://ops:s3cret@127.0.0.1:1/floraq"},
            r"^floraq: error: cannot open the ledger postgresql://ops:\*\*\*@127\.0\.0\.1:1/floraq:"
            r" connection failed: .*; check the server and the URL in --ledger / FLORAQ_LEDGER$",
        ),
    ],
    ids=[
        "nan-cap",
        "inf-cap",
        "nan-window",
        "negative-window",
        "inf-time-scale",
        "nan-lease",
        "short-lease",
        "word-lease",
        "blank-key",
        "billion-dollar-cap",
        "postgres-password-masked",
    ],
)
def test_bad_numbers_and_keys_are_one_line_and_send_nothing(
    cli: Floraq, shared: SandboxServer, args: tuple[str, ...], env: dict[str, str], pattern: str
) -> None:
    """A cap or knob that is NaN, infinite or negative, or a blank key: exit 2, no POST."""
    write(cli.cwd, rows_yaml(IMG.format(n=1)))
    posts = shared.stats()["requests"].get(POSTS, 0)
    done = cli("submit", "jobs.yaml", *args, **env)
    assert done.returncode == 2, done.stdout + done.stderr
    assert re.search(pattern, done.stderr.splitlines()[-1]), done.stderr
    assert "Traceback" not in done.stderr
    assert shared.stats()["requests"].get(POSTS, 0) == posts
    assert not cli.ledger_path.parent.exists()
    assert "s3cret" not in done.stderr and not any(cli.cwd.glob("postgres*"))


@pytest.mark.parametrize("command", ["status", "export", "batches", "verify", "report"])
def test_a_file_that_is_not_a_ledger_is_one_line_for_every_reading_command(
    cli: Floraq, command: str
) -> None:
    """Pointing --ledger at the manifest by mistake: exit 2, one line, the file untouched."""
    write(cli.cwd, rows_yaml(IMG.format(n=1)))
    before = (cli.cwd / "jobs.yaml").read_bytes()
    done = cli(command, "--ledger", "jobs.yaml")
    assert done.returncode == 2, done.stdout + done.stderr
    assert done.stderr.strip() == (
        "floraq: error: cannot read the ledger jobs.yaml: file is not a database"
    )
    assert (cli.cwd / "jobs.yaml").read_bytes() == before


def ledger_bytes(cli: Floraq) -> str:
    """A digest of the ledger and its WAL, to prove a refused submit wrote nothing.

    (Reading a WAL database may create an empty ``-wal`` file: no content, no write.)
    """
    digest = hashlib.sha256()
    for suffix in ("", "-wal"):
        path = cli.ledger_path.with_name(cli.ledger_path.name + suffix)
        digest.update(path.read_bytes() if path.exists() else b"")
        digest.update(b"|")
    return digest.hexdigest()


def test_row_changed_since_it_was_submitted_is_refused_and_nothing_is_written(
    cli: Floraq, shared: SandboxServer
) -> None:
    """A keyed row whose inputs changed after its run was sent: exit 2, ledger unchanged."""
    write(cli.cwd, POSTER_CSV, b"sku,prompt\nA1,a red kite\nA2,a green kite\n")
    assert cli("submit", "jobs.yaml").returncode == 0
    before, posts = ledger_bytes(cli), shared.stats()["requests"][POSTS]
    (cli.cwd / "rows.csv").write_bytes(b"sku,prompt\nA1,a red kite\nA2,a purple kite\n")
    done = cli("submit", "jobs.yaml")
    assert done.returncode == 2
    assert re.search(r"^error: .*row 2 \(rows\.csv line 3\).*key 'A2'.*changed", done.stderr, re.M)
    assert ledger_bytes(cli) == before
    assert shared.stats()["requests"][POSTS] == posts


def test_bom_crlf_and_blank_lines_are_read_as_plain_rows(cli: Floraq) -> None:
    """A BOM, CRLF line ends and blank lines change nothing: each file gives the same rows."""
    variants = {
        "bom": b"\xef\xbb\xbfsku,prompt\nB1,a kite\nB2,a boat\n",
        "crlf": b"sku,prompt\r\nC1,a kite\r\nC2,a boat\r\n",
        "blank": b"sku,prompt\n\nD1,a kite\n  \n\nD2,a boat\n\n",
    }
    jobs = "jobs:\n"
    for name, data in variants.items():
        (cli.cwd / f"{name}.csv").write_bytes(data)
        jobs += f"  - technique: poster-maker\n    rows_from: {{csv: {name}.csv, key: sku}}\n"
    (cli.cwd / "jobs.yaml").write_text(HEAD + jobs)
    done = cli("plan", "jobs.yaml")
    assert done.returncode == 0, done.stdout + done.stderr
    # Same two prompts in all three files, byte for byte: 2 rows to run, 4 duplicates.
    assert "bad: 2 row(s) to run" in done.stdout
    assert "4 duplicate row(s) will be submitted once" in done.stdout
    assert "error" not in done.stdout


def test_ten_megabyte_field_is_read_without_error(cli: Floraq) -> None:
    """A 10 MB CSV field (a long prompt) is within the reader's limit: planned, not a crash."""
    write(cli.cwd, POSTER_CSV, b"sku,prompt\nC1," + b"y" * (10 * 1024 * 1024) + b"\n")
    done = cli("plan", "jobs.yaml", timeout=60)
    assert done.returncode == 0, done.stderr
    assert "bad: 1 row(s) to run" in done.stdout


def test_header_only_csv_fails_plan_too(cli: Floraq, shared: SandboxServer) -> None:
    """`plan` on a CSV with a header and no rows: exit 2, the located error, nothing sent."""
    write(cli.cwd, POSTER_CSV, b"sku,prompt\n")
    posts = shared.stats()["requests"].get(POSTS, 0)
    done = cli("plan", "jobs.yaml")
    assert done.returncode == 2, done.stdout + done.stderr
    assert done.stdout.splitlines() == [
        "error: jobs.yaml: job 1 (poster-maker), rows.csv: has a header but no rows;"
        " add rows below the header, or remove the job",
        "1 error(s): fix them and run `floraq plan` again; nothing sent",
    ]
    assert shared.stats()["requests"].get(POSTS, 0) == posts
    assert not cli.ledger_path.parent.exists()


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads any file whatever its mode")
def test_an_unreadable_local_file_is_one_line(cli: Floraq, shared: SandboxServer) -> None:
    """A file the user may not read: exit 2, one located line, nothing sent."""
    write(cli.cwd, rows_yaml("secret.png"))
    secret = cli.cwd / "secret.png"
    secret.write_bytes(b"\x89PNG\r\n\x1a\n")
    secret.chmod(0)
    posts = shared.stats()["requests"].get(POSTS, 0)
    done = cli("submit", "jobs.yaml", timeout=60)
    assert done.returncode == 2
    assert "file 'secret.png' cannot be read (permission denied)" in done.stderr
    assert shared.stats()["requests"].get(POSTS, 0) == posts and shared.stats()["uploads"] == 0


def test_every_bad_local_file_is_reported_at_once(cli: Floraq, shared: SandboxServer) -> None:
    """Three bad files in one manifest: three located lines, and nothing is sent."""
    (cli.cwd / "notes.jpg").write_text("a text file")
    write(cli.cwd, rows_yaml("gone.png", ".", "notes.jpg"))
    done = cli("plan", "jobs.yaml", timeout=60)
    assert done.returncode == 2
    errors = [line for line in done.stdout.splitlines() if line.startswith("error: ")]
    assert [e.split(", ")[1] for e in errors] == ["row 1", "row 2", "row 3"]
    assert shared.stats()["uploads"] == 0 and shared.stats()["assets_created"] == 0
