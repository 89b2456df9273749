"""Step ``0011_lean_rows``: the tables and columns lean rows need, for both backends.

What each lean column means is ``floraq.ledger.lean_rows``. Rows written before this step
keep their whole values (the reads take a whole value as it is); only their output paths
are made relative to the batch's ``output_dir`` here, in SQL both databases run.
"""

from __future__ import annotations

# Where an output's batch keeps its files (``outputs`` being the row updated).
_DIR = (
    "(SELECT b.output_dir FROM jobs j JOIN batches b ON b.name = j.batch"
    " WHERE j.id = outputs.job_id)"
)

# Old rows' paths under their batch's output_dir, made relative (as ``lean_rows.stored_path`` does).
RELATIVE_PATHS = (
    f"UPDATE outputs SET path = substr(path, length({_DIR}) + 2)"
    f" WHERE path IS NOT NULL AND {_DIR} LIKE '/%'"
    f" AND length(path) > length({_DIR}) + 1"
    f" AND substr(path, 1, length({_DIR}) + 1) = {_DIR} || '/'"
    f" AND substr(path, length({_DIR}) + 2, 1) != '*'"
)


# Frozen with this step: the state whose rows (most of a finished batch) the batch-and-state
# index leaves out. Queries for other states say so (``lean_rows.in_states``) to use it.
UNINDEXED_STATE = "downloaded"


def statements(*, identity: str) -> tuple[str, ...]:
    """The step's statements; ``identity`` is how the database spells a generated id."""
    return (
        # A job's location stem and CSV name, once per batch and job number.
        "CREATE TABLE job_sources (batch TEXT NOT NULL, job_number INTEGER NOT NULL,"
        " stem TEXT NOT NULL, csv TEXT, PRIMARY KEY (batch, job_number))",
        # The API bases poll URLs were answered on; jobs.poll_base names one.
        f"CREATE TABLE poll_bases (id {identity}, base TEXT NOT NULL UNIQUE)",
        "ALTER TABLE jobs ADD COLUMN poll_base INTEGER",
        # The first API key fingerprint a row of the batch was claimed under.
        "ALTER TABLE batches ADD COLUMN key_fingerprint TEXT",
        # Only leased rows (PostgreSQL's workers) need the index: SQLite's are all NULL.
        "DROP INDEX IF EXISTS jobs_lease_owner",
        "CREATE INDEX jobs_lease_owner ON jobs (lease_owner) WHERE lease_owner IS NOT NULL",
        "DROP INDEX IF EXISTS jobs_batch_state",
        f"CREATE INDEX jobs_batch_state ON jobs (batch, state) WHERE state != '{UNINDEXED_STATE}'",
        RELATIVE_PATHS,
    )
