"""The HTML report: one self-contained page to *look* at a batch's outputs.

The page needs no network: no CDN, no remote images. Output files are referenced by
paths relative to the report's folder (move both together); input media are remote
URLs, so they are links, never ``<img>``. Every value from the ledger or the API goes
through ``html.escape``. A Content-Security-Policy allows nothing but local files and
the page's own style and script (pinned by hash), so even a hostile value could not
load anything. The script only marks output images that failed to load.
"""

from __future__ import annotations

import base64
import hashlib
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from html import escape
from pathlib import Path
from typing import IO
from urllib.parse import quote

from floraq.ledger import JobView, OutputRecord

TEXT_PREVIEW_CHARS = 2000
PROBLEM_ORDER = ("failed", "rejected", "unknown_outcome", "expired")

STYLE = """
body { font: 14px/1.4 system-ui, sans-serif; margin: 1.5rem; color: #222; background: #fafafa; }
h1 { margin: 0 0 .25rem; } h2 { margin-top: 2rem; border-bottom: 1px solid #ccc; }
table { border-collapse: collapse; margin: .5rem 0; }
td, th { border: 1px solid #ddd; padding: .2rem .6rem; text-align: right; }
th:first-child, td:first-child { text-align: left; }
.note { color: #8a5a00; }
.row { background: #fff; border: 1px solid #ddd; border-left: 6px solid #999;
       border-radius: 4px; margin: .75rem 0; padding: .5rem .75rem; }
.row.problem { border-left-color: #c62828; } .row.done { border-left-color: #2e7d32; }
.row h3 { margin: 0 0 .3rem; font-size: 1rem; }
.status { text-transform: uppercase; font-size: .8rem; padding: 0 .3rem; border-radius: 3px;
          background: #eee; }
.problem .status { background: #fdecea; color: #c62828; }
.done .status { background: #e8f5e9; color: #2e7d32; }
.facts, .inputs dl { display: grid; grid-template-columns: max-content 1fr; gap: 0 .75rem;
                     margin: .25rem 0; }
dt { color: #666; } dd { margin: 0; overflow-wrap: anywhere; }
.error { color: #c62828; margin: .25rem 0; }
.io { display: flex; flex-wrap: wrap; gap: 1.5rem; }
.io h4 { margin: .3rem 0; font-size: .85rem; color: #666; }
figure { display: inline-block; margin: 0 .75rem .5rem 0; vertical-align: top; }
img.output { width: 160px; height: 160px; object-fit: contain; image-rendering: pixelated;
             background: #eee; border: 1px solid #ccc; }
img.output.broken { outline: 3px solid #c62828; }
video.output { width: 240px; }
pre.output { white-space: pre-wrap; max-width: 40rem; background: #f3f3f3; padding: .4rem;
             margin: 0; }
.missing { color: #c62828; }
"""

SCRIPT = """
window.addEventListener("load", function () {
  var broken = 0;
  document.querySelectorAll("img.output").forEach(function (img) {
    var ok = img.complete && img.naturalWidth > 0;
    img.dataset.loaded = ok ? "yes" : "no";
    if (!ok) { img.classList.add("broken"); broken += 1; }
  });
  document.body.dataset.brokenImages = String(broken);
});
"""


@dataclass(frozen=True, slots=True)
class Summary:
    """The top of one batch's section: rows per state and per technique, and the cost."""

    batch: str
    states: Mapping[str, int]
    techniques: Mapping[str, Mapping[str, int]]
    charged: float
    estimated: float
    unsettled: int
    notes: Sequence[str] = ()


@dataclass(slots=True)
class ReportWriter:
    """Write the page as rows stream in, so a big batch never sits in memory."""

    stream: IO[str]
    base_dir: Path  # the report's folder: output paths are made relative to it
    images: int = 0
    rows: int = 0

    def begin(self, *, title: str, generated: str, batches: Sequence[str]) -> None:
        policy = (
            "default-src 'none'; img-src 'self' file: data:; media-src 'self' file: data:;"
            f" style-src {_hash(STYLE)}; script-src {_hash(SCRIPT)}; base-uri 'none';"
            " form-action 'none'"
        )
        self._write(
            '<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
            f'<meta http-equiv="Content-Security-Policy" content="{escape(policy)}">\n'
            '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
            '<meta name="referrer" content="no-referrer">\n'
            f"<title>{escape(title)}</title>\n<style>{STYLE}</style>\n</head>\n<body>\n"
            f"<header><h1>{escape(title)}</h1><p>generated {escape(generated)}</p>"
        )
        if len(batches) > 1:
            links = "".join(
                f'<li><a href="#{escape(_anchor(b))}">{escape(b)}</a></li>' for b in batches
            )
            self._write(f"<nav><ul>{links}</ul></nav>")
        self._write("</header>\n")

    def section(self, summary: Summary) -> None:
        """Open a batch's section with its summary; rows follow."""
        states = [s for s, n in summary.states.items() if n]
        total = sum(summary.states.values())
        floor = " (at least: some charges are not settled yet)" if summary.unsettled else ""
        head = "".join(f"<th>{escape(s)}</th>" for s in states)
        cells = "".join(f"<td>{summary.states[s]}</td>" for s in states)
        technique_rows = "".join(
            f"<tr><td>{escape(slug)}</td>"
            + "".join(f"<td>{counts.get(s, 0)}</td>" for s in states)
            + "</tr>"
            for slug, counts in summary.techniques.items()
        )
        notes = "".join(f'<p class="note">{escape(n)}</p>' for n in summary.notes)
        self._write(
            f'<section class="batch" id="{escape(_anchor(summary.batch))}">\n'
            f"<h2>batch {escape(summary.batch)}</h2>\n"
            f'<p class="summary"><span class="rows">{total}</span> row(s); charged'
            f' <span class="charged">{summary.charged:.4f}</span> USD{escape(floor)},'
            f' estimated <span class="estimated">{summary.estimated:.4f}</span> USD</p>\n'
            f'<table class="counts"><tr><th>technique</th>{head}</tr>'
            f"<tr><td>all</td>{cells}</tr>{technique_rows}</table>\n{notes}\n"
        )

    def row(self, view: JobView) -> None:
        """One row: status, run, cost, inputs, outputs and any error."""
        self.rows += 1
        state = view.state.value
        kind = "done" if state == "downloaded" else "problem" if state in PROBLEM_ORDER else ""
        charged = view.total_charged
        cost = "charged " + ("(not reported yet)" if charged is None else f"{charged:.4f} USD")
        if view.estimated_cost is not None:
            cost += f", quoted {view.estimated_cost:.4f} USD"
        facts = [("run", view.run_id or "(none)"), ("cost", cost), ("attempt", str(view.attempt))]
        facts_html = "".join(f"<dt>{escape(k)}</dt><dd>{escape(v)}</dd>" for k, v in facts)
        error = ""
        if view.error_code or view.error_message:
            rid = f" (request-id {view.request_id})" if view.request_id else ""
            error = (
                f'<p class="error"><code>{escape(view.error_code or "")}</code>'
                f" {escape(view.error_message or '')}{escape(rid)}</p>"
            )
        inputs = "".join(
            f"<dt>{escape(k)}</dt><dd>{_input_value(v)}</dd>" for k, v in view.inputs.items()
        )
        later = "" if state in PROBLEM_ORDER or state == "downloaded" else " yet"
        outputs = "".join(self._output(o) for o in view.outputs) or f"<p>(none{later})</p>"
        self._write(
            f'<article class="row {kind}" data-state="{escape(state)}"'
            f' data-run="{escape(view.run_id or "")}">\n'
            f'<h3><span class="status">{escape(state)}</span> {escape(view.technique)}'
            f' / <span class="key">{escape(view.row_key)}</span></h3>\n'
            f'<dl class="facts">{facts_html}</dl>{error}\n'
            f'<div class="io"><div class="inputs"><h4>inputs</h4><dl>{inputs}</dl></div>'
            f'<div class="outputs"><h4>outputs</h4>{outputs}</div></div>\n</article>\n'
        )

    def end_section(self) -> None:
        self._write("</section>\n")

    def end(self) -> None:
        self._write(f"<script>{SCRIPT}</script>\n</body>\n</html>\n")

    def _output(self, out: OutputRecord) -> str:
        label = f"<figcaption>{escape(out.output_id)}</figcaption>"
        if out.state != "downloaded" or not out.path:
            return (
                f'<figure><p class="missing">not downloaded ({escape(out.state)})</p>'
                f"{label}</figure>"
            )
        path = Path(out.path)
        if not path.is_file():
            return (
                f'<figure><p class="missing">missing on disk: run `floraq verify`</p>'
                f"{label}</figure>"
            )
        src = escape(self._relative(path))
        alt = escape(f"{out.output_id} ({path.name})")
        if out.type == "imageUrl":
            self.images += 1
            body = f'<a href="{src}"><img class="output" src="{src}" alt="{alt}"></a>'
        elif out.type == "videoUrl":
            body = f'<video class="output" controls preload="none" src="{src}"></video>'
        elif out.type == "audioUrl":
            body = f'<audio class="output" controls preload="none" src="{src}"></audio>'
        elif out.type == "text":
            body = f'<pre class="output">{escape(_read_text(path))}</pre>'
        else:
            body = f'<a href="{src}">{escape(path.name)}</a>'
        return f'<figure data-output="{escape(out.output_id)}">{body}{label}</figure>'

    def _relative(self, path: Path) -> str:
        """A URL path to ``path`` from the report's folder (percent-encoded)."""
        try:
            rel = os.path.relpath(path.resolve(), self.base_dir.resolve())
        except ValueError:  # another drive (Windows): an absolute file URL is all we have
            return path.resolve().as_uri()
        return quote(Path(rel).as_posix())

    def _write(self, text: str) -> None:
        self.stream.write(text)


def write_report(
    stream: IO[str],
    *,
    base_dir: Path,
    title: str,
    generated: str,
    sections: Iterable[tuple[Summary, Iterable[JobView]]],
    batches: Sequence[str],
) -> ReportWriter:
    """Write a whole page: each batch's summary, then its rows in the order given."""
    writer = ReportWriter(stream=stream, base_dir=base_dir)
    writer.begin(title=title, generated=generated, batches=batches)
    for summary, rows in sections:
        writer.section(summary)
        for view in rows:
            writer.row(view)
        writer.end_section()
    writer.end()
    return writer


def _input_value(value: str) -> str:
    """A remote media URL as a link (never loaded); anything else as text."""
    if value.startswith(("https://", "http://")):
        shown = value if len(value) <= 120 else value[:117] + "..."
        return f'<a href="{escape(value)}" rel="noreferrer noopener">{escape(shown)}</a>'
    return escape(value)


def _read_text(path: Path) -> str:
    with path.open("r", encoding="utf-8", errors="replace") as f:
        text = f.read(TEXT_PREVIEW_CHARS + 1)
    return text if len(text) <= TEXT_PREVIEW_CHARS else text[:TEXT_PREVIEW_CHARS] + "…"


def _anchor(batch: str) -> str:
    return "batch-" + quote(batch, safe="")


def _hash(text: str) -> str:
    """A CSP source that allows exactly this inline style or script."""
    digest = base64.b64encode(hashlib.sha256(text.encode("utf-8")).digest()).decode("ascii")
    return f"'sha256-{digest}'"
