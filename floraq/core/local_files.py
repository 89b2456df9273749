"""Local files as media inputs: which values are files, what their bytes are, what fits.

Pure: the caller reads the file's first bytes (``HEAD_BYTES``) and its size; this module
decides. A file's type is sniffed from its bytes, never its name, for the types FLORA's
SDK documents (images jpeg/png/webp/gif/avif/heic/heif, video mp4/webm/quicktime, audio
mpeg/wav/ogg, pdf). A row keeps a file as a content reference (``file_ref``), so its
idempotency key covers the file's sha256, not its path or the asset's URL.
"""

from __future__ import annotations

import re
from enum import StrEnum
from pathlib import PurePath
from urllib.parse import unquote, urlsplit

HEAD_BYTES = 64 * 1024  # enough for every signature and a JPEG's frame header
MAX_IMAGE_PIXELS = 150_000_000  # FLORA's SDK: images up to 150 megapixels
MAX_FILE_BYTES = 5 * 1024**3  # floraq's own cap on one upload (FLORA documents none)
FILE_REF_PREFIX = "floraq-file:sha256:"
_REF = re.compile(r"floraq-file:sha256:([0-9a-f]{64})")

ACCEPTED: dict[str, tuple[str, ...]] = {
    "imageUrl": (
        "image/jpeg",
        "image/png",
        "image/webp",
        "image/gif",
        "image/avif",
        "image/heic",
        "image/heif",
    ),
    "videoUrl": ("video/mp4", "video/webm", "video/quicktime"),
    "audioUrl": ("audio/mpeg", "audio/wav", "audio/ogg"),
    "documentUrl": ("application/pdf",),
}

_FTYP_BRANDS: dict[bytes, str] = {
    b"avif": "image/avif",
    b"avis": "image/avif",
    b"heic": "image/heic",
    b"heix": "image/heic",
    b"hevc": "image/heic",
    b"hevx": "image/heic",
    b"heim": "image/heic",
    b"heis": "image/heic",
    b"mif1": "image/heif",
    b"msf1": "image/heif",
    b"qt  ": "video/quicktime",
    **{
        brand: "video/mp4"
        for brand in (b"isom", b"iso2", b"iso4", b"iso5", b"iso6", b"mp41", b"mp42", b"avc1")
    },
    **{brand: "video/mp4" for brand in (b"M4V ", b"dash", b"mmp4", b"MSNV", b"3gp4", b"3gp5")},
}


class AssetState(StrEnum):
    """Where one content's upload stands in the ledger; each step is committed first."""

    NEW = "new"  # known content, nothing sent
    CREATING = "creating"  # POST /assets may have left (its key is deterministic)
    RESERVED = "reserved"  # asset id and upload reservation recorded; no upload sent
    UPLOADING = "uploading"  # the file may have reached the upload host
    COMPLETING = "completing"  # the upload host took it; complete may have left
    READY = "ready"  # FLORA said ready: runs may take its url
    FAILED = "failed"  # given up (the asset failed again and again, or the file is gone)


def choose_workspace(workspaces: list[tuple[str, str]], wanted: str | None) -> str | Exception:
    """The workspace id to upload to, from (id, name) pairs: ``wanted`` (an id or a
    name), else the only one. A ValueError with the choices when it cannot be told."""
    listed = ", ".join(f"{ws_id} ({name})" if name else ws_id for ws_id, name in workspaces)
    if wanted is not None:
        by_id = [ws_id for ws_id, _ in workspaces if ws_id == wanted]
        by_name = [ws_id for ws_id, name in workspaces if name.casefold() == wanted.casefold()]
        if by_id or len(by_name) == 1:
            return (by_id or by_name)[0]
        if by_name:
            return ValueError(
                f"{len(by_name)} workspaces are named {wanted!r} ({listed}): give its ws_ id"
            )
        return ValueError(f"{wanted!r} is not one of this key's workspaces: {listed or 'none'}")
    if len(workspaces) == 1:
        return workspaces[0][0]
    if not workspaces:
        return ValueError("this API key has no workspace to upload local files to")
    return ValueError(
        f"this API key has {len(workspaces)} workspaces ({listed}): set `workspace:`"
        " in the manifest to the one local files go to"
    )


def is_local(value: str) -> bool:
    """Whether a media value names a local file: ``file://``, or no URL scheme at all."""
    return value.startswith("file://") or "://" not in value


def local_path(value: str, base: PurePath) -> PurePath | str:
    """The absolute path a local value names (relative ones from ``base``), or why not."""
    if value.startswith("file://"):
        parts = urlsplit(value)
        if parts.netloc not in ("", "localhost"):
            return f"{value!r} names a file on host {parts.netloc!r}; use file:///path"
        path = PurePath(unquote(parts.path))
        if not path.is_absolute():
            return f"{value!r} is not an absolute file:// URL; use file:///path"
        return path
    path = PurePath(value)
    return path if path.is_absolute() else base / path


def file_ref(sha256: str) -> str:
    """How a row keeps a local file: by its content, so moving it changes nothing."""
    return FILE_REF_PREFIX + sha256


def ref_digest(value: str) -> str | None:
    """The sha256 of a content reference, or None for any other value."""
    found = _REF.fullmatch(value)
    return found.group(1) if found else None


def sniff(head: bytes) -> str | None:
    """The content type the first bytes of a file show, or None for none floraq knows."""
    if head.startswith(b"\xff\xd8\xff"):
        return "image/jpeg"
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return "image/png"
    if head[:6] in (b"GIF87a", b"GIF89a"):
        return "image/gif"
    if head.startswith(b"RIFF") and head[8:12] in (b"WEBP", b"WAVE"):
        return "image/webp" if head[8:12] == b"WEBP" else "audio/wav"
    if head[4:8] == b"ftyp":
        return _ftyp(head)
    if head[4:8] in (b"moov", b"mdat", b"wide", b"free"):
        return "video/quicktime"
    if head.startswith(b"\x1a\x45\xdf\xa3"):
        return "video/webm" if b"webm" in head[:64] else None
    if head.startswith(b"OggS"):
        return "audio/ogg"
    if head.startswith(b"ID3") or (len(head) > 1 and head[0] == 0xFF and head[1] & 0xE0 == 0xE0):
        return "audio/mpeg"
    if head.startswith(b"%PDF-"):
        return "application/pdf"
    return None


def _ftyp(head: bytes) -> str | None:
    """An ISO media file's type from its major brand, else its compatible brands."""
    found = _FTYP_BRANDS.get(head[8:12])
    if found is not None:
        return found
    size = int.from_bytes(head[0:4], "big")
    for at in range(16, min(size, len(head)) - 3, 4):
        found = _FTYP_BRANDS.get(head[at : at + 4])
        if found is not None:
            return found
    return None


def image_pixels(head: bytes, content_type: str) -> int | None:
    """Width x height when the first bytes say it (PNG, GIF, WebP, JPEG); else None."""
    if content_type == "image/png" and head[12:16] == b"IHDR" and len(head) >= 24:
        return _big(head[16:20]) * _big(head[20:24])
    if content_type == "image/gif" and len(head) >= 10:
        return _little(head[6:8]) * _little(head[8:10])
    if content_type == "image/webp":
        return _webp_pixels(head)
    if content_type == "image/jpeg":
        return _jpeg_pixels(head)
    return None


def _big(raw: bytes) -> int:
    return int.from_bytes(raw, "big")


def _little(raw: bytes) -> int:
    return int.from_bytes(raw, "little")


def _webp_pixels(head: bytes) -> int | None:
    chunk = head[12:16]
    if chunk == b"VP8X" and len(head) >= 30:
        width = int.from_bytes(head[24:27], "little") + 1
        height = int.from_bytes(head[27:30], "little") + 1
        return width * height
    if chunk == b"VP8L" and len(head) >= 25:
        bits = int.from_bytes(head[21:25], "little")
        return ((bits & 0x3FFF) + 1) * (((bits >> 14) & 0x3FFF) + 1)
    if chunk == b"VP8 " and len(head) >= 30:
        return (_little(head[26:28]) & 0x3FFF) * (_little(head[28:30]) & 0x3FFF)
    return None


def _jpeg_pixels(head: bytes) -> int | None:
    """Scan the markers up to the first frame header (SOFn) in the bytes at hand."""
    at = 2
    while at + 9 <= len(head):
        if head[at] != 0xFF:
            return None
        marker = head[at + 1]
        if marker in (0xD8, 0x01) or 0xD0 <= marker <= 0xD7:
            at += 2
            continue
        length = int.from_bytes(head[at + 2 : at + 4], "big")
        if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):
            return _big(head[at + 5 : at + 7]) * _big(head[at + 7 : at + 9])
        at += 2 + length
    return None


def file_problem(
    content_type: str | None, size: int, pixels: int | None, slot_type: str
) -> str | None:
    """Why a file of this type, size and pixel count cannot feed an input of ``slot_type``."""
    accepted = ACCEPTED.get(slot_type, ())
    if size == 0:
        return "is empty"
    if content_type is None:
        kinds = ", ".join(t.split("/")[1] for t in accepted)
        return (
            f"is not a file type FLORA takes for an input of type {slot_type} ({kinds}),"
            " by its bytes"
        )
    if content_type not in accepted:
        return f"is {content_type} by its bytes, not what an input of type {slot_type} takes"
    if size > MAX_FILE_BYTES:
        return f"is {size:,} bytes, over floraq's upload limit of {MAX_FILE_BYTES:,}"
    if pixels is not None and pixels > MAX_IMAGE_PIXELS:
        return (
            f"is {pixels / 1e6:,.1f} megapixels, over FLORA's limit of"
            f" {MAX_IMAGE_PIXELS / 1e6:,.0f}"
        )
    return None
