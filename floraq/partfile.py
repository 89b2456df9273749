"""A download's part file: the bytes received so far, and their atomic commit.

The downloader streams into ``<final name>.part`` and only a verified, fsynced file is
renamed to its final name, so a reader (or a crash) never sees half a file under it.
"""

from __future__ import annotations

import glob
import hashlib
import os
from pathlib import Path

import httpx

from floraq.core.media_types import extension_for


def sha256_file(path: Path) -> str:
    """Hex sha256 of a file on disk, read in chunks (for verify and skip checks)."""
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1024 * 1024), b""):
            digest.update(chunk)
    return digest.hexdigest()


class PartFile:
    """What one download has on disk so far (``<final>.part``), kept across its attempts."""

    def __init__(self, dest_stem: Path, output_type: str, *, tag: str | None = None) -> None:
        self.dest_stem = dest_stem
        self.tag = tag  # one worker's own part name (``<final>.<tag>.part``), if several
        self.output_type = output_type
        self.final: Path | None = None
        self.content_type: str | None = None
        self.received = 0
        self.total: int | None = None
        self.digest = hashlib.sha256()
        self.validator: str | None = None
        self.ranges = False
        self.first_chunk_seen = False

    @property
    def part(self) -> Path | None:
        if self.final is None:
            return None
        middle = "" if self.tag is None else f".{self.tag}"
        return self.final.with_name(f"{self.final.name}{middle}.part")

    def can_resume(self) -> bool:
        return self.received > 0 and self.ranges

    def start_over(self, response: httpx.Response) -> None:
        """Begin again from byte 0, under the name this answer's Content-Type gives."""
        old_part = self.part
        self.content_type = response.headers.get("content-type")
        ext = extension_for(self.content_type, self.output_type)
        self.final = self.dest_stem.with_name(self.dest_stem.name + ext)
        if old_part is not None and old_part != self.part:
            old_part.unlink(missing_ok=True)
        self.received = 0
        self.digest = hashlib.sha256()
        encoded = response.headers.get("content-encoding", "identity").lower() != "identity"
        length = response.headers.get("content-length")
        self.total = int(length) if length and length.isdigit() and not encoded else None
        etag = response.headers.get("etag")
        strong = etag if etag and not etag.startswith("W/") else None
        self.validator = strong or response.headers.get("last-modified")
        accepts = "bytes" in response.headers.get("accept-ranges", "").lower()
        self.ranges = not encoded and (accepts or strong is not None)
        self.final.parent.mkdir(parents=True, exist_ok=True)

    def discard(self) -> None:
        """Forget the bytes so far; the next attempt starts from byte 0."""
        self.received = 0
        if self.part is not None:
            self.part.unlink(missing_ok=True)


def commit(part: Path, final: Path) -> None:
    """Make the bytes durable, then the name: fsync file, rename, fsync directory."""
    fd = os.open(part, os.O_RDWR)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(part, final)
    if os.name == "posix":
        dir_fd = os.open(final.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)


def sweep_parts(final: Path) -> None:
    """Remove every worker's part of ``final`` once it is final (a dead worker's stays else)."""
    for part in final.parent.glob(glob.escape(final.name) + ".*.part"):
        part.unlink(missing_ok=True)
