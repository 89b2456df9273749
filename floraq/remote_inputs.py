"""``upload_remote``: an https:// input on a host FLORA does not list, fetched to upload it.

FLORA fetches inputs from its own media, Google Cloud Storage, Amazon S3 and ImageKit;
for any other host floraq only warns. With ``upload_remote`` it downloads the file
instead (no Authorization header: a third party), into a folder beside the ledger named
by the content's sha256, and the row then takes it like a local file: uploaded once per
content, its key covering the bytes. One download per URL per process.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import uuid
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import httpx

from floraq.api import USER_AGENT
from floraq.core.local_files import MAX_FILE_BYTES
from floraq.core.validation import is_supported_host
from floraq.url_safety import redact_url

MAX_REDIRECTS = 5
TIMEOUT = 60.0
CHUNK = 1024 * 1024


def wanted(value: str) -> bool:
    """An https:// URL on a host FLORA does not document: one ``upload_remote`` fetches."""
    try:
        parts = urlsplit(value)
        host = parts.hostname or ""
    except ValueError:
        return False
    credentials = parts.username is not None or parts.password is not None
    return (
        parts.scheme == "https" and bool(host) and not credentials and not is_supported_host(host)
    )


@dataclass(frozen=True, slots=True)
class _Fetched:
    sha256: str


class RemoteFiles:
    """Downloads into ``folder``; ``fetch`` gives the file's path, or one line saying why not."""

    def __init__(self, folder: Path, *, transport: httpx.BaseTransport | None = None) -> None:
        self.folder = folder
        self._transport = transport
        self._seen: dict[str, Path | str] = {}

    def fetch(self, url: str) -> Path | str:
        found = self._seen.get(url)
        if found is None:
            found = self._seen[url] = self._download(url)
        return found

    def _download(self, url: str) -> Path | str:
        shown = redact_url(url)
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            return f"cannot download {shown}: {self.folder} cannot be created ({e.strerror})"
        part = self.folder / f".part-{uuid.uuid4().hex}"
        try:
            with httpx.Client(
                transport=self._transport,
                timeout=TIMEOUT,
                follow_redirects=False,
                headers={"User-Agent": USER_AGENT},  # never an Authorization header
            ) as client:
                got = self._get(client, httpx.URL(url), part)
        except httpx.HTTPError as e:
            got = f"could not be downloaded ({type(e).__name__}): {shown}"
        except OSError as e:
            got = f"could not be saved to {self.folder} ({e.strerror})"
        if isinstance(got, str):
            with contextlib.suppress(OSError):
                part.unlink()
            return got
        final = self.folder / got.sha256
        os.replace(part, final)
        return final

    def _get(self, client: httpx.Client, url: httpx.URL, part: Path) -> _Fetched | str:
        """Stream the body into ``part``; its sha256, or why it could not be had."""
        for _ in range(MAX_REDIRECTS + 1):
            with client.stream("GET", url) as response:
                if response.is_redirect and response.next_request is not None:
                    url = response.next_request.url
                    if url.scheme != "https":
                        return f"redirects to a non-https URL: {redact_url(url)}"
                    continue
                if response.status_code != 200:
                    return (
                        f"could not be downloaded (HTTP {response.status_code}): {redact_url(url)}"
                    )
                digest, size = hashlib.sha256(), 0
                with part.open("wb") as f:
                    for chunk in response.iter_bytes(CHUNK):
                        size += len(chunk)
                        if size > MAX_FILE_BYTES:
                            return f"is over floraq's upload limit of {MAX_FILE_BYTES:,} bytes"
                        digest.update(chunk)
                        f.write(chunk)
                return _Fetched(digest.hexdigest())
        return f"redirects more than {MAX_REDIRECTS} times: {redact_url(url)}"
