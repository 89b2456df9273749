"""Local files named by rows, checked on disk before anything is sent, and hashed.

``floraq.core.local_files`` decides (which values are files, what their first bytes
are, what an input takes); this module does the reading: stat, the first bytes, and a
streamed sha256, each file once per process however many rows name it.
"""

from __future__ import annotations

import errno
import hashlib
import os
import stat
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path, PurePath

from floraq.core.local_files import (
    HEAD_BYTES,
    file_problem,
    file_ref,
    image_pixels,
    is_local,
    local_path,
    sniff,
)
from floraq.core.manifest_values import Row
from floraq.core.problems import Problem
from floraq.core.technique import Technique
from floraq.remote_inputs import RemoteFiles, wanted
from floraq.url_safety import redact_url

HASH_CHUNK = 1024 * 1024


@dataclass(frozen=True, slots=True)
class LocalFile:
    """A file fit to upload: where it is, what it holds, and its content hash."""

    path: str
    sha256: str
    size: int
    content_type: str  # sniffed from the bytes; "" when floraq knows none
    pixels: int | None = None  # an image's width x height, when its header says


@dataclass(frozen=True, slots=True)
class RowFiles:
    """A row's inputs with each local file replaced by its content reference."""

    values: dict[str, str]
    files: dict[str, LocalFile]  # input id -> the file it names
    problems: list[Problem]
    fetched: frozenset[str] = frozenset()  # inputs whose URL was downloaded (upload_remote)


class LocalFiles:
    """Files checked and hashed once per (path, size, mtime); what was seen, for plan."""

    def __init__(self, remote: RemoteFiles | None = None) -> None:
        self.remote = remote  # with upload_remote: URLs FLORA will not fetch
        self._seen: dict[tuple[str, int, int], LocalFile | str] = {}
        self.files: dict[str, LocalFile] = {}  # sha256 -> one file holding it

    def row(
        self, values: Mapping[str, str], technique: Technique, base: PurePath, where: str
    ) -> RowFiles:
        """Check every local file of one row; ``where`` is the row's location."""
        out, files, problems, fetched = dict(values), {}, [], set()
        for slot in technique.inputs:
            value = values.get(slot.id)
            if not slot.is_media or not isinstance(value, str) or not value.strip():
                continue
            if is_local(value):
                found = self.check(value, base, slot.type)
            elif self.remote is not None and wanted(value):
                fetched.add(slot.id)
                found = self._remote(value, slot.type)
            else:
                continue
            if isinstance(found, str):
                problems.append(Problem(f"{where}, field '{slot.id}'", found))
                continue
            out[slot.id] = file_ref(found.sha256)
            files[slot.id] = found
        return RowFiles(values=out, files=files, problems=problems, fetched=frozenset(fetched))

    def _remote(self, url: str, slot_type: str) -> LocalFile | str:
        """A URL FLORA will not fetch, downloaded and checked like a local file."""
        assert self.remote is not None
        shown = f"{redact_url(url)} (upload_remote)"
        path = self.remote.fetch(url)
        if isinstance(path, str):
            return f"{shown} {path}"
        found = self.check(str(path), PurePath("/"), slot_type)
        if isinstance(found, str):
            return f"{shown}: {found}"
        return found

    def row_files(self, row: Row, technique: Technique, base: PurePath) -> RowFiles:
        return self.row(row.values, technique, base, row.location)

    def check(self, value: str, base: PurePath, slot_type: str) -> LocalFile | str:
        """The file a value names, fit for ``slot_type``; or one line saying why not."""
        path = local_path(value, base)
        if isinstance(path, str):
            return path
        shown = f"file {value!r}"
        try:
            info = os.stat(path)
        except OSError as e:
            return f"{shown} {_stat_problem(e, Path(path))}"
        if stat.S_ISDIR(info.st_mode):
            return f"{shown} is a folder, not a file ({path})"
        if not stat.S_ISREG(info.st_mode):
            return f"{shown} is not a regular file ({path}); give a file"
        cache = (str(path), info.st_size, info.st_mtime_ns)
        found = self._seen.get(cache)
        if found is None:
            found = self._seen[cache] = self._read(Path(path), info.st_size)
        if isinstance(found, str):
            return f"{shown} {found}"
        why = file_problem(found.content_type or None, found.size, found.pixels, slot_type)
        if why is not None:
            return f"{shown} {why} ({path})"
        self.files.setdefault(found.sha256, found)
        return found

    def _read(self, path: Path, size: int) -> LocalFile | str:
        """Sniff and hash the file in one streamed pass."""
        digest = hashlib.sha256()
        try:
            with path.open("rb") as f:
                head = f.read(HEAD_BYTES)
                digest.update(head)
                while chunk := f.read(HASH_CHUNK):
                    digest.update(chunk)
        except OSError as e:
            if e.errno in (errno.EACCES, errno.EPERM):
                return f"cannot be read (permission denied): {path}; make it readable"
            return f"cannot be read ({e.strerror or e}): {path}"
        content_type = sniff(head) or ""
        return LocalFile(
            path=str(path),
            sha256=digest.hexdigest(),
            size=size,
            content_type=content_type,
            pixels=image_pixels(head, content_type),
        )

    @property
    def total_bytes(self) -> int:
        return sum(f.size for f in self.files.values())


def _stat_problem(e: OSError, path: Path) -> str:
    if e.errno == errno.ENOENT:
        return f"does not exist (looked for {path})"
    if e.errno in (errno.EACCES, errno.EPERM):
        return f"cannot be reached (permission denied): {path}"
    return f"cannot be read ({e.strerror or e}): {path}"


def row_base(folder: PurePath | None, csv_path: PurePath | None, from_csv: bool) -> PurePath:
    """Where a row's relative paths start: its CSV's folder, else the manifest's."""
    if from_csv and csv_path is not None:
        return csv_path.parent
    return folder or PurePath(os.getcwd())
