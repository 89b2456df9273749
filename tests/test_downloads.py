"""Downloads: extensions, verified atomic writes, resume after a cut, no key to output hosts."""

from __future__ import annotations

import asyncio
import errno
import hashlib
import os
import threading
import time
from collections.abc import Callable, Coroutine, Iterator
from pathlib import Path
from typing import Any, TypeVar

import httpx
import pytest
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import Mount, Route
from starlette.types import Receive, Scope, Send

from floraq.downloads import Downloaded, Downloader, extension_for, sha256_file
from floraq.errors import DiskError, DownloadError, DownloadExpired, ExitCode
from floraq.retry import RetryPolicy

T = TypeVar("T")
PAYLOAD = bytes(range(256)) * 40
PAYLOAD_SHA = hashlib.sha256(PAYLOAD).hexdigest()
URL = "https://cdn.test/out/abc"


def run(coro: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(coro)


async def fetch(
    handler: Callable[[httpx.Request], httpx.Response],
    dest: Path,
    *,
    url: str = URL,
    output_type: str = "imageUrl",
    sleeps: list[float] | None = None,
    crash: Callable[[str], None] = lambda point: None,
) -> Downloaded:
    async def fake_sleep(seconds: float) -> None:
        (sleeps if sleeps is not None else []).append(seconds)

    async with Downloader(
        transport=httpx.MockTransport(handler), sleep=fake_sleep, rand=lambda: 1.0, crash=crash
    ) as downloader:
        return await downloader.download(url, dest_stem=dest, output_type=output_type)


def png(body: bytes = PAYLOAD, **headers: str) -> httpx.Response:
    return httpx.Response(200, content=body, headers={"Content-Type": "image/png", **headers})


def leftovers(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir())


@pytest.mark.parametrize(
    ("content_type", "output_type", "ext"),
    [
        ("image/png", "imageUrl", ".png"),
        ("image/jpeg", "imageUrl", ".jpg"),
        ("IMAGE/WEBP; q=1", "imageUrl", ".webp"),
        ("video/mp4", "videoUrl", ".mp4"),
        ("video/webm", "videoUrl", ".webm"),
        ("audio/mpeg", "audioUrl", ".mp3"),
        ("text/plain; charset=utf-8", "text", ".txt"),
        ("application/pdf", "documentUrl", ".pdf"),
        ("application/octet-stream", "imageUrl", ".bin"),
        (None, "imageUrl", ".bin"),
        (None, "text", ".txt"),
    ],
)
def test_extension_from_content_type_then_output_type(
    content_type: str | None, output_type: str, ext: str
) -> None:
    """The Content-Type names the extension; unknown types fall back on the output type."""
    assert extension_for(content_type, output_type) == ext


def test_download_writes_verified_file_under_final_name(tmp_path: Path) -> None:
    """The file lands as stem + extension with its size and sha256, and no .part remains."""
    result = run(fetch(lambda r: png(), tmp_path / "sub" / "row1_out"))
    assert result == Downloaded(
        tmp_path / "sub" / "row1_out.png", len(PAYLOAD), PAYLOAD_SHA, "image/png"
    )
    assert result.path.read_bytes() == PAYLOAD
    assert sha256_file(result.path) == PAYLOAD_SHA
    assert leftovers(tmp_path / "sub") == ["row1_out.png"]


def test_truncated_body_is_resumed_with_range(tmp_path: Path) -> None:
    """A short body is fetched again from where it stopped, with Range and If-Range."""
    seen: list[dict[str, str]] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append({k: v for k, v in request.headers.items() if k in ("range", "if-range")})
        if "range" not in request.headers:
            return png(
                PAYLOAD[:1000],
                **{"Content-Length": str(len(PAYLOAD)), "ETag": '"v1"', "Accept-Ranges": "bytes"},
            )
        return httpx.Response(
            206,
            content=PAYLOAD[1000:],
            headers={"Content-Range": f"bytes 1000-{len(PAYLOAD) - 1}/{len(PAYLOAD)}"},
        )

    result = run(fetch(handler, tmp_path / "a"))
    assert seen == [{}, {"range": "bytes=1000-", "if-range": '"v1"'}]
    assert (result.sha256, result.bytes) == (PAYLOAD_SHA, len(PAYLOAD))
    assert leftovers(tmp_path) == ["a.png"]


def test_truncated_body_without_ranges_starts_over(tmp_path: Path) -> None:
    """Without ETag or Accept-Ranges a cut body is fetched again from byte 0."""
    answers = [png(PAYLOAD[:10], **{"Content-Length": str(len(PAYLOAD))}), png()]
    seen: list[str | None] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request.headers.get("range"))
        return answers.pop(0)

    result = run(fetch(handler, tmp_path / "a"))
    assert (seen, result.sha256) == ([None, None], PAYLOAD_SHA)


def test_persistent_truncation_ends_as_download_error(tmp_path: Path) -> None:
    """A body that is always cut short is never saved under the final name."""
    cut = png(PAYLOAD[:10], **{"Content-Length": str(len(PAYLOAD))})
    with pytest.raises(DownloadError) as caught:
        run(fetch(lambda r: cut, tmp_path / "a"))
    assert str(caught.value) == (
        "could not download https://cdn.test/out/abc after 6 attempt(s): "
        "the body was cut short at 10 of 10240 bytes"
    )
    assert leftovers(tmp_path) == []


def test_resume_answered_with_200_starts_over(tmp_path: Path) -> None:
    """A server that ignores Range and sends the whole file gets a fresh file, not a splice."""
    cut = png(PAYLOAD[:500], **{"Content-Length": str(len(PAYLOAD)), "ETag": '"v1"'})
    answers = [cut, png()]
    result = run(fetch(lambda r: answers.pop(0), tmp_path / "a"))
    assert (result.path.read_bytes(), result.sha256) == (PAYLOAD, PAYLOAD_SHA)


def test_misplaced_content_range_is_not_spliced(tmp_path: Path) -> None:
    """A 206 that does not start where the part file ends is discarded and refetched."""
    headers = {"Content-Length": str(len(PAYLOAD)), "Accept-Ranges": "bytes"}
    wrong = httpx.Response(
        206, content=PAYLOAD[5:], headers={"Content-Range": "bytes 5-10239/10240"}
    )
    answers = [png(PAYLOAD[:100], **headers), wrong, png()]
    result = run(fetch(lambda r: answers.pop(0), tmp_path / "a"))
    assert (result.path.read_bytes(), answers) == (PAYLOAD, [])


def test_transport_errors_retried_then_download_error(tmp_path: Path) -> None:
    """Connection failures are retried per policy, then DownloadError; nothing is left."""
    calls: list[int] = []

    def handler(request: httpx.Request) -> httpx.Response:
        calls.append(1)
        raise httpx.ReadError("reset by peer")

    with pytest.raises(DownloadError) as caught:
        run(fetch(handler, tmp_path / "a"))
    assert str(caught.value) == (
        "could not download https://cdn.test/out/abc after 6 attempt(s): ReadError: reset by peer"
    )
    assert (len(calls), leftovers(tmp_path)) == (6, [])


def test_503_then_success(tmp_path: Path) -> None:
    """A 5xx from the output host is retried with back-off."""
    answers = [httpx.Response(503, text="busy"), png()]
    sleeps: list[float] = []
    result = run(fetch(lambda r: answers.pop(0), tmp_path / "a", sleeps=sleeps))
    assert (result.sha256, sleeps) == (PAYLOAD_SHA, [0.5])


@pytest.mark.parametrize("status", [403, 404, 410])
def test_dead_url_is_expired_and_not_retried(tmp_path: Path, status: int) -> None:
    """403/404/410 raise DownloadExpired after one request and leave no file."""
    calls: list[int] = []

    def handler(request: httpx.Request) -> httpx.Response:
        calls.append(1)
        return httpx.Response(status)

    with pytest.raises(DownloadExpired) as caught:
        run(fetch(handler, tmp_path / "a"))
    assert str(caught.value).startswith(f"https://cdn.test/out/abc answered {status}:")
    assert (len(calls), leftovers(tmp_path)) == (1, [])


@pytest.mark.parametrize(
    "url",
    [
        "http://cdn.example/a.png",
        "ftp://cdn.example/a.png",
        "https://user:pw@cdn.example/a.png",
        "http://127.0.0.1:6379/a.png",
        "http://localhost:8080/admin",
        "http://[::1]:9200/_all",
        "file:///etc/passwd",
        "data:image/png;base64,iVBORw0KGgo=",
        "javascript:alert(1)",
    ],
)
def test_unsafe_url_is_refused_before_any_request(tmp_path: Path, url: str) -> None:
    """Plain http, other schemes and URLs with credentials are never fetched.

    The downloader is built as for an https:// API, so plain http:// to this machine (a
    door to local services) is refused too.
    """
    calls: list[int] = []

    def handler(request: httpx.Request) -> httpx.Response:
        calls.append(1)
        return png()

    with pytest.raises(DownloadError, match=r"^refusing to fetch "):
        run(fetch(handler, tmp_path / "a", url=url))
    assert calls == []


def test_redirect_to_plain_http_is_refused(tmp_path: Path) -> None:
    """A redirect may not downgrade to http:// on a non-loopback host."""

    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(302, headers={"Location": "http://cdn.example/a.png?sig=secret"})

    with pytest.raises(DownloadError) as caught:
        run(fetch(handler, tmp_path / "a"))
    assert str(caught.value) == (
        "refusing to fetch http://cdn.example/a.png: only https:// URLs "
        "(or http:// to a loopback host) are fetched"
    )


def test_a_redirect_to_a_local_service_is_refused(tmp_path: Path) -> None:
    """An https:// output that redirects to http://127.0.0.1 is refused before that request."""
    seen: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(str(request.url))
        return httpx.Response(302, headers={"Location": "http://127.0.0.1:2375/containers"})

    with pytest.raises(DownloadError) as caught:
        run(fetch(handler, tmp_path / "a"))
    assert seen == [URL]
    assert str(caught.value) == (
        "refusing to fetch http://127.0.0.1:2375/containers: the API is https://, so its"
        " outputs must be too; plain http:// to this machine is fetched only from an"
        " http:// API on this machine"
    )


def test_stale_part_file_is_discarded(tmp_path: Path) -> None:
    """A .part left by a crashed process is overwritten, never spliced in."""
    (tmp_path / "a.png.part").write_bytes(b"garbage from an earlier process" * 100)
    result = run(fetch(lambda r: png(), tmp_path / "a"))
    assert (result.path.read_bytes(), leftovers(tmp_path)) == (PAYLOAD, ["a.png"])


def test_crash_points_are_reached_in_order(tmp_path: Path) -> None:
    """The crash hook sees mid_download once, then after_rename once the file exists."""
    points: list[tuple[str, list[str]]] = []
    big = PAYLOAD * 20
    run(
        fetch(
            lambda r: png(big),
            tmp_path / "a",
            crash=lambda p: points.append((p, leftovers(tmp_path))),
        )
    )
    assert points == [("mid_download", ["a.png.part"]), ("after_rename_before_commit", ["a.png"])]


def test_crash_mid_download_leaves_only_a_part_file(tmp_path: Path) -> None:
    """Dying mid-download leaves a flushed .part and never the final name."""

    class Crash(Exception):
        pass

    def crash(point: str) -> None:
        if point == "mid_download":
            raise Crash

    with pytest.raises(Crash):
        run(fetch(lambda r: png(PAYLOAD * 20), tmp_path / "a", crash=crash))
    assert leftovers(tmp_path) == ["a.png.part"]
    assert (tmp_path / "a.png.part").stat().st_size > 0


def test_text_output_without_content_type_is_txt(tmp_path: Path) -> None:
    """A text output's URL is downloaded like any file, named .txt."""
    result = run(
        fetch(lambda r: httpx.Response(200, content=b"hello"), tmp_path / "t", output_type="text")
    )
    assert (result.path.name, result.path.read_bytes(), result.content_type) == (
        "t.txt",
        b"hello",
        None,
    )


def test_gives_up_on_persistent_429_within_policy(tmp_path: Path) -> None:
    """429s from an output host honour Retry-After and end as DownloadError."""
    sleeps: list[float] = []
    answer = httpx.Response(429, headers={"Retry-After": "2"})

    async def go() -> Downloaded:
        async def fake_sleep(seconds: float) -> None:
            sleeps.append(seconds)

        policy = RetryPolicy(max_attempts=3)
        async with Downloader(
            policy=policy, transport=httpx.MockTransport(lambda r: answer), sleep=fake_sleep
        ) as downloader:
            return await downloader.download(URL, dest_stem=tmp_path / "a", output_type="imageUrl")

    with pytest.raises(DownloadError, match="after 3 attempt"):
        run(go())
    assert sleeps == [2.0, 2.0]


class Seen:
    """What the real test server was asked."""

    def __init__(self) -> None:
        self.headers: list[dict[str, str]] = []


@pytest.fixture(scope="module")
def output_host() -> Iterator[tuple[str, Seen]]:
    """A real HTTP output host on 127.0.0.1, in a thread, for the duration of this module."""
    seen = Seen()

    async def file(request: Request) -> Response:
        seen.headers.append(dict(request.headers))
        return Response(PAYLOAD, media_type="video/mp4", headers={"ETag": '"real"'})

    async def hop(request: Request) -> RedirectResponse:
        seen.headers.append(dict(request.headers))
        return RedirectResponse("/file", status_code=302)

    async def cut(scope: Scope, receive: Receive, send: Send) -> None:
        headers = dict(Request(scope).headers)
        seen.headers.append(headers)
        start = (
            int(headers["range"].removeprefix("bytes=").rstrip("-")) if "range" in headers else 0
        )
        status = 206 if start else 200
        fields = [
            (b"content-type", b"image/webp"),
            (b"content-length", str(len(PAYLOAD) - start).encode()),
            (b"etag", b'"cut"'),
            (b"accept-ranges", b"bytes"),
        ]
        if start:
            fields.append(
                (b"content-range", f"bytes {start}-{len(PAYLOAD) - 1}/{len(PAYLOAD)}".encode())
            )
        await send({"type": "http.response.start", "status": status, "headers": fields})
        body = PAYLOAD[start:] if start else PAYLOAD[:3000]
        await send({"type": "http.response.body", "body": body, "more_body": not start})
        if not start:
            raise ConnectionAbortedError("cut the body short on purpose")

    app = Starlette(routes=[Route("/file", file), Route("/hop", hop), Mount("/cut", cut)])
    config = uvicorn.Config(
        app, host="127.0.0.1", port=0, log_level="critical", lifespan="off", ws="none"
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.01)
    port = server.servers[0].sockets[0].getsockname()[1]
    yield f"http://127.0.0.1:{port}", seen
    server.should_exit = True
    thread.join(timeout=10)


def test_real_host_gets_no_authorization_header(
    output_host: tuple[str, Seen], tmp_path: Path
) -> None:
    """Through a redirect on a real server, no request carries an Authorization header."""
    base, seen = output_host
    seen.headers.clear()

    async def go() -> Downloaded:
        async with Downloader(plain_http=True) as downloader:
            return await downloader.download(
                f"{base}/hop", dest_stem=tmp_path / "clip", output_type="videoUrl"
            )

    result = run(go())
    assert (result.path.name, result.sha256) == ("clip.mp4", PAYLOAD_SHA)
    assert len(seen.headers) == 2
    assert all("authorization" not in h for h in seen.headers)
    assert all(h["user-agent"].startswith("floraq/") for h in seen.headers)


def test_real_cut_body_is_resumed(output_host: tuple[str, Seen], tmp_path: Path) -> None:
    """A connection dropped mid-body on a real server is resumed with Range, then verified."""
    base, seen = output_host
    seen.headers.clear()

    async def go() -> Downloaded:
        async with Downloader(sleep=lambda s: asyncio.sleep(0), plain_http=True) as downloader:
            return await downloader.download(
                f"{base}/cut", dest_stem=tmp_path / "img", output_type="imageUrl"
            )

    result = run(go())
    assert (result.path.name, result.sha256) == ("img.webp", PAYLOAD_SHA)
    assert [h.get("range") for h in seen.headers] == [None, "bytes=3000-"]
    assert seen.headers[1]["if-range"] == '"cut"'
    assert leftovers(tmp_path) == ["img.webp"]


@pytest.mark.parametrize(
    ("err", "name"),
    [
        (errno.ENOSPC, "ENOSPC"),
        (errno.EROFS, "EROFS"),
        (errno.EACCES, "EACCES"),
        (errno.ENOTDIR, "ENOTDIR"),
    ],
)
def test_a_disk_that_refuses_the_write_is_a_disk_error_naming_the_path(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, err: int, name: str
) -> None:
    """No retry can fill a full disk: one DiskError (exit 7) with the path, no .part left.

    Raised by the final rename, as a full or read-only disk (which root cannot bypass)
    would raise it; EACCES and ENOTDIR take the same path.
    """

    def refuse(part: Path, final: Path) -> None:
        raise OSError(err, os.strerror(err), str(final))

    monkeypatch.setattr("floraq.downloads.commit", refuse)
    requests: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        requests.append(request)
        return png()

    with pytest.raises(DiskError) as raised:
        run(fetch(handler, tmp_path / "row1_out"))
    assert raised.value.exit_code == ExitCode.DISK
    assert str(raised.value) == (
        f"cannot write {tmp_path / 'row1_out.png'}: {os.strerror(err)} ({name});"
        " fix the disk, then run `floraq resume`"
    )
    assert len(requests) == 1  # not retried
    assert leftovers(tmp_path) == []
