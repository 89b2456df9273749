"""A run and its fate: drawn from the seed when it is created, read off its timeline after.

A row gets the same plan every time (same seed, technique and idempotency key), so a
benchmark can compute the ideal schedule of a batch before sending it.
"""

from __future__ import annotations

import random
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from functools import lru_cache

from floraq.sandbox import media
from floraq.sandbox.config import Port, SandboxConfig, Technique

Inputs = tuple[tuple[str, str, str], ...]  # (id, type, value) in request order

FAILURES: dict[str, tuple[str, str]] = {
    "model_timeout": ("model_timeout", "The underlying model did not return in time."),
    "safety_blocked": ("safety_blocked", "The model refused the request on safety grounds."),
    "input_unreachable": ("input_unreachable", "A URL input could not be fetched."),
    "internal_error": ("internal_error", "Generic execution failure."),
    "GENERATION_TIMEOUT": ("GENERATION_TIMEOUT", "Generation did not finish in time."),
    "GENERATION_FAILED": ("GENERATION_FAILED", "Generation failed."),
    "GPU_PROVIDER_ERROR": ("GPU_PROVIDER_ERROR", "The GPU provider returned an error."),
    "PROVIDER_ERROR": ("PROVIDER_ERROR", "The provider failed to complete the generation."),
    "moderation": ("PROVIDER_ERROR", "Request refused by content moderation policy"),
}
"""Failure triggers (``[[fail:NAME]]`` or a random draw) and the code and message they give.

Docs and live taxonomies side by side; ``moderation`` hides a refusal under a provider code.
"""

FAIL_TRIGGER = re.compile(r"\[\[fail:([A-Za-z0-9_]+)\]\]")
ID_ALPHABET = "abcdefghijklmnopqrstuvwxyz0123456789"


class RunStatus(StrEnum):
    """A run's status as the API spells it (a ``str``, so it goes into JSON as is)."""

    PENDING = "pending"  # waiting for a free slot
    RUNNING = "running"
    COMPLETED = "completed"  # outputs served; charged
    FAILED = "failed"  # error code and message; refunded


@dataclass(frozen=True, slots=True)
class Run:
    """One run and its whole timeline; times are on the sandbox clock, in seconds."""

    run_id: str
    index: int
    technique: Technique
    inputs: Inputs
    idempotency_key: str | None
    api_key: str
    fingerprint: str
    created: float
    started: float
    ended: float
    created_ms: int
    failure: tuple[str, str] | None  # (error_code, error_message) if the run fails
    cost_micros: int
    token: str
    failure_charge_micros: int = 0  # what a failed run keeps of its cost (FLORA: nothing)

    @property
    def charged_micros(self) -> int:
        """What the run costs once it has ended: its cost, or a failure's charge."""
        return self.failure_charge_micros if self.failure else self.cost_micros

    def status(self, now: float) -> RunStatus:
        if now < self.started:
            return RunStatus.PENDING
        if now < self.ended:
            return RunStatus.RUNNING
        return RunStatus.FAILED if self.failure else RunStatus.COMPLETED

    def progress(self, now: float) -> int:
        if now < self.started:
            return 0
        if now >= self.ended:
            return 100
        return min(99, int(100 * (now - self.started) / (self.ended - self.started)))

    def epoch_ms(self, instant: float) -> int:
        return self.created_ms + round((instant - self.created) * 1000)


@dataclass(frozen=True, slots=True)
class Plan:
    """A run's fate as drawn from the seed: its length (scaled) and failure, if any."""

    duration: float
    failure: tuple[str, str] | None


def plan_run(
    config: SandboxConfig, technique: Technique, inputs: Inputs, key: str | None, index: int
) -> Plan:
    """The run's duration (seconds, scaled) and failure; same seed, slug and key, same plan."""
    rng = random.Random(f"{config.seed}|{technique.slug}|{key if key else f'#{index}'}")
    lo, hi = config.duration or technique.duration
    length = rng.uniform(lo, hi) * config.time_scale
    fails, pick, fail_at = rng.random(), rng.random(), rng.uniform(0.3, 1.0)
    for _, _, value in inputs:
        match = FAIL_TRIGGER.search(value)
        if match:
            name = match.group(1)
            failure = FAILURES.get(name, (name, f"Injected failure: {name}"))
            return Plan(length * fail_at, failure)
    if fails < config.failure_rate:
        name = sorted(FAILURES)[int(pick * len(FAILURES))]
        return Plan(length * fail_at, FAILURES[name])
    return Plan(length, None)


def new_run_id(config: SandboxConfig, epoch: int, index: int, taken: Mapping[str, object]) -> str:
    """A seeded run id in the configured style, not in ``taken``; ``epoch`` counts resets."""
    attempt = 0
    while True:
        rng = random.Random(f"{config.seed}|run-id|{epoch}|{index}|{attempt}")
        body = "".join(rng.choice(ID_ALPHABET) for _ in range(20))
        run_id = "run_" + body if config.run_id_style == "prefixed" else "j57" + body[:17]
        if run_id not in taken:
            return run_id
        attempt += 1


def render(run: Run, port: Port) -> media.MediaFile:
    """The exact bytes of one output (cached: a poll and a download render it once)."""
    return _render_cached(port.type, media.output_seed(run.technique.slug, run.inputs, port.id))


@lru_cache(maxsize=2048)
def _render_cached(output_type: str, seed: bytes) -> media.MediaFile:
    return media.render(output_type, seed)


def normalize_inputs(raw: Sequence[Mapping[str, str]]) -> Inputs:
    """The validated ``inputs`` array as (id, type, value) tuples."""
    return tuple((item["id"], item["type"], item["value"]) for item in raw)
