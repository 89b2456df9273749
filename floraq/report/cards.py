"""One row of the contact sheet: its tile (thumbnails, badge, names) and its detail.

The detail sits in a ``<template>`` inside the tile: the browser neither renders it nor
loads its full-size images until a person opens it, so a page of 1,000 tiles costs what
its thumbnails cost. Output files are referenced relative to the report's folder.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import quote

from floraq.core.lifecycle import PROBLEM_STATES, JobState
from floraq.ledger import JobView, OutputRecord
from floraq.report.text import clean, money, shorten, size, strip_controls
from floraq.report.thumbs import Thumbnailer, audio_seconds, pdf_pages

TEXT_PREVIEW_CHARS = 2000
SNIPPET_CHARS = 140
ICONS = {"videoUrl": "▶", "audioUrl": "♪"}

LocalInput = Callable[[str], Path | None]


def group(state: JobState) -> str:
    """The tile's colour: problem (red), done (green) or active (blue)."""
    if state in PROBLEM_STATES:
        return "problem"
    return "done" if state is JobState.DOWNLOADED else "active"


@dataclass(slots=True)
class Cards:
    """Renders rows; counts the output images it showed (what `report` prints)."""

    base_dir: Path
    thumbnailers: dict[str, Thumbnailer] = field(default_factory=dict)  # by batch
    local_input: LocalInput | None = None
    images: int = 0

    def tile(self, view: JobView) -> str:
        state = view.state.value
        media = [self._input_thumb(v) for v in view.inputs.values()]
        shown = [m for m in media if m][:1]
        thumbs = [self._output_thumb(view.batch, o) for o in view.outputs]
        if not thumbs:
            later = "" if view.state in PROBLEM_STATES else " yet"
            thumbs = [f'<div class="icon"><span class="glyph">∅</span>no output{later}</div>']
        text = " ".join([view.technique, view.row_key, state, *view.inputs.values()])
        text += f" {view.error_code or ''} {view.error_message or ''} {view.run_id or ''}"
        if view.error_code or view.error_message:
            snippet = f"{view.error_code or ''} {view.error_message or ''}".strip()
            snippet_html = f'<p class="snippet error">{clean(shorten(snippet, SNIPPET_CHARS))}</p>'
        else:
            prompt = next((v for v in view.inputs.values() if not _is_url(v)), "")
            snippet_html = f'<p class="snippet">{clean(shorten(prompt, SNIPPET_CHARS))}</p>'
        return (
            f'<article class="tile {group(view.state)}" tabindex="0" data-state="{clean(state)}"'
            f' data-group="{clean(state)}" data-technique="{clean(view.technique)}"'
            f' data-run="{clean(view.run_id or "")}" data-text="{clean(text.lower())}">'
            f'<div class="media">{"".join(shown + thumbs[:2])}</div>'
            f'<span class="badge">{clean(state)}</span>'
            f'<p class="name"><span class="tech">{clean(view.technique)}</span> /'
            f' <span class="key">{clean(view.row_key)}</span></p>{snippet_html}'
            f"<template>{self.detail(view)}</template></article>\n"
        )

    def detail(self, view: JobView) -> str:
        """Everything known about the row: facts, error, inputs in full, outputs."""
        charged = view.total_charged
        cost = "charged " + ("(not reported yet)" if charged is None else f"{money(charged)} USD")
        if view.estimated_cost is not None:
            cost += f", quoted {money(view.estimated_cost)} USD"
        facts = [
            ("state", view.state.value),
            ("run", view.run_id or "(none)"),
            ("cost", cost),
            ("attempt", str(view.attempt)),
            ("request-id", view.request_id or "(none)"),
            ("from", view.location),
        ]
        facts_html = "".join(f"<dt>{clean(k)}</dt><dd>{clean(v)}</dd>" for k, v in facts)
        error = ""
        if view.error_code or view.error_message:
            rid = f" (request-id {view.request_id})" if view.request_id else ""
            error = (
                f'<p class="error"><code>{clean(view.error_code or "")}</code>'
                f" {clean(view.error_message or '')}{clean(rid)}</p>"
            )
        inputs = "".join(
            f"<dt>{clean(k)}</dt><dd>{self._input_value(v)}</dd>" for k, v in view.inputs.items()
        )
        later = "" if view.state in PROBLEM_STATES or view.state is JobState.DOWNLOADED else " yet"
        outputs = "".join(self._output(o) for o in view.outputs) or f"<p>(none{later})</p>"
        return (
            f'<div class="detail"><h3>{clean(view.technique)} / {clean(view.row_key)}</h3>'
            f'<dl class="facts">{facts_html}</dl>{error}'
            f'<div class="io"><div class="inputs"><h4>inputs</h4><dl>{inputs}</dl></div>'
            f'<div class="outputs"><h4>outputs</h4>{outputs}</div></div></div>'
        )

    def _output_thumb(self, batch: str, out: OutputRecord) -> str:
        path = _on_disk(out)
        if path is None:
            why = "missing" if out.state == "downloaded" else clean(out.state)
            return f'<div class="icon bad"><span class="glyph">!</span>{why}</div>'
        if out.type == "imageUrl":
            self.images += 1
            thumbnailer = self.thumbnailers.get(batch)
            thumb = thumbnailer.image(path, sha256=out.sha256) if thumbnailer else None
            if thumb is None:
                return '<div class="icon"><span class="glyph">?</span>no preview</div>'
            alt = clean(f"{out.output_id} ({path.name})")
            return (
                f'<img class="thumb" loading="lazy" decoding="async"'
                f' src="{self._relative(thumb)}" alt="{alt}">'
            )
        if out.type == "text":
            return f'<pre class="textthumb">{clean(shorten(_read_text(path), 300))}</pre>'
        glyph = ICONS.get(out.type, "▤")
        about = clean(_about(out, path))
        return f'<div class="icon"><span class="glyph">{glyph}</span>{about}</div>'

    def _input_thumb(self, value: str) -> str:
        local = self.local_input(value) if self.local_input and _is_url(value) else None
        if local is None:
            return ""
        thumbnailer = next(iter(self.thumbnailers.values()), None)
        thumb = thumbnailer.image(local) if thumbnailer else None
        if thumb is None:
            return ""
        return (
            f'<img class="thumb input" loading="lazy" decoding="async"'
            f' src="{self._relative(thumb)}" alt="input">'
        )

    def _input_value(self, value: str) -> str:
        """A media URL: its local copy's image when floraq has one, else a link (never loaded)."""
        if not _is_url(value):
            return clean(value)
        shown = clean(shorten(value, 120))
        link = f'<a href="{clean(value)}" rel="noreferrer noopener">{shown}</a>'
        local = self.local_input(value) if self.local_input else None
        if local is None or not local.is_file():
            return link
        src = self._relative(local)
        return f'<a href="{src}"><img class="input" src="{src}" alt="input"></a><br>{link}'

    def _output(self, out: OutputRecord) -> str:
        label = f"<figcaption>{clean(out.output_id)}</figcaption>"
        if out.state != "downloaded" or not out.path:
            return (
                f'<figure><p class="missing">not downloaded ({clean(out.state)})</p>'
                f"{label}</figure>"
            )
        path = _on_disk(out)
        if path is None:
            return (
                f'<figure><p class="missing">missing on disk: run `floraq verify`</p>'
                f"{label}</figure>"
            )
        src = self._relative(path)
        alt = clean(f"{out.output_id} ({path.name})")
        if out.type == "imageUrl":
            body = f'<a href="{src}"><img class="output" src="{src}" alt="{alt}"></a>'
        elif out.type == "videoUrl":
            body = f'<video class="output" controls preload="none" src="{src}"></video>'
        elif out.type == "audioUrl":
            body = f'<audio class="output" controls preload="none" src="{src}"></audio>'
        elif out.type == "text":
            body = f'<pre class="output">{clean(_read_text(path))}</pre>'
        else:
            body = f'<a href="{src}">{clean(path.name)}</a> ({clean(_about(out, path))})'
        return f'<figure data-output="{clean(out.output_id)}">{body}{label}</figure>'

    def _relative(self, path: Path) -> str:
        """A URL path to ``path`` from the report's folder (percent-encoded, so safe)."""
        try:
            rel = os.path.relpath(path.resolve(), self.base_dir.resolve())
        except ValueError:  # another drive (Windows): an absolute file URL is all we have
            return clean(path.resolve().as_uri())
        return quote(Path(rel).as_posix())


def _on_disk(out: OutputRecord) -> Path | None:
    if out.state != "downloaded" or not out.path:
        return None
    path = Path(out.path)
    return path if path.is_file() else None


def _about(out: OutputRecord, path: Path) -> str:
    """Size, and duration or page count where the file says so cheaply."""
    parts = [path.suffix.lstrip(".") or out.type, size(out.bytes or path.stat().st_size)]
    if out.type == "audioUrl" and (seconds := audio_seconds(path)) is not None:
        parts.append(f"{seconds:.1f} s")
    if (pages := pdf_pages(path)) is not None:
        parts.append(f"{pages} page(s)")
    return " · ".join(parts)


def _is_url(value: str) -> bool:
    return value.startswith(("https://", "http://"))


def _read_text(path: Path) -> str:
    with path.open("r", encoding="utf-8", errors="replace") as f:
        text = f.read(TEXT_PREVIEW_CHARS + 1)
    text = strip_controls(text)
    return text if len(text) <= TEXT_PREVIEW_CHARS else text[:TEXT_PREVIEW_CHARS] + "…"
