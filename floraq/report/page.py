"""The contact sheet: self-contained HTML pages to *look* at a batch's outputs.

The page needs no network: no CDN, no remote images. Output files and their thumbnails
are referenced by paths relative to the report's folder (move both together); remote
input media are links, never ``<img>``. A Content-Security-Policy allows nothing but
local files and the page's own style and script (pinned by hash), so even a hostile
value could not load anything. Above ``PAGE_ROWS`` rows the report is split into pages
(``report.html``, ``report-2.html``, ...), so each stays a few megabytes and opens fast;
the filters and the search work within a page.
"""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from decimal import Decimal
from importlib.resources import files
from pathlib import Path
from typing import IO
from urllib.parse import quote

from floraq.ledger import JobView
from floraq.report.cards import Cards, LocalInput
from floraq.report.text import clean, money
from floraq.report.thumbs import Thumbnailer, cache_dir

PAGE_ROWS = 1000  # tiles per HTML file; a 10,000-row batch is 10 files of ~1.5 MB
STYLE = files("floraq.report").joinpath("report.css").read_text(encoding="utf-8")
SCRIPT = files("floraq.report").joinpath("report.js").read_text(encoding="utf-8")

OpenPage = Callable[[int], IO[str]]  # page number (2, 3, ...) -> a stream to write it to


@dataclass(frozen=True, slots=True)
class Summary:
    """The top of one batch's section: rows per state and per technique, and the cost."""

    batch: str
    states: Mapping[str, int]
    techniques: Mapping[str, Mapping[str, int]]
    charged: Decimal
    estimated: Decimal
    unsettled: int
    notes: Sequence[str] = ()


PAGE_START = '<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'


def remove_stale_pages(first: Path, pages: int) -> int:
    """Delete the further pages an earlier, longer report left beside ``first``.

    They would still link to rows this report no longer lists. Only floraq's own pages go
    (a file that does not start like one stays), and the run stops at the first gap.
    """
    removed = 0
    while True:
        stale = first.with_name(page_name(first.name, pages + removed + 1))
        try:
            with stale.open(encoding="utf-8", errors="replace") as f:
                if f.read(len(PAGE_START)) != PAGE_START:
                    return removed
            stale.unlink()
        except FileNotFoundError:
            return removed
        removed += 1


def page_name(first: str, number: int) -> str:
    """The file name of page ``number``: ``report.html``, ``report-2.html``, ..."""
    if number == 1:
        return first
    stem, dot, suffix = first.rpartition(".")
    return f"{stem}-{number}.{suffix}" if dot else f"{first}-{number}"


@dataclass(slots=True)
class ReportWriter:
    """Write the pages as rows stream in, so a big batch never sits in memory."""

    stream: IO[str]
    base_dir: Path  # the report's folder: output paths are made relative to it
    cards: Cards
    name: str = "report.html"
    open_page: OpenPage | None = None  # None: everything on one page
    page_rows: int = PAGE_ROWS
    rows: int = 0
    pages: int = 1
    _title: str = ""
    _head: str = ""
    _summary: Summary | None = None
    _on_page: int = 0
    _planned: int = 1

    @property
    def images(self) -> int:
        return self.cards.images

    def begin(self, *, title: str, generated: str, total: int) -> None:
        self._title = title
        self._head = f'<p class="generated">generated {clean(generated)}</p>'
        self._planned = max(1, -(-total // self.page_rows)) if self.open_page else 1
        self._open(1)

    def section(self, summary: Summary) -> None:
        """Open a batch's section with its summary; rows follow."""
        if self._summary is not None:
            self._write("</div></section>\n")
        self._summary = summary
        self._write_section(summary, continued=False)

    def row(self, view: JobView) -> None:
        if self.open_page is not None and self._on_page >= self.page_rows:
            self._close()
            self.pages += 1
            self.stream = self.open_page(self.pages)
            self._open(self.pages)
            if self._summary is not None:
                self._write_section(self._summary, continued=True)
        self.rows += 1
        self._on_page += 1
        self._write(self.cards.tile(view))

    def end(self) -> None:
        self._close()

    def _open(self, number: int) -> None:
        policy = (
            "default-src 'none'; img-src 'self' file: data:; media-src 'self' file: data:;"
            f" style-src {_hash(STYLE)}; script-src {_hash(SCRIPT)}; base-uri 'none';"
            " form-action 'none'"
        )
        title = self._title if number == 1 else f"{self._title} (page {number})"
        self._on_page = 0
        self._write(
            f'{PAGE_START}<meta http-equiv="Content-Security-Policy" content="{clean(policy)}">\n'
            '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
            '<meta name="referrer" content="no-referrer">\n'
            f"<title>{clean(title)}</title>\n<style>{STYLE}</style>\n</head>\n<body>\n"
            f'<header class="top"><h1>{clean(title)}</h1>{self._head}{self._nav(number)}'
            f"</header>\n{TOOLBAR}<main>\n"
        )

    def _nav(self, number: int) -> str:
        if self._planned <= 1:
            return ""
        links = "".join(
            f"<strong>page {n}</strong>"
            if n == number
            else f'<a href="{quote(page_name(self.name, n))}">page {n}</a>'
            for n in range(1, self._planned + 1)
        )
        return (
            f'<p class="pages">{links} ({self.page_rows} rows a page; filters and search'
            " work within a page)</p>"
        )

    def _write_section(self, summary: Summary, *, continued: bool) -> None:
        heading = f"batch {summary.batch}" + (" (continued)" if continued else "")
        self._write(
            f'<section class="batch" id="{clean(_anchor(summary.batch))}">\n'
            f"<h2>{clean(heading)}</h2>\n{_summary_html(summary)}"
            '<div class="grid">\n'
        )

    def _close(self) -> None:
        """End the page: the grid, the detail dialog, the script."""
        if self._summary is not None:
            self._write("</div></section>\n")
        self._write(f"</main>\n{DIALOG}<script>{SCRIPT}</script>\n</body>\n</html>\n")

    def _write(self, text: str) -> None:
        self.stream.write(text)


# State buttons and technique options are filled in by the script from the page's tiles.
TOOLBAR = (
    '<nav class="toolbar" id="toolbar"><span id="states"><button type="button" data-filter=""'
    ' aria-pressed="true">all <span class="n">0</span></button></span>'
    '<select id="technique" aria-label="technique"><option value="">every technique</option>'
    '</select><input id="q" type="search" placeholder="search inputs, errors, keys"'
    ' aria-label="search"><button type="button" data-view="grid" aria-pressed="true">grid'
    '</button><button type="button" data-view="list" aria-pressed="false">list</button>'
    '<span class="shown" id="shown"></span></nav>\n'
)
DIALOG = (
    '<dialog id="detail" aria-label="row detail"><button type="button" class="close">close'
    '</button><div id="detail-body"></div></dialog>\n'
)


def write_report(
    stream: IO[str],
    *,
    base_dir: Path,
    title: str,
    generated: str,
    sections: Iterable[tuple[Summary, Iterable[JobView]]],
    batches: Sequence[str],
    output_dirs: Mapping[str, Path] | None = None,
    local_input: LocalInput | None = None,
    name: str = "report.html",
    open_page: OpenPage | None = None,
) -> ReportWriter:
    """Write a whole report: each batch's summary, then its tiles in the order given.

    ``output_dirs`` (batch -> output_dir) turns on thumbnails, cached in each one's
    ``.floraq/thumbs``; ``open_page`` lets a long report continue on further pages.
    """
    listed = list(sections)
    thumbnailers = {b: Thumbnailer(cache_dir(d)) for b, d in (output_dirs or {}).items()}
    cards = Cards(base_dir=base_dir, thumbnailers=thumbnailers, local_input=local_input)
    writer = ReportWriter(
        stream=stream, base_dir=base_dir, cards=cards, name=name, open_page=open_page
    )
    total = sum(sum(summary.states.values()) for summary, _ in listed)
    writer.begin(title=title, generated=generated, total=total)
    del batches  # every section names its batch; kept for callers that pass it
    for summary, rows in listed:
        writer.section(summary)
        for view in rows:
            writer.row(view)
    writer.end()
    return writer


def _summary_html(summary: Summary) -> str:
    states = [s for s, n in summary.states.items() if n]
    total = sum(summary.states.values())
    floor = " (at least: some charges are not settled yet)" if summary.unsettled else ""
    head = "".join(f"<th>{clean(s)}</th>" for s in states)
    cells = "".join(f"<td>{summary.states[s]}</td>" for s in states)
    technique_rows = "".join(
        f"<tr><td>{clean(slug)}</td>"
        + "".join(f"<td>{counts.get(s, 0)}</td>" for s in states)
        + "</tr>"
        for slug, counts in summary.techniques.items()
    )
    notes = "".join(f'<p class="note">{clean(n)}</p>' for n in summary.notes)
    return (
        f'<p class="summary"><span class="rows">{total}</span> row(s); charged'
        f' <span class="charged">{money(summary.charged)}</span> USD{clean(floor)},'
        f' estimated <span class="estimated">{money(summary.estimated)}</span> USD</p>\n'
        f'<table class="counts"><tr><th>technique</th>{head}</tr>'
        f"<tr><td>all</td>{cells}</tr>{technique_rows}</table>\n{notes}\n"
    )


def _anchor(batch: str) -> str:
    return "batch-" + quote(batch, safe="")


def _hash(text: str) -> str:
    """A CSP source that allows exactly this inline style or script."""
    digest = base64.b64encode(hashlib.sha256(text.encode("utf-8")).digest()).decode("ascii")
    return f"'sha256-{digest}'"
