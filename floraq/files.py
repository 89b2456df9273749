"""Whole text files written so that a reader never sees half of one (exports, reports)."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path
from typing import IO

from floraq.errors import UsageError


@contextlib.contextmanager
def atomic_text(path: Path) -> Iterator[IO[str]]:
    """A text file written beside ``path`` and renamed over it once complete.

    A folder or file that cannot be created is a UsageError naming ``path``; an error
    while writing removes the partial file and leaves any earlier ``path`` as it was.
    """
    part = path.with_name(path.name + ".part")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        f = part.open("w", encoding="utf-8", newline="")
    except OSError as e:
        raise UsageError(f"cannot write {path}: {e.strerror}") from None
    try:
        with f:
            yield f
        os.replace(part, path)
    except BaseException:
        part.unlink(missing_ok=True)
        raise
