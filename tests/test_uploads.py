"""The upload client: the form then the file, streamed, and never the API key."""

from __future__ import annotations

import asyncio
from pathlib import Path

import httpx
import pytest

from floraq.errors import UsageError
from floraq.retry import RetryPolicy
from floraq.uploads import UploadHost, UploadRefused

KEY = "sk_live_upload_canary"
RESERVATION = {
    "url": "https://upload.imagekit.io/api/v1/files/upload",
    "form_fields": {"token": "t1", "signature": "s1"},
    "file_field": "file",
}


def run(host: UploadHost, reservation: dict[str, object], path: Path) -> None:
    async def go() -> None:
        async with host:
            await host.upload(reservation, path, "image/png")

    asyncio.run(go())


def test_the_form_and_the_file_go_without_authorization(tmp_path: Path) -> None:
    seen: list[httpx.Request] = []
    bodies: list[bytes] = []

    def answer(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        bodies.append(request.read())
        return httpx.Response(503 if len(seen) == 1 else 200)  # the first one is retried

    path = tmp_path / "a.png"
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + b"x" * 200_000)
    sleeps: list[float] = []

    async def sleep(seconds: float) -> None:
        sleeps.append(seconds)

    host = UploadHost(
        api_key=KEY,
        policy=RetryPolicy(time_scale=0.0),
        transport=httpx.MockTransport(answer),
        sleep=sleep,
    )
    run(host, RESERVATION, path)
    assert len(seen) == 2 and host.uploads == 1
    for request, body in zip(seen, bodies, strict=True):
        assert "authorization" not in request.headers
        assert request.headers["content-type"].startswith("multipart/form-data; boundary=")
        assert body.index(b'name="token"') < body.index(b'name="signature"')
        assert body.index(b'name="signature"') < body.index(b'name="file"; filename="a.png"')
        assert path.read_bytes() in body and KEY.encode() not in body


@pytest.mark.parametrize(
    "url", ["http://upload.example.com/x", "http://127.0.0.1:9/x", "ftp://upload.example.com/x"]
)
def test_plain_http_is_refused_unless_the_api_is_local(tmp_path: Path, url: str) -> None:
    path = tmp_path / "a.png"
    path.write_bytes(b"\x89PNG\r\n\x1a\n")
    host = UploadHost(api_key=KEY, policy=RetryPolicy(), transport=httpx.MockTransport(
        lambda r: httpx.Response(200)))  # fmt: skip
    with pytest.raises(UsageError, match="refusing upload URL"):
        run(host, {**RESERVATION, "url": url}, path)


def test_a_403_from_the_upload_host_is_a_refused_form_not_a_refused_key(tmp_path: Path) -> None:
    """S3 answers 403 to an expired policy: that renews the reservation, it stops nothing."""
    path = tmp_path / "a.png"
    path.write_bytes(b"\x89PNG\r\n\x1a\n")
    host = UploadHost(api_key=KEY, policy=RetryPolicy(), transport=httpx.MockTransport(
        lambda r: httpx.Response(403, json={"error": {"code": "upload_expired", "message": "late"}})
    ))  # fmt: skip
    with pytest.raises(UploadRefused) as refused:
        run(host, RESERVATION, path)
    assert (refused.value.status, refused.value.code) == (403, "upload_expired")
