"""What one create-run attempt means for a row's money and state, as a function of plain values.

The runner runs the pre-POST checks, sends the POST, classifies what came back into a
``Situation`` and applies the ``Outcome`` that ``decide`` returns; every rule about paying
twice lives here. The one idea behind them: only an answer to *every* attempt of an intent
this process claimed proves that no run exists. An intent from an earlier process, or an
attempt that went unanswered, leaves *doubt*: then no error answer may be read as "no run",
the quote stays committed and the row keeps its intent or becomes ``unknown_outcome``.

    what happened                      no doubt                      doubt (or unanswered)
    a check failed: key changed        unknown_outcome               unknown_outcome
    a check failed: row invalid        rejected, quote released      unknown_outcome
    a check failed: window passed      unknown_outcome               unknown_outcome
    answered with a run                submitted                     submitted
    cancelled / not sent               queued (claimed, none left)   keep the intent
    409/422 duplicate                  unknown_outcome               unknown_outcome
    402 insufficient credits           queued, credits ran out       keep (noted), credits ran out
    400 / 404                          rejected, quote released      unknown_outcome
    401/403                            queued, everything stops      keep, everything stops
    the same 500 for the 2nd round     failed (report), released     unknown_outcome
    other 5xx, 429, transport, 408     retry after a pause; keep the intent once the rounds
                                       are spent or posting stopped (transport/408: doubt)
    any other status (413, 415, ...)   failed (report), released     unknown_outcome
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from enum import Enum, StrEnum, auto

from floraq.core.failures import FailureTier
from floraq.core.lifecycle import JobState

JOB_ROUNDS = 3  # times a step is tried again after the client gave up on it
IDENTICAL_500_ROUNDS = 2  # rounds that end in the same repeated 500 before a row stops


class PostResult(Enum):
    """What the POST came to, as the runner classified it."""

    NONE_YET = auto()  # no POST yet: only the pre-POST checks decide
    ANSWERED = auto()  # FLORA answered with a run (or replayed the key's run)
    CANCELLED = auto()  # the task was cancelled while its POST waited or ran
    NOT_SENT = auto()  # withdrawn before its first attempt left (posting stopped)
    DUPLICATE = auto()  # 409 idempotency_duplicate / 422 idempotency_conflict
    INSUFFICIENT_CREDITS = auto()  # 402
    INPUT_REJECTED = auto()  # 400
    NOT_FOUND = auto()  # 404
    AUTH_REFUSED = auto()  # 401/403
    SERVER_ERROR = auto()  # 5xx after the client's retries
    TRANSPORT_ERROR = auto()  # no HTTP answer at all
    RATE_LIMITED = auto()  # 429 after the client's retries
    OTHER_STATUS = auto()  # an answer nobody documents for a POST (408, 413, 415, ...)


class Action(Enum):
    """What happens to the row next."""

    POST = auto()  # every check passed: send the POST (same key)
    SUBMITTED = auto()  # commit the run id
    RETRY = auto()  # POST again with the same key after a pause
    KEEP_INTENT = auto()  # stay `submitting`: the next `resume` re-POSTs this key
    UNKNOWN_OUTCOME = auto()  # a run may exist that we cannot see: never re-sent alone
    REJECTED = auto()  # no run: the input must change
    FAILED = auto()  # no run: show it to a person (tier `report`)
    QUEUED = auto()  # no run can exist: back to the queue, to send later


# The state each action moves the row to (from `submitting`); absent: the state is kept.
MOVES: Mapping[Action, JobState] = {
    Action.SUBMITTED: JobState.SUBMITTED,
    Action.UNKNOWN_OUTCOME: JobState.UNKNOWN_OUTCOME,
    Action.REJECTED: JobState.REJECTED,
    Action.FAILED: JobState.FAILED,
    Action.QUEUED: JobState.QUEUED,
}


class Record(Enum):
    """Which error the row records with its move (or, when it keeps its state, on its own)."""

    NOTHING = auto()  # no error fields: a withdrawn POST, or the run id itself
    OWN = auto()  # floraq's own code and message (``Outcome.error_code``/``error_message``)
    ANSWER = auto()  # the answer's code, message and request id
    ANSWER_IN_FULL = auto()  # ... plus its fields and ``Outcome.tier``; shown in the progress


class OwnCode(StrEnum):
    """Error codes floraq writes itself, when the reason is ours rather than FLORA's."""

    API_KEY_CHANGED = "api_key_changed"
    IDEMPOTENCY_WINDOW_PASSED = "idempotency_window_passed"
    INVALID_ROW = "invalid_row"


@dataclass(frozen=True, slots=True, kw_only=True)
class Tally:
    """What a row's earlier rounds in this process leave for the next decision."""

    doubt: bool = False  # a run may exist for this key (earlier intent, or an unanswered attempt)
    sent: bool = False  # an attempt may have left (so the POST can no longer be withdrawn)
    rounds: int = 0  # rounds that ended without a run
    repeated_500s: int = 0  # rounds that ended in the same 500 over and over


@dataclass(frozen=True, slots=True, kw_only=True)
class Situation:
    """Everything ``decide`` looks at: the checks, what the POST came to, and the tally."""

    result: PostResult
    claimed: bool  # this process committed the intent (and sent nothing before it)
    tally: Tally
    left: bool = False  # this POST let an attempt leave
    unanswered: bool = False  # the error says some attempt got no answer we could read
    status: int = 0  # the HTTP status of an error answer
    repeated: bool = False  # a 5xx the client gave up on because it came back identical
    posting_stopped: bool = False  # no POST may leave now (credentials refused, no credits)
    key_changed: bool = False  # the intent was committed under another API key
    invalid_row: str | None = None  # why the row no longer fits its technique
    window_passed: bool = False  # FLORA may have forgotten this intent's key


@dataclass(frozen=True, slots=True, kw_only=True)
class Outcome:
    """The one answer for a situation: the row's next step and what else it sets off."""

    action: Action
    tally: Tally
    release_quote: bool = False  # no run can exist: the quote no longer counts against the cap
    record: Record = Record.NOTHING
    tier: FailureTier | None = None
    error_code: OwnCode | None = None
    error_message: str | None = None
    incomplete: bool = False  # left for a later `resume`: the report counts it
    credits_ran_out: bool = False  # no new POST for any batch
    stop_everything: bool = False  # the key was refused: nothing more may be sent
    reraise: bool = False  # the error goes on up (the task was cancelled, or auth stops the loop)


def decide(s: Situation) -> Outcome:
    """The outcome of the pre-POST checks (``NONE_YET``) or of the POST's result."""
    tally = replace(s.tally, sent=s.tally.sent or s.left)
    checked = _checks(s, tally)
    if checked is not None:
        return checked
    return _BY_RESULT[s.result](s, tally)


def _checks(s: Situation, tally: Tally) -> Outcome | None:
    """A row that must not be POSTed at all, whatever the POST would answer."""
    if s.key_changed:
        return _own(
            Action.UNKNOWN_OUTCOME,
            tally,
            OwnCode.API_KEY_CHANGED,
            "this row's POST was sent with another API key, and FLORA keeps idempotency keys"
            " per API key: re-sending could pay twice. Check FLORA, then"
            " `floraq retry --unknown`",
        )
    if s.invalid_row is not None:
        if tally.doubt:  # an earlier process may have sent it under the old definition
            return _own(
                Action.UNKNOWN_OUTCOME,
                tally,
                OwnCode.INVALID_ROW,
                f"{s.invalid_row}; an earlier POST may have created a run: check FLORA,"
                " then `floraq retry --unknown`",
            )
        message = f"{s.invalid_row}; fix the row, then `floraq retry --rejected`"
        return replace(
            _own(Action.REJECTED, tally, OwnCode.INVALID_ROW, message), release_quote=True
        )
    if s.window_passed:  # the quote stays committed: a run may exist (the ledger counts it)
        return _own(
            Action.UNKNOWN_OUTCOME,
            tally,
            OwnCode.IDEMPOTENCY_WINDOW_PASSED,
            "the POST may have created a run, and its idempotency key has expired:"
            " re-sending could pay twice. Check FLORA, then `floraq retry --unknown`",
        )
    return None


def _own(action: Action, tally: Tally, code: OwnCode, message: str) -> Outcome:
    return Outcome(
        action=action, tally=tally, record=Record.OWN, error_code=code, error_message=message
    )


def _post(s: Situation, tally: Tally) -> Outcome:
    return Outcome(action=Action.POST, tally=tally)


def _answered(s: Situation, tally: Tally) -> Outcome:
    return Outcome(action=Action.SUBMITTED, tally=tally)


def _withdrawn(s: Situation, tally: Tally) -> Outcome:
    """Nothing left for a claimed intent: no run can exist. Else an earlier attempt may have."""
    cancelled = s.result is PostResult.CANCELLED
    if s.claimed and not tally.sent:
        return Outcome(action=Action.QUEUED, tally=tally, release_quote=True, reraise=cancelled)
    return Outcome(action=Action.KEEP_INTENT, tally=tally, reraise=cancelled)


def _duplicate(s: Situation, tally: Tally) -> Outcome:
    """A run exists that we cannot see; its quote stays committed."""
    return Outcome(action=Action.UNKNOWN_OUTCOME, tally=tally, record=Record.ANSWER_IN_FULL)


def _no_credits(s: Situation, tally: Tally) -> Outcome:
    """No new POST anywhere; a row that may have made its run keeps its intent (and time)."""
    if tally.doubt or s.unanswered:
        return Outcome(
            action=Action.KEEP_INTENT,
            tally=tally,
            record=Record.ANSWER,
            incomplete=True,
            credits_ran_out=True,
        )
    return Outcome(
        action=Action.QUEUED,
        tally=tally,
        release_quote=True,
        record=Record.ANSWER,
        credits_ran_out=True,
    )


def _input_refused(s: Situation, tally: Tally) -> Outcome:
    return _refused(s, tally, Action.REJECTED, None)


def _auth_refused(s: Situation, tally: Tally) -> Outcome:
    """Everything stops; only a refusal of every attempt of a fresh intent proves no run."""
    if tally.doubt or s.unanswered:
        return Outcome(action=Action.KEEP_INTENT, tally=tally, stop_everything=True, reraise=True)
    return Outcome(
        action=Action.QUEUED,
        tally=tally,
        release_quote=True,
        record=Record.ANSWER,
        stop_everything=True,
        reraise=True,
    )


def _server_error(s: Situation, tally: Tally) -> Outcome:
    """The same 500 over and over means this row is the problem (a malformed id)."""
    if s.status == 500 and s.repeated:
        tally = replace(tally, repeated_500s=tally.repeated_500s + 1)
        if tally.repeated_500s >= IDENTICAL_500_ROUNDS:
            return _refused(s, tally, Action.FAILED, FailureTier.REPORT)
    return _another_round(s, replace(tally, doubt=tally.doubt or s.unanswered))


def _transport_error(s: Situation, tally: Tally) -> Outcome:
    """No answer we can trust: a run may exist; only this key may ask again."""
    return _another_round(s, replace(tally, doubt=True))


def _rate_limited(s: Situation, tally: Tally) -> Outcome:
    return _another_round(s, replace(tally, doubt=tally.doubt or s.unanswered))


def _other_status(s: Situation, tally: Tally) -> Outcome:
    """A 408 is a timeout (a run may exist); anything else undocumented goes to a person."""
    if s.status != 408:
        return _refused(s, tally, Action.FAILED, FailureTier.REPORT)
    return _another_round(s, replace(tally, doubt=True))


def _refused(s: Situation, tally: Tally, action: Action, tier: FailureTier | None) -> Outcome:
    """``action`` when no attempt can have made a run, else unknown_outcome (quote kept)."""
    if tally.doubt or s.unanswered:
        return Outcome(action=Action.UNKNOWN_OUTCOME, tally=tally, record=Record.ANSWER_IN_FULL)
    return Outcome(
        action=action, tally=tally, release_quote=True, record=Record.ANSWER_IN_FULL, tier=tier
    )


def _another_round(s: Situation, tally: Tally) -> Outcome:
    """Try again after a pause, or, once the rounds are spent, leave it for `resume`."""
    tally = replace(tally, rounds=tally.rounds + 1)
    if tally.rounds > JOB_ROUNDS or s.posting_stopped:
        return Outcome(action=Action.KEEP_INTENT, tally=tally, incomplete=True)
    return Outcome(action=Action.RETRY, tally=tally)


_BY_RESULT: Mapping[PostResult, Callable[[Situation, Tally], Outcome]] = {
    PostResult.NONE_YET: _post,
    PostResult.ANSWERED: _answered,
    PostResult.CANCELLED: _withdrawn,
    PostResult.NOT_SENT: _withdrawn,
    PostResult.DUPLICATE: _duplicate,
    PostResult.INSUFFICIENT_CREDITS: _no_credits,
    PostResult.INPUT_REJECTED: _input_refused,
    PostResult.NOT_FOUND: _input_refused,
    PostResult.AUTH_REFUSED: _auth_refused,
    PostResult.SERVER_ERROR: _server_error,
    PostResult.TRANSPORT_ERROR: _transport_error,
    PostResult.RATE_LIMITED: _rate_limited,
    PostResult.OTHER_STATUS: _other_status,
}
