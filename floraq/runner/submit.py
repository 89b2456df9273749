"""Submit one row: claim its intent, POST it, and apply what ``core.submission`` decides.

The claim reserves the quote against the batch's cap and commits the intent in one ledger
transaction, before anything is sent. What each POST answer means for the row's money and
state is decided by ``core.submission.decide``; ``apply`` is the one place an outcome
becomes runner flags and a ledger write.
"""

from __future__ import annotations

import asyncio
import functools
from dataclasses import dataclass, replace
from decimal import Decimal
from typing import Any

from floraq.api import RunInfo
from floraq.core.lifecycle import JobState
from floraq.core.money import ZERO
from floraq.core.submission import (
    MOVES,
    Action,
    Outcome,
    PostResult,
    Record,
    Situation,
    Tally,
    decide,
)
from floraq.core.technique import Technique
from floraq.core.validation import run_inputs
from floraq.errors import (
    ApiError,
    AuthError,
    IdempotencyDuplicate,
    InputRejected,
    InsufficientCredits,
    NotFound,
    NotSent,
    RateLimited,
    ServerError,
    TransportError,
)
from floraq.ledger import JobRecord
from floraq.runner.context import RunContext
from floraq.runner.gate import with_asset_urls
from floraq.runner.prices import MAX_REQUOTES, save_price


async def claim(ctx: RunContext, job: JobRecord) -> JobRecord | None:
    """Reserve the quote and commit the intent in one ledger transaction.

    None when this batch may not submit now (stopped, or the quote would pass its cap).
    """
    if ctx.submitting_stopped(job.batch):
        return None
    await check_price(ctx, job.technique)
    if ctx.submitting_stopped(job.batch):
        return None
    cost = ctx.run_cost(job)
    at = ctx.clock()
    op = functools.partial(
        ctx.ledger.claim,
        job.id,
        at=at,
        quote=cost,
        key_fingerprint=ctx.config.key_fingerprint,
        cap=ctx.batches[job.batch].max_cost,
    )
    try:
        claimed = await ctx.committer.commit(op)
    except asyncio.CancelledError:
        # The intent may land anyway (commits are shielded); nothing was sent: take it back.
        await ctx.committer.commit(functools.partial(_take_back, ctx, job.id))
        raise
    if not claimed:
        ctx.pause(job.batch, "budget")
        return None
    ctx.crash("after_intent_commit")
    return replace(
        job,
        state=JobState.SUBMITTING,
        submitting_at=at,
        estimated_cost=cost,
        key_fingerprint=ctx.config.key_fingerprint,
    )


async def check_price(ctx: RunContext, slug: str) -> None:
    """GET the technique again when its price is due a check (``runner.prices``).

    One task asks; the others wait for its answer. A technique that cannot be fetched now
    keeps its cached price until the next period.
    """
    prices = ctx.prices
    if not prices.due(slug):
        return
    async with prices.lock(slug):
        if not prices.due(slug):
            return
        ctx.report.price_checks += 1
        try:
            fresh = Technique.from_api(slug, await ctx.client.get_technique(slug))
        except (ApiError, TransportError, ValueError):
            prices.failed(slug)
            return
        recent = prices.checked(slug)
        old = ctx.techniques.get(slug)
        if old is not None and fresh.run_cost == old.run_cost:
            return
        ctx.techniques[slug] = fresh  # every claim from now on quotes the new price
        rise = old is None or fresh.run_cost > old.run_cost
        await ctx.committer.commit(
            functools.partial(save_price, ctx.ledger, fresh, recent, rise=rise)
        )


async def _requote(ctx: RunContext, job: JobRecord) -> JobRecord | None:
    """An intent claimed at a price that may have changed: its quote at today's price.

    Nothing was sent for it yet. None when the new quote would pass the cap: the batch
    pauses, and the caller withdraws the POST (the row goes back to ``queued``).
    """
    await check_price(ctx, job.technique)
    cost = ctx.run_cost(job)
    if cost == job.estimated_cost:
        return job
    cap = ctx.batches[job.batch].max_cost
    fits = await ctx.committer.commit(functools.partial(_quote_again, ctx, job, cost, cap))
    if not fits:
        ctx.pause(job.batch, "budget")
        return None
    return replace(job, estimated_cost=cost)


def _quote_again(ctx: RunContext, job: JobRecord, quote: Decimal, cap: Decimal | None) -> bool:
    """Swap the intent's quote for ``quote`` if the batch's cap still holds (one transaction)."""
    old = job.estimated_cost or ZERO
    if cap is not None and ctx.ledger.committed_cost(job.batch) - old + quote > cap:
        return False
    ctx.ledger.update(job.id, estimated_cost=quote)
    return True


def _take_back(ctx: RunContext, job_id: int) -> None:
    """Undo an intent nothing was sent for (if the claim landed): back to queued."""
    if ctx.ledger.job(job_id).state is JobState.SUBMITTING:
        ctx.ledger.move(job_id, JobState.SUBMITTING, JobState.QUEUED)


async def submit(
    ctx: RunContext, job: JobRecord, *, claimed: bool
) -> tuple[JobRecord, RunInfo] | None:
    """POST the run (same key on every retry); commit its id the moment it arrives.

    Returns the job as committed (``submitted``) and the create answer. This runs the
    checks and the POST, hands ``decide`` the facts and applies its outcome.

    ``claimed``: this process committed the intent and has sent nothing for it yet,
    so a POST withdrawn now can go back to ``queued`` without any risk.
    """
    inputs, invalid = _inputs(ctx, job)
    tally = Tally(doubt=not claimed)  # an earlier process's intent may have made a run
    requotes = 0
    while True:
        checks = Situation(
            result=PostResult.NONE_YET,
            claimed=claimed,
            tally=tally,
            key_changed=ctx.key_changed(job),
            invalid_row=invalid,
            window_passed=ctx.window_passed(job),
        )
        outcome, answer = decide(checks), _NO_ANSWER
        if outcome.action is Action.POST:
            quote_check = claimed and not tally.sent and requotes < MAX_REQUOTES
            answer = await _post(ctx, job, inputs, quote_check=quote_check)
            if answer.stale_quote:
                requotes += 1
                requoted = await _requote(ctx, job)
                if requoted is not None:
                    job = requoted
                    continue  # POST again at the current quote
            outcome = decide(answer.situation(checks, posting_stopped=ctx.posting_stopped()))
        done = await apply(ctx, job, outcome, answer)
        if outcome.reraise:
            assert answer.error is not None
            raise answer.error
        if outcome.action is not Action.RETRY:
            return done
        tally = outcome.tally
        await ctx.pause_round(tally.rounds)


def _inputs(ctx: RunContext, job: JobRecord) -> tuple[list[dict[str, str]], str | None]:
    """The run's inputs, or why a row re-queued by hand no longer fits its technique.

    A local file's content reference becomes its ready asset's URL (``gate.inputs_ready``
    saw to it before the claim); the key stays the content's.
    """
    technique = ctx.techniques[job.technique]
    values = with_asset_urls(ctx, job)
    if isinstance(values, str):
        return [], values
    try:
        return run_inputs(values, technique), None
    except ValueError as e:
        return [], str(e)


async def _post(
    ctx: RunContext, job: JobRecord, inputs: list[dict[str, str]], *, quote_check: bool
) -> _Answer:
    """One create_run call (the client retries inside it), classified, never raised.

    ``quote_check``: withdraw the POST (``stale_quote``) if, once it may leave, its price
    is due a check or has changed since the claim; the caller quotes it again.
    """
    left = False  # the first attempt was let go: a run may exist for this key
    stale = False

    def proceed() -> bool:
        nonlocal left, stale
        if ctx.posting_stopped():
            return False
        if quote_check and (
            ctx.prices.due(job.technique) or ctx.run_cost(job) != job.estimated_cost
        ):
            stale = True
            return False
        left = True
        # Noted as it leaves, not when it answers: a price check made while this POST is
        # in flight must re-quote it too (FLORA may charge it the new price).
        ctx.prices.posted(job.technique, job.id)
        return True

    ctx.report.posts += 1
    try:
        info = await ctx.client.create_run(
            job.technique,
            inputs=inputs,
            idempotency_key=job.idempotency_key,
            proceed=proceed,
            guard=None if ctx.lease is None else ctx.lease.may_send,
        )
    except _CLASSIFIED as e:
        if isinstance(e, NotSent):
            ctx.report.posts -= 1
        return replace(_Answer.of(e, left=left), stale_quote=stale)
    return _Answer(PostResult.ANSWERED, left=left, info=info)


async def apply(
    ctx: RunContext, job: JobRecord, outcome: Outcome, answer: _Answer
) -> tuple[JobRecord, RunInfo] | None:
    """The one place a submission outcome becomes runner flags, the quote and a ledger write.

    The quote needs no call of its own: the ledger releases it on the move out of
    ``submitting`` (``outcome.release_quote`` says that move is one that may).
    """
    error = answer.error
    if outcome.stop_everything:
        assert isinstance(error, AuthError)
        ctx.report.auth_error = ctx.report.auth_error or error
        ctx.stop_everything()  # before any await: no other POST may leave now
    if outcome.credits_ran_out:
        ctx.prices.doubt(job.technique)  # a 402: the price may have risen
        ctx.out_of_credits = True
        ctx.report.paused.add("insufficient_credits")
    if outcome.incomplete:
        ctx.report.incomplete += 1  # a kept intent: `resume` re-POSTs this key
    if outcome.action is Action.SUBMITTED:
        assert answer.info is not None
        return await _record_run(ctx, job, answer.info)
    new = MOVES.get(outcome.action)
    if outcome.record is Record.ANSWER_IN_FULL:
        assert isinstance(error, ApiError) and new is not None
        await ctx.fail(job, JobState.SUBMITTING, new, error, tier=outcome.tier)
        return None
    fields = _error_fields(outcome, error)
    if new is not None:
        await ctx.move(job, JobState.SUBMITTING, new, **fields)
    elif fields:
        await ctx.note(job, **fields)  # the state stays: the status shows the error
    return None


async def _record_run(ctx: RunContext, job: JobRecord, info: RunInfo) -> tuple[JobRecord, RunInfo]:
    """Commit the run id before anything else: a lost id cannot be looked up."""
    ctx.crash("after_post_before_commit")
    at = ctx.clock()
    await ctx.move(
        job,
        JobState.SUBMITTING,
        JobState.SUBMITTED,
        run_id=info.run_id,
        poll_url=info.poll_url,
        remote_status=info.status,
        progress=info.progress,
        remote_created_at=info.created_at,
        submitted_at=at,
        request_id=info.request_id,
        error_code=None,
        error_message=None,
        error_fields=None,
        failure_tier=None,
    )
    ctx.progress.advance(JobState.SUBMITTED)
    done = replace(
        job,
        state=JobState.SUBMITTED,
        run_id=info.run_id,
        poll_url=info.poll_url,
        submitted_at=at,
    )
    return done, info


@dataclass(frozen=True, slots=True)
class _Answer:
    """What one create_run call came to, as the facts ``core.submission.decide`` reads."""

    result: PostResult
    left: bool  # the first attempt was let go
    info: RunInfo | None = None
    error: BaseException | None = None
    unanswered: bool = False
    status: int = 0
    repeated: bool = False
    stale_quote: bool = False  # withdrawn unsent: its price is to be checked first

    @staticmethod
    def of(error: BaseException, *, left: bool) -> _Answer:
        result = next(r for kind, r in _RESULT_BY_ERROR if isinstance(error, kind))
        reply = error if isinstance(error, (ApiError, AuthError)) else None
        return _Answer(
            result,
            left=left,
            error=error,
            unanswered=reply is not None and bool(reply.unanswered),
            status=reply.status if reply is not None else 0,
            repeated=isinstance(error, ServerError) and bool(error.repeated),
        )

    def situation(self, checks: Situation, *, posting_stopped: bool) -> Situation:
        """The checks that let the POST go, with what it came to."""
        return replace(
            checks,
            result=self.result,
            left=self.left,
            unanswered=self.unanswered,
            status=self.status,
            repeated=self.repeated,
            posting_stopped=posting_stopped,
        )


_NO_ANSWER = _Answer(PostResult.NONE_YET, left=False)

# First match wins: subclasses before ApiError, whose other statuses (408, 413...) come last.
_RESULT_BY_ERROR: tuple[tuple[type[BaseException], PostResult], ...] = (
    (asyncio.CancelledError, PostResult.CANCELLED),
    (NotSent, PostResult.NOT_SENT),
    (IdempotencyDuplicate, PostResult.DUPLICATE),
    (InsufficientCredits, PostResult.INSUFFICIENT_CREDITS),
    (InputRejected, PostResult.INPUT_REJECTED),
    (NotFound, PostResult.NOT_FOUND),
    (AuthError, PostResult.AUTH_REFUSED),
    (ServerError, PostResult.SERVER_ERROR),
    (TransportError, PostResult.TRANSPORT_ERROR),
    (RateLimited, PostResult.RATE_LIMITED),
    (ApiError, PostResult.OTHER_STATUS),
)
_CLASSIFIED = tuple(kind for kind, _ in _RESULT_BY_ERROR)


def _error_fields(outcome: Outcome, error: BaseException | None) -> dict[str, Any]:
    """The error columns a move (or a note) writes, as the outcome's ``record`` says."""
    if outcome.record is Record.OWN:
        assert outcome.error_code is not None
        return {"error_code": outcome.error_code.value, "error_message": outcome.error_message}
    if outcome.record is Record.ANSWER:
        assert isinstance(error, (ApiError, AuthError))
        return {
            "error_code": error.code,
            "error_message": error.message,
            "request_id": error.request_id,
        }
    return {}
