"""A streaming ``multipart/form-data`` reader for the upload host: parts as they arrive.

The upload host must take a 2 GB file without holding it, so the body is never kept:
text fields are collected (they are small), the file part is handed on chunk by chunk.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from dataclasses import dataclass

MAX_HEADER_BYTES = 16 * 1024  # a part's headers; more is not a form a client sends
MAX_FIELD_BYTES = 64 * 1024  # a text field's value

_NAME = re.compile(r'(?:^|;)\s*name="([^"]*)"')
_FILENAME = re.compile(r'(?:^|;)\s*filename="([^"]*)"')
_BOUNDARY = re.compile(r'boundary="?([^";]+)"?')


class MalformedForm(ValueError):
    """The body is not the multipart form its Content-Type announced."""


@dataclass(frozen=True, slots=True)
class PartStart:
    """A part begins: its field name, its file name (files only) and its content type."""

    name: str
    filename: str | None
    content_type: str | None


@dataclass(frozen=True, slots=True)
class PartData:
    """Some bytes of the current part."""

    data: bytes


def boundary_of(content_type: str) -> str | None:
    """The boundary of a ``multipart/form-data`` Content-Type, or None if it is not one."""
    if not content_type.lower().startswith("multipart/form-data"):
        return None
    found = _BOUNDARY.search(content_type)
    return found.group(1) if found else None


async def parts(chunks: AsyncIterator[bytes], boundary: str) -> AsyncIterator[PartStart | PartData]:
    """Each part's start, then its bytes, in body order; MalformedForm if it is not a form."""
    delimiter = b"\r\n--" + boundary.encode("latin-1")
    buffer = b"\r\n"  # so the first delimiter looks like every other one
    state = "preamble"
    async for chunk in chunks:
        buffer += chunk
        while True:
            if state == "preamble" or state == "body":
                at = buffer.find(delimiter)
                if at < 0:
                    keep = len(delimiter) + 1
                    if len(buffer) > keep:
                        if state == "body":
                            yield PartData(buffer[:-keep])
                        buffer = buffer[-keep:]
                    break
                if state == "body" and at:
                    yield PartData(buffer[:at])
                buffer, state = buffer[at + len(delimiter) :], "after"
            if state == "after":
                if len(buffer) < 2:
                    break
                if buffer.startswith(b"--"):
                    return
                if not buffer.startswith(b"\r\n"):
                    raise MalformedForm("a boundary is not followed by a line break")
                buffer, state = buffer[2:], "headers"
            if state == "headers":
                end = buffer.find(b"\r\n\r\n")
                if end < 0:
                    if len(buffer) > MAX_HEADER_BYTES:
                        raise MalformedForm("a part's headers are too long")
                    break
                yield _start(buffer[:end])
                buffer, state = buffer[end + 4 :], "body"
    raise MalformedForm("the body ends before the closing boundary")


def _start(raw: bytes) -> PartStart:
    headers: dict[str, str] = {}
    for line in raw.decode("utf-8", "replace").split("\r\n"):
        header, sep, value = line.partition(":")
        if sep:
            headers[header.strip().lower()] = value.strip()
    disposition = headers.get("content-disposition", "")
    name = _NAME.search(disposition)
    if not disposition.lower().startswith("form-data") or name is None:
        raise MalformedForm("a part has no Content-Disposition: form-data; name=...")
    filename = _FILENAME.search(disposition)
    return PartStart(
        name=name.group(1),
        filename=filename.group(1) if filename else None,
        content_type=headers.get("content-type"),
    )
