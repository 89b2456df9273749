"""Every wait is bounded: a server that trickles a byte at a time cannot hold floraq.

A real TCP server on 127.0.0.1 answers with headers, then one small chunk every 20 ms for
as long as the client listens. Per-read timeouts never fire against it; the API deadline and
the download stall rule must. Their limits are set small here (an injected knob), and
the assertions are about what floraq gives up with, not how fast the machine is.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from floraq.api import FloraClient
from floraq.downloads import Downloader
from floraq.errors import DownloadError, TransportError
from floraq.retry import RetryPolicy

NO_WAIT = RetryPolicy(max_attempts=2, base_delay=0.0, max_delay=0.0)


class SteppedClock:
    """A clock that moves ``step`` seconds each time it is read: time by count, not speed."""

    def __init__(self, step: float) -> None:
        self.now, self.step = 0.0, step

    def __call__(self) -> float:
        self.now += self.step
        return self.now


@contextlib.asynccontextmanager
async def trickling_server(
    content_type: bytes, *, chunk: bytes = b"{", chunks: int = 2000
) -> AsyncIterator[tuple[str, list[int]]]:
    """http://127.0.0.1:PORT promising ``len(chunk) * chunks`` bytes, one chunk per 20 ms."""
    connections: list[int] = []
    handlers: list[tuple[asyncio.Task[None], asyncio.StreamWriter]] = []

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        connections.append(1)
        task = asyncio.current_task()
        assert task is not None
        handlers.append((task, writer))
        await reader.readuntil(b"\r\n\r\n")
        length = str(len(chunk) * chunks).encode()
        writer.write(
            b"HTTP/1.1 200 OK\r\nContent-Type: " + content_type + b"\r\n"
            b"Content-Length: " + length + b"\r\n\r\n"
        )
        with contextlib.suppress(ConnectionError):
            for _ in range(chunks):
                writer.write(chunk)
                await writer.drain()
                await asyncio.sleep(0.02)
        writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}", connections
    finally:
        server.close()
        for task, writer in handlers:
            task.cancel()
            writer.close()
        await asyncio.gather(*(t for t, _ in handlers), return_exceptions=True)
        await server.wait_closed()


def test_an_api_answer_that_never_ends_is_given_up_by_its_deadline() -> None:
    """Each attempt is cut at the deadline; after the policy's attempts, a TransportError."""

    async def go() -> tuple[str, int]:
        async with trickling_server(b"application/json") as (base, connections):
            async with FloraClient(
                base_url=base + "/api/v1", api_key="k", policy=NO_WAIT, deadline=0.4
            ) as client:
                with pytest.raises(TransportError) as caught:
                    await client.get_technique("poster-maker")
            return str(caught.value), len(connections)

    message, attempts = asyncio.run(asyncio.wait_for(go(), 30))
    assert attempts == 2
    assert "no answer from 127.0.0.1 after 2 attempt(s)" in message
    assert "no complete answer within 0.4 s" in message


def test_a_trickling_download_is_cut_by_the_stall_rule(tmp_path: Path) -> None:
    """One byte per chunk, a second per chunk on floraq's clock: under 1 KB/s for 30 s.

    The default rule cuts the attempt; after the policy's attempts the download is given
    up as a stall, and no .part is left behind.
    """

    async def go() -> tuple[str, int]:
        async with (
            trickling_server(b"image/png") as (base, connections),
            Downloader(policy=NO_WAIT, plain_http=True, clock=SteppedClock(1.0)) as downloader,
        ):
            with pytest.raises(DownloadError) as caught:
                await downloader.download(
                    base + "/out.png", dest_stem=tmp_path / "out", output_type="imageUrl"
                )
            return str(caught.value), len(connections)

    message, attempts = asyncio.run(asyncio.wait_for(go(), 60))
    assert attempts == 2
    assert "after 2 attempt(s): the download stalled" in message
    assert "(under 1024 bytes/s for 30 s)" in message
    assert list(tmp_path.iterdir()) == []


def test_a_big_download_that_keeps_moving_is_never_a_stall(tmp_path: Path) -> None:
    """4 KB per chunk at a second per chunk is over the floor: 200 chunks, then the file."""

    async def go() -> str:
        async with (
            trickling_server(b"image/png", chunk=b"x" * 4096, chunks=200) as (base, _),
            Downloader(policy=NO_WAIT, plain_http=True, clock=SteppedClock(1.0)) as downloader,
        ):
            got = await downloader.download(
                base + "/out.png", dest_stem=tmp_path / "out", output_type="imageUrl"
            )
            return got.sha256

    expected = hashlib.sha256(b"x" * 4096 * 200).hexdigest()
    assert asyncio.run(asyncio.wait_for(go(), 60)) == expected
    assert [p.name for p in tmp_path.iterdir()] == ["out.png"]
