"""End to end: `floraq report` opened in a real headless Chromium, as a person would look at it."""

from __future__ import annotations

import subprocess
from html.parser import HTMLParser
from pathlib import Path

import pytest
from conftest import Floraq

from floraq.sandbox import SandboxServer

CHROMIUM = Path("/usr/bin/chromium")
IMG = "https://storage.googleapis.com/floraq-demo/{n}.jpg"
# Without the background-networking flags Chromium keeps dialling Google's hosts.
CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--enable-logging=stderr",
    "--v=0",
)

needs_chromium = pytest.mark.skipif(
    not CHROMIUM.exists(),
    reason="needs Debian's chromium at /usr/bin/chromium (.ci/run installs it: apt-get install"
    " chromium)",
)


class Page(HTMLParser):
    """What the test reads off the DOM: rows in order and the output images' load state."""

    def __init__(self) -> None:
        super().__init__()
        self.row_states: list[str] = []
        self.images: list[dict[str, str | None]] = []
        self.body: dict[str, str | None] = {}

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        values = dict(attrs)
        if tag == "article":
            self.row_states.append(values.get("data-state") or "")
        elif tag == "img" and "output" in (values.get("class") or "").split():
            self.images.append(values)
        elif tag == "body":
            self.body = values


def chromium(tmp_path: Path, page: Path, *args: str) -> subprocess.CompletedProcess[str]:
    profile = tmp_path / "chromium-profile"
    return subprocess.run(
        [str(CHROMIUM), *CHROMIUM_FLAGS, f"--user-data-dir={profile}", *args, page.as_uri()],
        capture_output=True,
        text=True,
        timeout=120,
        stdin=subprocess.DEVNULL,
    )


def report_batch(floraq: Floraq) -> Path:
    """5 output images (4 portraits, 1 poster), a failed poster, a caption and a video."""
    manifest = floraq.write_manifest(
        batch="look",
        retry_failed_runs=0,
        jobs=[
            {
                "technique": "portrait-enhancer",
                "rows": [{"input_image": IMG.format(n=n)} for n in range(4)],
            },
            {
                "technique": "poster-maker",
                "rows": [{"prompt": "a <lighthouse> & sea"}, {"prompt": "[[fail:safety_blocked]]"}],
            },
            {"technique": "caption-writer", "rows": [{"input_image": IMG.format(n=9)}]},
            {
                "technique": "image-to-video",
                "rows": [{"input_image": IMG.format(n=8), "prompt": "slow zoom"}],
            },
        ],
    )
    assert floraq("submit", str(manifest)).returncode == 1
    done = floraq("report", "-o", "reports/report.html")
    assert done.returncode == 0, done.stderr
    assert "8 row(s) of look, 5 output image(s)" in done.stdout
    return floraq.cwd / "reports" / "report.html"


@needs_chromium
def test_report_in_chromium_shows_every_output_image_without_console_errors(
    floraq: Floraq, sandbox: SandboxServer, tmp_path: Path
) -> None:
    """Headless Chromium loads all 5 images, logs nothing, and lists the failed row first."""
    report = report_batch(floraq)
    dumped = chromium(tmp_path, report, "--dump-dom")
    assert dumped.returncode == 0, dumped.stderr
    assert [line for line in dumped.stderr.splitlines() if ":CONSOLE" in line] == []
    page = Page()
    page.feed(dumped.stdout)
    assert len(page.images) == 5
    assert all(img.get("data-loaded") == "yes" for img in page.images)
    assert page.body.get("data-broken-images") == "0"
    assert page.row_states[0] == "failed" and page.row_states.count("downloaded") == 7
    shot = tmp_path / "report.png"
    taken = chromium(tmp_path, report, f"--screenshot={shot}", "--window-size=1200,2400")
    assert taken.returncode == 0 and shot.read_bytes().startswith(b"\x89PNG")


@needs_chromium
def test_report_marks_an_image_deleted_after_it_was_written(
    floraq: Floraq, sandbox: SandboxServer, tmp_path: Path
) -> None:
    """An output deleted after the report was written shows up as a broken image."""
    report = report_batch(floraq)
    gone = floraq.query("SELECT path FROM outputs WHERE type = 'imageUrl' LIMIT 1")[0]["path"]
    Path(gone).unlink()
    page = Page()
    page.feed(chromium(tmp_path, report, "--dump-dom").stdout)
    assert [img.get("data-loaded") for img in page.images].count("no") == 1
    assert page.body.get("data-broken-images") == "1"
