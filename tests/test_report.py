"""The HTML report from plain values: escaping, no network references, relative files."""

from __future__ import annotations

import hashlib
import html
import io
import re
from decimal import Decimal
from pathlib import Path

from PIL import Image

from floraq.core.lifecycle import JobState
from floraq.ledger import JobView, OutputRecord
from floraq.report import LocalInput, Summary, page_name, write_report
from floraq.report import page as page_module
from floraq.report.cards import Cards

HOSTILE = '<script>alert("x")</script>'


def output(path: Path, *, type_: str = "imageUrl", state: str = "downloaded") -> OutputRecord:
    return OutputRecord(
        job_id=1,
        output_id=path.stem,
        type=type_,
        url="https://media.example/o?sig=1",
        url_seen_at=0.0,
        state=state,
        path=str(path),
        bytes=path.stat().st_size if path.exists() else None,
        sha256=None,
    )


def view(*outputs: OutputRecord, **extra: object) -> JobView:
    values: dict[str, object] = {
        "id": 1,
        "batch": "b",
        "technique": "poster-maker",
        "location": "jobs.yaml: job 1, row 1",
        "row_key": "k1",
        "inputs": {"prompt": "a poster", "input_image": "https://storage.googleapis.com/a.jpg"},
        "attempt": 1,
        "state": JobState.DOWNLOADED,
        "run_id": "run_1",
        "error_code": None,
        "error_message": None,
        "request_id": None,
        "estimated_cost": Decimal("0.08"),
        "charged_cost": Decimal("0.08"),
        "prior_charged_cost": Decimal("0"),
        "outputs": outputs,
    }
    values.update(extra)
    return JobView(**values)  # type: ignore[arg-type]


def render(
    tmp_path: Path,
    *rows: JobView,
    batch: str = "b",
    output_dirs: dict[str, Path] | None = None,
    local_input: LocalInput | None = None,
) -> tuple[str, int]:
    summary = Summary(
        batch=batch,
        states={"downloaded": len(rows)},
        techniques={"poster-maker": {"downloaded": len(rows)}},
        charged=Decimal("0.08"),
        estimated=Decimal("0.08"),
        unsettled=1,
    )
    stream = io.StringIO()
    writer = write_report(
        stream,
        base_dir=tmp_path / "reports",
        title=f"report {batch}",
        generated="now",
        sections=[(summary, rows)],
        batches=[batch],
        output_dirs=output_dirs,
        local_input=local_input,
    )
    return stream.getvalue(), writer.images


def test_every_ledger_value_is_escaped(tmp_path: Path) -> None:
    """A hostile prompt, error message, batch name or row key cannot inject markup."""
    row = view(
        inputs={"prompt": HOSTILE},
        error_code="x",
        error_message=HOSTILE,
        row_key="<b>",
        state=JobState.FAILED,
    )
    page, _ = render(tmp_path, row, batch=HOSTILE)
    assert "<script>alert" not in page and "<b>" not in page
    assert page.count("&lt;script&gt;alert") >= 3


def test_input_media_are_links_and_outputs_are_relative_images(tmp_path: Path) -> None:
    """Remote inputs are <a> links; the output image is a path relative to the report."""
    image = tmp_path / "outputs" / "poster-maker" / "k1" / "poster.png"
    image.parent.mkdir(parents=True)
    image.write_bytes(b"\x89PNG fake")
    page, images = render(tmp_path, view(output(image)))
    assert '<a href="https://storage.googleapis.com/a.jpg"' in page
    assert 'src="../outputs/poster-maker/k1/poster.png"' in page
    assert images == 1
    assert not re.search(r"""src=["']https?:""", page), "nothing is loaded from the network"


def test_policy_allows_no_network_source(tmp_path: Path) -> None:
    """The Content-Security-Policy names no http(s) origin and defaults to nothing."""
    page, _ = render(tmp_path, view())
    policy = re.search(r'http-equiv="Content-Security-Policy" content="([^"]+)"', page)
    assert policy is not None
    rules = html.unescape(policy.group(1))
    assert "default-src 'none'" in rules and "http" not in rules


def test_missing_and_undownloaded_outputs_are_labelled_not_linked(tmp_path: Path) -> None:
    """A file gone from disk or never downloaded is a label, not a broken image."""
    gone = output(tmp_path / "gone.png")
    pending = output(tmp_path / "later.png", state="pending")
    page, images = render(tmp_path, view(gone, pending))
    assert "missing on disk" in page and "not downloaded (pending)" in page
    assert images == 0 and "<img" not in page


def test_text_output_is_shown_inline_escaped(tmp_path: Path) -> None:
    """A caption is read from its file and shown as escaped text."""
    caption = tmp_path / "caption.txt"
    caption.write_text("A <quiet> portrait — soft focus\n", encoding="utf-8")
    page, _ = render(tmp_path, view(output(caption, type_="text")))
    assert "A &lt;quiet&gt; portrait — soft focus" in page


def test_summary_marks_unsettled_charges_as_a_floor(tmp_path: Path) -> None:
    """The batch summary says the charged total is a floor while charges are unsettled."""
    page, _ = render(tmp_path, view())
    assert 'charged <span class="charged">0.0800</span> USD (at least' in page


def test_control_and_bidi_characters_are_stripped(tmp_path: Path) -> None:
    """A row key or error with escape sequences or a bidi override shows without them."""
    row = view(
        row_key="k\x1b[31m\u202eevil", error_code="x", error_message="bad\x00\x07 news\nhere"
    )
    page, _ = render(tmp_path, row)
    assert "\x1b" not in page and "\u202e" not in page and "\x00" not in page
    assert "k[31mevil" in page and "bad news\nhere" in page


def test_image_outputs_get_a_cached_webp_thumbnail_on_the_tile(tmp_path: Path) -> None:
    """A real PNG gets a lazy WebP thumbnail in output_dir/.floraq/thumbs named by its sha256."""
    image = tmp_path / "outputs" / "poster-maker" / "k1" / "poster.png"
    image.parent.mkdir(parents=True)
    Image.new("RGB", (1200, 600), "teal").save(image)
    digest = hashlib.sha256(image.read_bytes()).hexdigest()
    page, images = render(tmp_path, view(output(image)), output_dirs={"b": tmp_path / "outputs"})
    thumb = tmp_path / "outputs" / ".floraq" / "thumbs" / f"{digest}.webp"
    with Image.open(thumb) as small:
        assert small.size == (320, 160)
    assert f'loading="lazy" decoding="async" src="../outputs/.floraq/thumbs/{digest}.webp"' in page
    assert images == 1


def test_a_local_copy_of_an_input_shows_beside_the_output(tmp_path: Path) -> None:
    """An input floraq has on disk gets a thumbnail on the tile and an image in the detail."""
    source = tmp_path / "outputs" / "portrait-enhancer" / "k0" / "out.png"
    source.parent.mkdir(parents=True)
    Image.new("RGB", (64, 64), "red").save(source)
    url = "https://storage.googleapis.com/a.jpg"
    page, _ = render(
        tmp_path,
        view(),
        output_dirs={"b": tmp_path / "outputs"},
        local_input={url: source}.get,
    )
    assert 'class="thumb input"' in page
    assert '<img class="input" src="../outputs/portrait-enhancer/k0/out.png"' in page


def test_a_long_report_continues_on_further_pages(tmp_path: Path) -> None:
    """Above page_rows tiles the writer opens report-2.html, ... each a whole page."""
    streams: dict[int, io.StringIO] = {}

    def open_page(n: int) -> io.StringIO:
        streams[n] = io.StringIO()
        return streams[n]

    summary = Summary(
        batch="b", states={"downloaded": 5}, techniques={}, charged=0, estimated=0, unsettled=0
    )
    first = io.StringIO()
    writer = page_module.ReportWriter(
        stream=first,
        base_dir=tmp_path,
        cards=Cards(base_dir=tmp_path),
        open_page=open_page,
        page_rows=2,
    )
    writer.begin(title="t", generated="now", total=5)
    writer.section(summary)
    for n in range(5):
        writer.row(view(row_key=f"k{n}"))
    writer.end()
    assert writer.pages == 3 and sorted(streams) == [2, 3]
    pages = [first.getvalue(), streams[2].getvalue(), streams[3].getvalue()]
    assert [p.count('class="tile') for p in pages] == [2, 2, 1]
    assert all(p.endswith("</html>\n") for p in pages)
    assert '<a href="report-3.html">page 3</a>' in pages[0]
    assert "batch b (continued)" in pages[1]
    assert page_name("report.html", 2) == "report-2.html"
