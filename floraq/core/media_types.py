"""File extensions for downloaded outputs, from the Content-Type their host answered with.

Pure: a lookup table and one function; the downloader names each file with it.
"""

from __future__ import annotations

from collections.abc import Mapping

EXTENSIONS: Mapping[str, str] = {
    "image/png": ".png",
    "image/jpeg": ".jpg",
    "image/jpg": ".jpg",
    "image/pjpeg": ".jpg",
    "image/webp": ".webp",
    "image/gif": ".gif",
    "image/avif": ".avif",
    "image/heic": ".heic",
    "image/tiff": ".tiff",
    "image/bmp": ".bmp",
    "image/svg+xml": ".svg",
    "video/mp4": ".mp4",
    "video/webm": ".webm",
    "video/quicktime": ".mov",
    "video/x-matroska": ".mkv",
    "audio/mpeg": ".mp3",
    "audio/mp3": ".mp3",
    "audio/wav": ".wav",
    "audio/wave": ".wav",
    "audio/x-wav": ".wav",
    "audio/ogg": ".ogg",
    "audio/webm": ".weba",
    "audio/mp4": ".m4a",
    "audio/aac": ".aac",
    "audio/flac": ".flac",
    "text/plain": ".txt",
    "text/markdown": ".md",
    "text/csv": ".csv",
    "text/html": ".html",
    "application/json": ".json",
    "application/pdf": ".pdf",
    "application/zip": ".zip",
}


def extension_for(content_type: str | None, output_type: str) -> str:
    """The file extension for an answer: from its Content-Type, else from the output type.

    Unknown or generic types give ``.bin`` (``.txt`` for a ``text`` output): a name
    that claims nothing is better than one that lies.
    """
    media = (content_type or "").split(";", 1)[0].strip().lower()
    if media in EXTENSIONS:
        return EXTENSIONS[media]
    return ".txt" if output_type == "text" else ".bin"
