"""Output files the sandbox's media host serves, and the signed URLs that name them.

The bytes are a pure function of a 32-byte seed (drawn from the run's inputs and the
output id), so a test can predict the sha256 of what it downloads. The files are tiny
but valid: a PNG, an MP4 with ftyp/moov/mdat boxes, a WAV, UTF-8 text.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import struct
import zlib
from collections.abc import Sequence
from dataclasses import dataclass

PNG_SIZE = 32


@dataclass(frozen=True, slots=True)
class MediaFile:
    """The exact bytes of one output and how the media host labels them."""

    body: bytes
    content_type: str
    extension: str

    @property
    def etag(self) -> str:
        return '"' + hashlib.sha256(self.body).hexdigest()[:32] + '"'

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.body).hexdigest()


def output_seed(slug: str, inputs: Sequence[tuple[str, str, str]], output_id: str) -> bytes:
    """The seed of one output's bytes: same technique, inputs and output id, same file."""
    material = json.dumps(
        {"slug": slug, "inputs": sorted(inputs), "output": output_id},
        sort_keys=True,
        separators=(",", ":"),
        ensure_ascii=False,
    )
    return hashlib.sha256(material.encode("utf-8")).digest()


def render(output_type: str, seed: bytes) -> MediaFile:
    """The file for an output of ``output_type`` (imageUrl, videoUrl, audioUrl, text)."""
    if output_type == "imageUrl":
        return MediaFile(png_bytes(seed), "image/png", "png")
    if output_type == "videoUrl":
        return MediaFile(mp4_bytes(seed), "video/mp4", "mp4")
    if output_type == "audioUrl":
        return MediaFile(wav_bytes(seed), "audio/wav", "wav")
    if output_type == "text":
        return MediaFile(text_bytes(seed), "text/plain; charset=utf-8", "txt")
    raise ValueError(f"no sandbox rendering for output type {output_type!r}")


def png_bytes(seed: bytes) -> bytes:
    """A 32x32 RGB PNG: a background colour and a diagonal band, both from the seed."""
    background, band = seed[0:3], seed[3:6]
    width = 4 + seed[6] % 12
    rows = bytearray()
    for y in range(PNG_SIZE):
        rows.append(0)
        for x in range(PNG_SIZE):
            rows += band if abs(x - y) < width // 2 else background
    header = struct.pack(">IIBBBBB", PNG_SIZE, PNG_SIZE, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + _png_chunk(b"IHDR", header)
        + _png_chunk(b"IDAT", zlib.compress(bytes(rows), 9))
        + _png_chunk(b"IEND", b"")
    )


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def mp4_bytes(seed: bytes) -> bytes:
    """A minimal ISO BMFF file: ftyp, a moov with an mvhd, and an mdat of seed bytes."""
    ftyp = _box(b"ftyp", b"isom" + struct.pack(">I", 0x200) + b"isomiso2mp41")
    duration_ms = 1000 + seed[0] * 10
    identity = (0x00010000, 0, 0, 0, 0x00010000, 0, 0, 0, 0x40000000)
    mvhd = _box(
        b"mvhd",
        struct.pack(">IIIII", 0, 0, 0, 1000, duration_ms)
        + struct.pack(">IH", 0x00010000, 0x0100)
        + bytes(10)
        + struct.pack(">9I", *identity)
        + bytes(24)
        + struct.pack(">I", 1),
    )
    return ftyp + _box(b"moov", mvhd) + _box(b"mdat", hashlib.sha512(seed).digest() * 4)


def _box(kind: bytes, payload: bytes) -> bytes:
    return struct.pack(">I", 8 + len(payload)) + kind + payload


def wav_bytes(seed: bytes) -> bytes:
    """A tenth of a second of an 8 kHz, 8-bit mono square wave whose pitch comes from the seed."""
    rate, samples = 8000, 800
    period = 8 + seed[0] % 32
    data = bytes(200 if (i // (period // 2)) % 2 else 56 for i in range(samples))
    fmt = struct.pack("<HHIIHH", 1, 1, rate, rate, 1, 8)
    body = b"WAVE" + b"fmt " + struct.pack("<I", len(fmt)) + fmt + b"data"
    body += struct.pack("<I", len(data)) + data
    return b"RIFF" + struct.pack("<I", len(body)) + body


_MOODS = ("sunlit", "moody", "crisp", "dreamy", "bold", "quiet", "vivid", "muted")
_SUBJECTS = ("portrait", "still life", "street scene", "product", "landscape", "interior")
_FINISHES = ("soft focus", "film grain", "high contrast", "pastel tones", "deep shadows")


def text_bytes(seed: bytes) -> bytes:
    """A one-line caption, UTF-8 with a non-ASCII character so decoding is exercised."""
    mood = _MOODS[seed[0] % len(_MOODS)]
    subject = _SUBJECTS[seed[1] % len(_SUBJECTS)]
    finish = _FINISHES[seed[2] % len(_FINISHES)]
    line = f"A {mood} {subject} — {finish}. (#{seed[:4].hex()})\n"
    return line.encode("utf-8")


def sign(secret: bytes, path: str, expires_ms: int) -> str:
    """The signature of a media path valid until ``expires_ms`` (epoch milliseconds)."""
    message = f"{path}?exp={expires_ms}".encode()
    return hmac.new(secret, message, hashlib.sha256).hexdigest()[:32]


def verify(secret: bytes, path: str, expires_ms: int, signature: str) -> bool:
    """Whether ``signature`` was made by ``sign`` for this path and expiry."""
    return hmac.compare_digest(sign(secret, path, expires_ms), signature)
