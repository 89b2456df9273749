"""End to end: `floraq report` opened in a real headless Chromium, as a person would look at it.

Playwright drives Debian's Chromium (``executable_path``: no browser download). Every
request the page makes is recorded, so the tests can check nothing left ``file:``.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from conftest import Floraq

from floraq.ledger.lean_rows import OUTPUT_PATH
from floraq.sandbox import SandboxServer

CHROMIUM = Path("/usr/bin/chromium")
IMG = "https://storage.googleapis.com/floraq-demo/{n}.jpg"
# Without the background-networking flags Chromium keeps dialling Google's hosts.
CHROMIUM_FLAGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def _chromium_or_skip() -> Any:
    """Playwright's sync API, or a skip (a failure under CI=true) when there is no browser."""
    missing = "needs Debian's chromium at /usr/bin/chromium (.ci/run installs it)"
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        missing = "needs the playwright package (pip install -e '.[test]')"
        sync_playwright = None
    if sync_playwright is None or not CHROMIUM.exists():
        if os.environ.get("CI") == "true":
            pytest.fail(missing)
        pytest.skip(missing)
    return sync_playwright


@dataclass
class Browser:
    """One page in a fresh profile, with what it requested and logged."""

    page: Any
    requests: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    def open(self, report: Path) -> None:
        self.page.goto(report.as_uri())
        self.page.wait_for_load_state("load")

    def visible_tiles(self) -> list[str]:
        return list(
            self.page.eval_on_selector_all(
                ".tile:not([hidden])", "ts => ts.map(t => t.dataset.state)"
            )
        )


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[Browser]:
    sync_playwright = _chromium_or_skip()
    with sync_playwright() as p:
        context = p.chromium.launch_persistent_context(
            str(tmp_path / "chromium-profile"),
            executable_path=str(CHROMIUM),
            headless=True,
            args=CHROMIUM_FLAGS,
            viewport={"width": 1280, "height": 900},
        )
        page = context.new_page()
        seen = Browser(page=page)
        page.on("request", lambda r: seen.requests.append(r.url))
        page.on("console", lambda m: m.type in ("error", "warning") and seen.errors.append(m.text))
        page.on("pageerror", lambda e: seen.errors.append(str(e)))
        try:
            yield seen
        finally:
            context.close()


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
                "rows": [
                    {"prompt": "a <lighthouse> & sea\nat dawn"},
                    {"prompt": "[[fail:safety_blocked]]"},
                ],
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


def test_report_in_chromium_shows_thumbnails_filters_and_detail_offline(
    floraq: Floraq, sandbox: SandboxServer, browser: Browser, tmp_path: Path
) -> None:
    """Thumbnails load, filters hide the right tiles, the detail opens; no network, no errors."""
    report = report_batch(floraq)
    browser.open(report)
    page = browser.page
    page.wait_for_function("document.querySelectorAll('img.thumb[data-loaded]').length === 5")
    thumbs = page.eval_on_selector_all("img.thumb", "is => is.map(i => i.dataset.loaded)")
    assert thumbs == ["yes"] * 5
    assert page.get_attribute("body", "data-broken-images") == "0"
    states = browser.visible_tiles()
    assert states[0] == "failed" and states.count("downloaded") == 7
    page.screenshot(path=str(tmp_path / "report.png"), full_page=True)

    page.click("button[data-filter=failed]")
    assert browser.visible_tiles() == ["failed"]
    assert page.text_content("#shown") == "1 of 8 shown"
    page.click("button[data-filter='']")
    page.select_option("#technique", "portrait-enhancer")
    assert browser.visible_tiles() == ["downloaded"] * 4
    page.select_option("#technique", "")
    page.fill("#q", "lighthouse")
    assert len(browser.visible_tiles()) == 1
    assert page.text_content("button[data-filter=downloaded] .n") == "1"

    page.click(".tile:not([hidden])")
    dialog = page.locator("dialog#detail")
    assert dialog.is_visible()
    assert "a <lighthouse> & sea\nat dawn" in dialog.locator("dd").all_inner_texts()
    page.wait_for_function("document.querySelector('#detail img.output').dataset.loaded")
    assert dialog.locator("img.output").get_attribute("data-loaded") == "yes"
    page.screenshot(path=str(tmp_path / "detail.png"))
    page.keyboard.press("Escape")
    assert not dialog.is_visible()

    assert [u for u in browser.requests if not u.startswith("file://")] == []
    assert browser.errors == []


def test_report_marks_an_image_deleted_after_it_was_written(
    floraq: Floraq, sandbox: SandboxServer, browser: Browser
) -> None:
    """An output deleted after the report was written shows as a broken image in its detail."""
    report = report_batch(floraq)
    gone = floraq.query(
        f"SELECT {OUTPUT_PATH} AS path, j.row_key FROM outputs o JOIN jobs j ON j.id = o.job_id"
        " JOIN batches b ON b.name = j.batch WHERE o.type = 'imageUrl' LIMIT 1"
    )[0]
    Path(gone["path"]).unlink()
    browser.open(report)
    page = browser.page
    page.fill("#q", gone["row_key"])
    page.click(".tile:not([hidden])")
    page.wait_for_function("document.querySelector('#detail img.output').dataset.loaded")
    assert page.get_attribute("#detail img.output", "data-loaded") == "no"
    assert page.get_attribute("body", "data-broken-images") == "1"
    assert (
        page.eval_on_selector_all(
            "img.thumb", "is => is.filter(i => i.dataset.loaded === 'no').length"
        )
        == 0
    ), "the thumbnail is cached beside the outputs: it still shows"


def test_a_shorter_report_removes_the_pages_a_longer_one_left(floraq: Floraq) -> None:
    """report-2.html, report-3.html of an earlier, longer report would link to stale rows."""
    report = report_batch(floraq)
    for n in (2, 3):
        shutil.copyfile(report, report.with_name(f"report-{n}.html"))
    notes = report.with_name("report-4.html")
    notes.write_text("my own notes, not a floraq page\n")
    again = floraq("report", "-o", "reports/report.html")
    assert again.returncode == 0, again.stderr
    assert sorted(p.name for p in report.parent.glob("report*.html")) == [
        "report-4.html",
        "report.html",
    ]
    assert notes.read_text() == "my own notes, not a floraq page\n"
