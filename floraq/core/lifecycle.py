"""Job states and the moves allowed between them.

A job is one manifest row's journey to files on disk. Every move is checked
against ``TRANSITIONS`` before the ledger records it, so an impossible history
(a job downloaded without a run, a run POSTed twice by itself) cannot be written.
"""

from __future__ import annotations

import itertools
from enum import StrEnum


class JobState(StrEnum):
    QUEUED = "queued"  # validated and waiting for its POST
    SUBMITTING = "submitting"  # intent committed; the POST may or may not have reached FLORA
    SUBMITTED = "submitted"  # FLORA answered with a run id; we poll it
    COMPLETED = "completed"  # the run completed; its outputs are not all on disk yet
    DOWNLOADED = "downloaded"  # every output is on disk and verified: done
    FAILED = "failed"  # the run failed, or the row gave up after repeated errors
    REJECTED = "rejected"  # invalid row, or FLORA refused its inputs: change the input
    UNKNOWN_OUTCOME = "unknown_outcome"  # a run may exist that we cannot see: never re-sent alone
    EXPIRED = "expired"  # the run completed but an output URL died before we fetched it
    # The run completed (and was charged) but an output cannot be fetched as served: a
    # redirect loop, a URL floraq refuses. Not expired: the URL lives, the host is wrong.
    DOWNLOAD_FAILED = "download_failed"
    REPLACED = "replaced"  # a rejected row since fixed in the manifest: the fixed row took over


TERMINAL: frozenset[JobState] = frozenset(
    {
        JobState.DOWNLOADED,
        JobState.FAILED,
        JobState.REJECTED,
        JobState.UNKNOWN_OUTCOME,
        JobState.EXPIRED,
        JobState.DOWNLOAD_FAILED,
        JobState.REPLACED,
    }
)

# States a later `resume` still has work for.
ACTIVE: frozenset[JobState] = frozenset(JobState) - TERMINAL

# Terminal states that count as "something needs a look" (exit code 1).
PROBLEM_STATES: frozenset[JobState] = TERMINAL - {JobState.DOWNLOADED, JobState.REPLACED}

# States whose quote counts against the cost cap until a charge replaces it: a run exists
# or may exist (the intent may have reached FLORA). Leaving them releases the quote.
QUOTE_COMMITTED: frozenset[JobState] = frozenset(
    {
        JobState.SUBMITTING,
        JobState.SUBMITTED,
        JobState.COMPLETED,
        JobState.DOWNLOADED,
        JobState.EXPIRED,
        JobState.DOWNLOAD_FAILED,
        JobState.UNKNOWN_OUTCOME,
    }
)

# A run that has finished on FLORA's side: its charge is settled, or owed and not yet seen.
RUN_FINISHED: frozenset[JobState] = frozenset(
    {JobState.COMPLETED, JobState.DOWNLOADED, JobState.EXPIRED, JobState.DOWNLOAD_FAILED}
)

# Between the intent and the outputs on disk: a resume picks these up first.
IN_FLIGHT: frozenset[JobState] = frozenset(
    {JobState.SUBMITTING, JobState.SUBMITTED, JobState.COMPLETED}
)


# The path nearly every row takes. While a job has only moved along it, its own columns
# (queued_at, submitting_at, submitted_at, completed_at, its outputs' downloaded_at) tell
# each move, so the ledger writes no event for them; see ``ledger.writes``.
USUAL_PATH: tuple[JobState, ...] = (
    JobState.QUEUED,
    JobState.SUBMITTING,
    JobState.SUBMITTED,
    JobState.COMPLETED,
    JobState.DOWNLOADED,
)
USUAL_MOVES: frozenset[tuple[JobState, JobState]] = frozenset(itertools.pairwise(USUAL_PATH))


class OutputState(StrEnum):
    """Where one output of a run is: listed by FLORA, on disk and verified, or its URL died."""

    PENDING = "pending"
    DOWNLOADED = "downloaded"
    EXPIRED = "expired"


TRANSITIONS: dict[JobState, frozenset[JobState]] = {
    JobState.QUEUED: frozenset({JobState.SUBMITTING, JobState.REJECTED}),
    JobState.SUBMITTING: frozenset(
        {
            JobState.SUBMITTED,  # the reply (or a replay) gave us the run id
            JobState.QUEUED,  # FLORA refused before creating a run (402): send later, same key
            JobState.REJECTED,  # 400/404: FLORA refused the inputs or the slug
            JobState.FAILED,  # repeated 5xx on this row: stop and report
            JobState.UNKNOWN_OUTCOME,  # 409/422, or the key window has passed
        }
    ),
    JobState.SUBMITTED: frozenset(
        {
            JobState.COMPLETED,
            JobState.FAILED,
            JobState.UNKNOWN_OUTCOME,  # FLORA's answers about the run made no sense for too long
        }
    ),
    JobState.COMPLETED: frozenset(
        {JobState.DOWNLOADED, JobState.EXPIRED, JobState.DOWNLOAD_FAILED}
    ),
    JobState.DOWNLOADED: frozenset({JobState.COMPLETED}),  # a file went missing: fetch again
    JobState.EXPIRED: frozenset({JobState.COMPLETED, JobState.QUEUED}),
    # Fetch again, the same run (the cause fixed): a new run would be paid for twice.
    JobState.DOWNLOAD_FAILED: frozenset({JobState.COMPLETED}),
    JobState.FAILED: frozenset({JobState.QUEUED}),  # a new attempt, with a new key
    JobState.REJECTED: frozenset(
        {
            JobState.QUEUED,  # a new attempt, with a new key
            JobState.REPLACED,  # the manifest's row at its place now has other inputs
        }
    ),
    JobState.UNKNOWN_OUTCOME: frozenset({JobState.QUEUED}),  # the operator decided: new key
    JobState.REPLACED: frozenset(),  # kept for its history; never sent
}


class IllegalTransition(ValueError):
    """A move the lifecycle does not allow; always a bug in floraq."""


def check_transition(current: JobState, new: JobState) -> None:
    """Raise IllegalTransition unless a job may move from ``current`` to ``new``."""
    if new not in TRANSITIONS[current]:
        allowed = ", ".join(sorted(TRANSITIONS[current])) or "nothing"
        raise IllegalTransition(
            f"a job in state {current} cannot move to {new} (allowed: {allowed})"
        )
