"""The media host: valid files, exact bytes, Range, expiry, no credentials, truncation."""

from __future__ import annotations

import hashlib
import struct
import zlib
from typing import Any

import httpx
import pytest
from sandbox_fixtures import *  # noqa: F403
from sandbox_fixtures import IMAGE, auth, wait_done

from floraq.sandbox import SandboxServer


def completed(api: httpx.Client, slug: str, inputs: dict[str, tuple[str, str]]) -> dict[str, Any]:
    body = {
        "inputs": [{"id": i, "type": t, "value": v} for i, (t, v) in inputs.items()],
        "mode": "async",
    }
    run = wait_done(api, api.post(f"/techniques/{slug}/runs", json=body).json()["poll_url"])
    assert run["status"] == "completed", run
    return run


def portrait_url(api: httpx.Client) -> str:
    url: str = completed(api, "portrait-enhancer", {"input_image": ("imageUrl", IMAGE)})["outputs"][
        0
    ]["url"]
    return url


def png_pixels(data: bytes) -> tuple[int, int, bytes]:
    """Width, height and raw scanlines of a PNG, checking every chunk's CRC."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    pos, chunks = 8, {}
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos : pos + 4])
        kind, body = data[pos + 4 : pos + 8], data[pos + 8 : pos + 8 + length]
        (crc,) = struct.unpack(">I", data[pos + 8 + length : pos + 12 + length])
        assert crc == zlib.crc32(kind + body)
        chunks[kind] = body
        pos += 12 + length
    width, height = struct.unpack(">II", chunks[b"IHDR"][:8])
    return width, height, zlib.decompress(chunks[b"IDAT"])


def test_image_output_is_a_valid_png(api: httpx.Client) -> None:
    """An imageUrl output is a 32x32 RGB PNG with Content-Type, Content-Length and ETag."""
    response = httpx.get(portrait_url(api), trust_env=False)
    assert response.status_code == 200
    assert response.headers["content-type"] == "image/png"
    assert int(response.headers["content-length"]) == len(response.content)
    assert response.headers["etag"].startswith('"')
    width, height, raw = png_pixels(response.content)
    assert (width, height, len(raw)) == (32, 32, 32 * (1 + 32 * 3))


def test_video_output_is_an_mp4(api: httpx.Client) -> None:
    """A videoUrl output starts with an ftyp box and holds moov and mdat, as video/mp4."""
    run = completed(
        api, "image-to-video", {"input_image": ("imageUrl", IMAGE), "prompt": ("text", "pan left")}
    )
    response = httpx.get(run["outputs"][0]["url"], trust_env=False)
    assert response.headers["content-type"] == "video/mp4"
    boxes, pos = [], 0
    while pos < len(response.content):
        size, kind = struct.unpack(">I4s", response.content[pos : pos + 8])
        boxes.append(kind)
        pos += size
    assert boxes == [b"ftyp", b"moov", b"mdat"] and pos == len(response.content)


def test_text_output_is_utf8_text(api: httpx.Client) -> None:
    """A text output is served as UTF-8 text/plain that decodes cleanly."""
    run = completed(api, "caption-writer", {"input_image": ("imageUrl", IMAGE)})
    response = httpx.get(run["outputs"][0]["url"], trust_env=False)
    assert response.headers["content-type"] == "text/plain; charset=utf-8"
    assert "—" in response.content.decode("utf-8")


def test_two_output_technique_serves_both(api: httpx.Client) -> None:
    """social-pack returns an image and a text output, each downloadable."""
    run = completed(
        api, "social-pack", {"input_image": ("imageUrl", IMAGE), "tone": ("text", "playful")}
    )
    types = [httpx.get(o["url"], trust_env=False).headers["content-type"] for o in run["outputs"]]
    assert types == ["image/png", "text/plain; charset=utf-8"]


def test_served_bytes_match_the_runs_report(
    shared_sandbox: SandboxServer, api: httpx.Client
) -> None:
    """sha256 and size in /_sandbox/runs are those of the exact bytes downloaded."""
    content = httpx.get(portrait_url(api), trust_env=False).content
    (output,) = shared_sandbox.runs()[0]["outputs"]
    assert output["sha256"] == hashlib.sha256(content).hexdigest()
    assert (output["bytes"], output["content_type"]) == (len(content), "image/png")
    assert shared_sandbox.stats()["downloads"] == 1


def test_same_inputs_give_the_same_bytes_other_inputs_differ(api: httpx.Client) -> None:
    """Output bytes are deterministic from the inputs and differ when inputs differ."""

    def fetch(image: str) -> bytes:
        run = completed(api, "portrait-enhancer", {"input_image": ("imageUrl", image)})
        return httpx.get(run["outputs"][0]["url"], trust_env=False).content

    assert fetch(IMAGE) == fetch(IMAGE) != fetch(IMAGE + "?v=2")


def test_authorization_header_is_refused_and_counted(
    shared_sandbox: SandboxServer, api: httpx.Client
) -> None:
    """The media host answers 400 to a request carrying the API key, and counts it."""
    response = httpx.get(portrait_url(api), headers=auth("sk_test_sandbox"), trust_env=False)
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "authorization_not_allowed"
    assert response.headers["request-id"].startswith("req_")
    stats = shared_sandbox.stats()
    assert (stats["media_auth_rejections"], stats["media_requests"], stats["downloads"]) == (
        1,
        1,
        0,
    )


def test_range_request_resumes_from_an_offset(api: httpx.Client) -> None:
    """`Range: bytes=N-` answers 206 with the tail and a Content-Range."""
    url = portrait_url(api)
    full = httpx.get(url, trust_env=False)
    tail = httpx.get(url, headers={"Range": "bytes=100-"}, trust_env=False)
    assert tail.status_code == 206
    assert tail.headers["content-range"] == f"bytes 100-{len(full.content) - 1}/{len(full.content)}"
    assert full.content[:100] + tail.content == full.content


@pytest.mark.parametrize(("if_range", "status"), [("match", 206), ('"stale"', 200)])
def test_if_range_needs_the_current_etag(api: httpx.Client, if_range: str, status: int) -> None:
    """If-Range with the ETag honours the Range; with another ETag the whole file comes."""
    url = portrait_url(api)
    etag = httpx.head(url, trust_env=False).headers["etag"]
    headers = {"Range": "bytes=10-", "If-Range": etag if if_range == "match" else if_range}
    assert httpx.get(url, headers=headers, trust_env=False).status_code == status


def test_range_past_the_end_is_416(api: httpx.Client) -> None:
    """A range starting beyond the file answers 416 with `bytes */size`."""
    response = httpx.get(portrait_url(api), headers={"Range": "bytes=99999-"}, trust_env=False)
    assert response.status_code == 416
    assert response.headers["content-range"].startswith("bytes */")


@pytest.mark.parametrize("status", [403, 410])
def test_expired_url_is_refused_and_a_repoll_gives_a_fresh_one(
    shared_sandbox: SandboxServer, api: httpx.Client, status: int
) -> None:
    """After url_ttl the URL answers the configured status; polling again gives a working URL."""
    shared_sandbox.configure(url_ttl=0.2, expired_status=status)
    run = completed(api, "portrait-enhancer", {"input_image": ("imageUrl", IMAGE)})
    shared_sandbox.configure(frozen_clock=True)  # the fresh URL then lasts on any machine
    shared_sandbox.advance_clock(0.25)
    expired = httpx.get(run["outputs"][0]["url"], trust_env=False)
    assert (expired.status_code, expired.json()["error"]["code"]) == (status, "url_expired")
    fresh = api.get(run["poll_url"]).json()["outputs"][0]["url"]
    assert fresh != run["outputs"][0]["url"]
    assert httpx.get(fresh, trust_env=False).status_code == 200


def test_tampered_signature_is_forbidden(api: httpx.Client) -> None:
    """Changing the expiry without a new signature makes the URL invalid (403)."""
    url = portrait_url(api)
    tampered = url.replace("exp=", "exp=9")
    response = httpx.get(tampered, trust_env=False)
    assert (response.status_code, response.json()["error"]["code"]) == (403, "invalid_signature")


def test_truncated_download_breaks_mid_body(
    shared_sandbox: SandboxServer, api: httpx.Client
) -> None:
    """truncate_rate=1: full Content-Length is announced, the body stops short, and a
    Range request for the rest completes the file."""
    url = portrait_url(api)
    shared_sandbox.configure(truncate_rate=1.0)
    received = bytearray()
    with pytest.raises(httpx.RemoteProtocolError), httpx.stream("GET", url, trust_env=False) as r:
        size = int(r.headers["content-length"])
        for chunk in r.iter_raw():
            received += chunk
    assert 0 < len(received) < size
    shared_sandbox.configure(truncate_rate=0.0)
    rest = httpx.get(url, headers={"Range": f"bytes={len(received)}-"}, trust_env=False)
    assert (
        hashlib.sha256(bytes(received) + rest.content).hexdigest()
        == (shared_sandbox.runs()[0]["outputs"][0]["sha256"])
    )
    stats = shared_sandbox.stats()
    assert (stats["faults"]["truncate"], stats["downloads"]) == (1, 1)
