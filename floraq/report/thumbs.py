"""Thumbnails for the contact sheet, made once per file and cached by content.

A 10,000-row report must not make the browser decode 10,000 full-size images, so each
image gets a small WebP beside the outputs, in ``output_dir/.floraq/thumbs/``. The name
is the file's sha256 (the ledger's, when it has one), so a re-run reuses it, a changed
file gets a new one, and nothing depends on where the file sits. The folder starts with a
dot, which no technique slug can (the manifest schema says so), so it can never be taken
for a row's output folder.
"""

from __future__ import annotations

import hashlib
import wave
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, UnidentifiedImageError

THUMB_PX = 320  # the longest side; tiles show 160 css px, so this is sharp at 2x
THUMB_QUALITY = 80
CACHE_PARTS = (".floraq", "thumbs")


def cache_dir(output_dir: Path) -> Path:
    """Where a batch's thumbnails live: ``output_dir/.floraq/thumbs``."""
    return output_dir.joinpath(*CACHE_PARTS)


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


@dataclass(frozen=True, slots=True)
class Thumbnailer:
    """Makes (or finds) the thumbnail of an image file in one cache folder."""

    folder: Path

    def image(self, path: Path, *, sha256: str | None = None) -> Path | None:
        """The thumbnail of ``path``; None if it is not an image Pillow can read.

        ``sha256`` is the ledger's hash of the file; without it the file is hashed here.
        """
        try:
            key = sha256 or file_sha256(path)
        except OSError:
            return None  # gone or unreadable since the ledger saw it: the page shows a link
        thumb = self.folder / f"{key}.webp"
        if thumb.is_file():
            return thumb
        try:
            with Image.open(path) as img:
                img.draft("RGB", (THUMB_PX, THUMB_PX))  # JPEG: decode at a fraction of size
                img.thumbnail((THUMB_PX, THUMB_PX))
                small = img if img.mode in ("RGB", "RGBA") else img.convert("RGBA")
                self.folder.mkdir(parents=True, exist_ok=True)
                part = thumb.with_name(thumb.name + ".part")
                small.save(part, "WEBP", quality=THUMB_QUALITY)
                part.replace(thumb)
        except (UnidentifiedImageError, OSError, ValueError):
            return None
        return thumb


def audio_seconds(path: Path) -> float | None:
    """A WAV file's duration, read from its header; None for other formats."""
    try:
        with wave.open(str(path), "rb") as w:
            rate = w.getframerate()
            return w.getnframes() / rate if rate else None
    except (wave.Error, EOFError, OSError):
        return None


def pdf_pages(path: Path, *, limit: int = 4 << 20) -> int | None:
    """A PDF's page count from its page objects (small files only); None if not a PDF."""
    try:
        if path.stat().st_size > limit:
            return None
        data = path.read_bytes()
    except OSError:
        return None
    if not data.startswith(b"%PDF"):
        return None
    return data.count(b"/Type /Page") - data.count(b"/Type /Pages") or None
