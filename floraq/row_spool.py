"""Checked rows kept on disk between ``submit``'s one check and its queueing.

``submit`` checks every row before it takes the ledger's lock (so nothing is written if
a row is bad), and queues them after. Holding a million checked rows in memory would
cost hundreds of MB, and checking them again would cost the time of a second pass: this
spools them instead, a block at a time, to an anonymous temporary file, and reads them
back in the same order. About 300 bytes a row on disk (uncompressed: compressing cost
more CPU than the queue can spare), gone when the queue is done.
"""

from __future__ import annotations

import pickle
import tempfile
from collections.abc import Iterator
from types import TracebackType
from typing import IO, Any

from floraq.admission import Checked
from floraq.core.problems import Problem
from floraq.errors import DiskError, os_error_why
from floraq.ledger import NewJob
from floraq.local_inputs import LocalFile

SPOOL_CHUNK = 500  # rows per pickled block (more would add to the peak memory, not speed)


def _encoded(checked: Checked) -> tuple[Any, ...]:
    """A checked row as plain values (pickled fast and small, whatever the classes)."""
    job = checked.job
    inputs = job.inputs if type(job.inputs) is dict else dict(job.inputs)
    fields = (job.batch, job.technique, job.job_number, job.row_number, job.csv_line,
              job.location, job.row_key, inputs, job.inputs_digest, job.idempotency_key,
              job.estimated_cost)  # fmt: skip  # NewJob's fields, in order
    errors = [(p.location, p.message, p.severity) for p in checked.errors]
    files = [(i, f.path, f.sha256, f.size, f.content_type, f.pixels)
             for i, f in checked.files.items()]  # fmt: skip
    return fields, errors, files


def _decoded(values: tuple[Any, ...]) -> Checked:
    fields, errors, files = values
    return Checked(
        job=NewJob(*fields),
        errors=[Problem(*p) for p in errors] if errors else [],
        files={f[0]: LocalFile(*f[1:]) for f in files} if files else {},
    )


class RowSpool:
    """Checked rows appended in order, then read back once in the same order."""

    def __init__(self) -> None:
        # closed by close(): after the rows are read back, or on leaving the with block
        self._file: IO[bytes] | None = tempfile.TemporaryFile(prefix="floraq-rows-")  # noqa: SIM115
        self._pending: list[tuple[Any, ...]] = []
        self.count = 0

    def __enter__(self) -> RowSpool:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def add(self, checked: Checked) -> None:
        """Keep one checked row (its warnings are not kept: they were reported already)."""
        self._pending.append(_encoded(checked))
        self.count += 1
        if len(self._pending) >= SPOOL_CHUNK:
            self._flush()

    def _flush(self) -> None:
        if not self._pending or self._file is None:
            return
        block = pickle.dumps(self._pending, pickle.HIGHEST_PROTOCOL)
        try:
            self._file.write(len(block).to_bytes(8, "little"))
            self._file.write(block)
            self._file.flush()  # a full disk says so here, not at some later read
        except OSError as exc:
            raise DiskError.temp_space(os_error_why(exc)) from exc
        self._pending = []

    def rows(self) -> Iterator[Checked]:
        """Every row added, in order (read once: the spool is closed at the end)."""
        if self._file is None:
            raise ValueError("the spool was closed")
        self._flush()
        file = self._file
        file.seek(0)
        while size := int.from_bytes(file.read(8), "little"):
            block: list[tuple[Any, ...]] = pickle.loads(file.read(size))
            yield from map(_decoded, block)
        self.close()

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
