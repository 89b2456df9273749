"""Local files as inputs: which values are files, what their bytes are, the row's key."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path, PurePath

import pytest

from floraq.core.keys import idempotency_key
from floraq.core.local_files import (
    MAX_IMAGE_PIXELS,
    file_problem,
    file_ref,
    image_pixels,
    is_local,
    local_path,
    ref_digest,
    sniff,
)
from floraq.core.technique import Technique
from floraq.local_inputs import LocalFiles

PNG = b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + (640).to_bytes(4, "big") + (480).to_bytes(4, "big")
HUGE_PNG = b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + (20000).to_bytes(4, "big") * 2
TECHNIQUE = Technique.from_api(
    "product-shot",
    {
        "technique_id": "tech_1",
        "name": "Product shot",
        "run_cost": 0.1,
        "inputs": [
            {"id": "input_image", "name": "Image", "type": "imageUrl"},
            {"id": "style", "name": "Style", "type": "text"},
        ],
        "outputs": [{"id": "out", "name": "Out", "type": "imageUrl"}],
    },
)


@pytest.mark.parametrize(
    ("head", "expected"),
    [
        (b"\xff\xd8\xff\xe0\x00\x10JFIF", "image/jpeg"),
        (PNG, "image/png"),
        (b"GIF89a\x01\x00\x01\x00", "image/gif"),
        (b"RIFF\x00\x00\x00\x00WEBPVP8 ", "image/webp"),
        (b"\x00\x00\x00\x1cftypavif\x00\x00\x00\x00avifmif1", "image/avif"),
        (b"\x00\x00\x00\x18ftypheic\x00\x00\x00\x00", "image/heic"),
        (b"\x00\x00\x00\x18ftypmif1\x00\x00\x00\x00", "image/heif"),
        (b"\x00\x00\x00\x20ftypisom\x00\x00\x02\x00isomiso2", "video/mp4"),
        (b"\x00\x00\x00\x14ftypqt  \x00\x00\x00\x00qt  ", "video/quicktime"),
        (b"\x1a\x45\xdf\xa3\x9f\x42\x86\x81\x01\x42\x82\x84webm", "video/webm"),
        (b"ID3\x04\x00\x00\x00\x00", "audio/mpeg"),
        (b"\xff\xfb\x90\x64", "audio/mpeg"),
        (b"RIFF\x24\x00\x00\x00WAVEfmt ", "audio/wav"),
        (b"OggS\x00\x02", "audio/ogg"),
        (b"%PDF-1.7\n", "application/pdf"),
        (b"hello, I am text pretending to be a jpeg", None),
        (b"", None),
    ],
)
def test_sniff_reads_the_bytes_not_the_name(head: bytes, expected: str | None) -> None:
    assert sniff(head) == expected


def test_image_pixels_from_headers() -> None:
    assert image_pixels(PNG, "image/png") == 640 * 480
    assert image_pixels(b"GIF89a" + (10).to_bytes(2, "little") * 2, "image/gif") == 100
    jpeg = b"\xff\xd8\xff\xe0\x00\x04\x00\x00\xff\xc0\x00\x11\x08" + (300).to_bytes(2, "big") * 2
    assert image_pixels(jpeg, "image/jpeg") == 90_000
    assert image_pixels(b"\x00" * 40, "image/heic") is None


@pytest.mark.parametrize(
    ("content_type", "size", "pixels", "slot", "expected"),
    [
        ("image/png", 10, 100, "imageUrl", None),
        (
            "image/png",
            10,
            None,
            "videoUrl",
            "is image/png by its bytes, not what an input of type videoUrl",
        ),
        (
            None,
            10,
            None,
            "imageUrl",
            "is not a file type FLORA takes for an input of type imageUrl",
        ),
        ("image/png", 0, None, "imageUrl", "is empty"),
        ("image/png", 10, MAX_IMAGE_PIXELS + 1, "imageUrl", "megapixels, over FLORA's limit"),
        ("application/pdf", 10, None, "documentUrl", None),
    ],
)
def test_file_problem(
    content_type: str | None, size: int, pixels: int | None, slot: str, expected: str | None
) -> None:
    why = file_problem(content_type, size, pixels, slot)
    assert (why is None) if expected is None else (why is not None and expected in why)


def test_local_values_and_paths() -> None:
    base = PurePath("/work/batch")
    assert is_local("photos/a.jpg") and is_local("file:///x/a.jpg") and is_local("/x/a.jpg")
    assert not is_local("https://ik.imagekit.io/a.jpg") and not is_local("ftp://h/a.jpg")
    assert local_path("photos/a.jpg", base) == PurePath("/work/batch/photos/a.jpg")
    assert local_path("/x/a.jpg", base) == PurePath("/x/a.jpg")
    assert local_path("file:///x/a%20b.jpg", base) == PurePath("/x/a b.jpg")
    assert "names a file on host" in str(local_path("file://nas/x.jpg", base))
    assert ref_digest(file_ref("ab" * 32)) == "ab" * 32 and ref_digest("photos/a.jpg") is None


def test_the_key_covers_the_content_not_the_path(tmp_path: Path) -> None:
    """Same bytes in two folders: one key; edited bytes: another key."""
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    (tmp_path / "a" / "x.png").write_bytes(PNG)
    (tmp_path / "b" / "y.png").write_bytes(PNG)
    files = LocalFiles()

    def key(value: str) -> str:
        row = files.row({"input_image": value, "style": "s"}, TECHNIQUE, tmp_path, "here")
        assert row.problems == []
        return idempotency_key(batch="b", technique="product-shot", inputs=row.values, attempt=1)

    first = key("a/x.png")
    assert key(str(tmp_path / "b" / "y.png")) == first
    assert key((tmp_path / "a" / "x.png").as_uri()) == first
    expected = {"input_image": file_ref(hashlib.sha256(PNG).hexdigest()), "style": "s"}
    assert first == idempotency_key(batch="b", technique="product-shot", inputs=expected, attempt=1)
    (tmp_path / "a" / "x.png").write_bytes(PNG + b"\x00")
    os.utime(tmp_path / "a" / "x.png", ns=(1, 1))
    assert key("a/x.png") != first


def test_every_bad_file_is_one_line(tmp_path: Path) -> None:
    (tmp_path / "folder").mkdir()
    (tmp_path / "text.jpg").write_text("not an image at all")
    (tmp_path / "huge.png").write_bytes(HUGE_PNG)
    (tmp_path / "doc.pdf").write_bytes(b"%PDF-1.4\n")
    files = LocalFiles()
    found = {
        name: files.check(name, tmp_path, "imageUrl")
        for name in ("missing.jpg", "folder", "text.jpg", "huge.png", "doc.pdf")
    }
    assert all(isinstance(v, str) and "\n" not in v for v in found.values())
    assert str(found["missing.jpg"]).startswith("file 'missing.jpg' does not exist (looked for /")
    assert "is a folder, not a file" in str(found["folder"])
    assert "is not a file type FLORA takes" in str(found["text.jpg"])
    assert "400.0 megapixels, over FLORA's limit of 150" in str(found["huge.png"])
    assert "is application/pdf by its bytes" in str(found["doc.pdf"])
