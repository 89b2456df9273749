"""Runs, idempotency keys, the balance and the counters, driven by an injected clock.

Nothing here speaks HTTP or reads a real clock. A run's whole timeline is fixed when
it is created: its duration and fate come from the seed (and its idempotency key, so
a row gets the same run every time), and its start from a FIFO over ``capacity``
slots. A poll only reads that timeline at ``clock()``; ``settle`` refunds failed runs.
Money is kept in integer micro-dollars so balances never drift.
"""

from __future__ import annotations

import hashlib
import heapq
import json
import random
import re
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import Enum
from functools import lru_cache
from typing import Any

from floraq.errors import UsageError
from floraq.sandbox import media
from floraq.sandbox.config import Catalog, Port, SandboxConfig, Technique, load_catalog

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
MICROS = 1_000_000


class Fault(Enum):
    """What the front door does to one API request instead of (or after) answering it."""

    NONE = "none"
    DROP = "drop"  # close the connection before anything happens
    DROP_AFTER = "drop_after"  # create the run, then close without answering
    RATE_LIMITED = "429"
    UNKNOWN_ERROR = "500"
    UNAVAILABLE = "503"


@dataclass(frozen=True, slots=True)
class Run:
    """One run and its whole timeline; times are on the monotonic clock, in seconds."""

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

    def status(self, now: float) -> str:
        if now < self.started:
            return "pending"
        if now < self.ended:
            return "running"
        return "failed" if self.failure else "completed"

    def progress(self, now: float) -> int:
        if now < self.started:
            return 0
        if now >= self.ended:
            return 100
        return min(99, int(100 * (now - self.started) / (self.ended - self.started)))

    def epoch_ms(self, instant: float) -> int:
        return self.created_ms + round((instant - self.created) * 1000)


@dataclass(slots=True)
class Counters:
    """What ``/_sandbox/stats`` reports; reset with the runs."""

    requests: Counter[str] = field(default_factory=Counter)
    runs_created: int = 0
    idempotent_replays: int = 0
    idempotency_rejections: int = 0
    downloads: int = 0
    media_requests: int = 0
    media_auth_rejections: int = 0
    faults: Counter[str] = field(default_factory=Counter)


@dataclass(frozen=True, slots=True)
class Plan:
    """A run's fate as drawn from the seed: unscaled length and failure, if any."""

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


def ideal_makespan(durations: Iterable[float], capacity: int) -> float:
    """How long runs of these durations take on ``capacity`` slots if all are sent at once."""
    slots = [0.0] * capacity
    for duration in durations:
        heapq.heappush(slots, heapq.heappop(slots) + duration)
    return max(slots)


class SandboxState:
    """Everything the sandbox remembers; owned by the server's event loop thread."""

    def __init__(
        self,
        config: SandboxConfig,
        *,
        clock: Callable[[], float],
        wall: Callable[[], float],
        media_base_url: str = "",
    ) -> None:
        self.initial_config = config
        self.config = config
        self.catalog: Catalog = load_catalog(config.catalog)
        self.media_base_url = media_base_url
        self._clock = clock
        self._wall = wall
        self._epoch = 0
        self._secret = hashlib.sha256(f"floraq-sandbox-media|{config.seed}".encode()).digest()
        self.reset()

    def reset(self) -> None:
        """Forget runs, keys and counters; restore the balance; restart the fault streams."""
        self._epoch += 1
        self.runs: dict[str, Run] = {}
        self._by_token: dict[str, str] = {}
        self._keys: dict[tuple[str, str], tuple[str, float]] = {}
        self._slots = [0.0] * self.config.capacity
        self._unsettled: list[tuple[float, str]] = []
        self.balance_micros = _micros(self.config.balance)
        self.charged_micros = 0
        self.counters = Counters()
        self._seed_streams()

    def _seed_streams(self) -> None:
        self._fault_rng = random.Random(f"{self.config.seed}|faults")
        self._media_rng = random.Random(f"{self.config.seed}|media")

    def configure(self, changes: Mapping[str, object]) -> SandboxConfig:
        """Apply knob changes at once; ValueError (with every problem) leaves all unchanged."""
        config = self.config.replace(changes)
        catalog = self.catalog
        if "catalog" in changes:
            try:
                catalog = load_catalog(config.catalog)
            except UsageError as exc:
                raise ValueError(f"catalog: {exc}") from exc
        self.config, self.catalog = config, catalog
        if "balance" in changes:
            self.balance_micros = _micros(config.balance)
        if "capacity" in changes:
            self._resize_slots(config.capacity)
        if "seed" in changes:
            self._seed_streams()
        return config

    def restore_config(self) -> None:
        """Go back to the knobs the server started with (``reset`` then restores the balance)."""
        self.config = self.initial_config
        self.catalog = load_catalog(self.config.catalog)

    def _resize_slots(self, capacity: int) -> None:
        busy = sorted(self._slots, reverse=True)[:capacity]
        self._slots = busy + [0.0] * (capacity - len(busy))
        heapq.heapify(self._slots)

    def now(self) -> float:
        return self._clock()

    def wall_ms(self) -> int:
        return int(self._wall() * 1000)

    def find_idempotent(self, api_key: str, key: str) -> Run | None:
        """The run an earlier request with this key made, if the key is still remembered."""
        entry = self._keys.get((api_key, key))
        if entry is None:
            return None
        run_id, recorded = entry
        if self.now() - recorded >= self.config.idempotency_window:
            del self._keys[(api_key, key)]
            return None
        return self.runs.get(run_id)

    def can_afford(self, technique: Technique) -> bool:
        self.settle()
        return self.balance_micros >= _micros(technique.run_cost)

    def create_run(
        self,
        technique: Technique,
        inputs: Inputs,
        *,
        key: str | None,
        api_key: str,
        fingerprint: str,
    ) -> Run:
        """Create, schedule and bill a run (the caller checked credits), and remember its key."""
        now = self.now()
        index = self.counters.runs_created
        plan = plan_run(self.config, technique, inputs, key, index)
        free_at = heapq.heappop(self._slots)
        started = max(now, free_at)
        ended = started + plan.duration
        heapq.heappush(self._slots, ended)
        run_id = self._new_run_id(index)
        token = hashlib.sha256(self._secret + run_id.encode()).hexdigest()[:24]
        cost = _micros(technique.run_cost)
        run = Run(
            run_id=run_id,
            index=index,
            technique=technique,
            inputs=inputs,
            idempotency_key=key,
            api_key=api_key,
            fingerprint=fingerprint,
            created=now,
            started=started,
            ended=ended,
            created_ms=self.wall_ms(),
            failure=plan.failure,
            cost_micros=cost,
            token=token,
        )
        self.runs[run_id] = run
        self._by_token[token] = run_id
        if key:
            self._keys[(api_key, key)] = (run_id, now)
        if plan.failure:
            heapq.heappush(self._unsettled, (ended, run_id))
        self.balance_micros -= cost
        self.charged_micros += cost
        self.counters.runs_created += 1
        return run

    def _new_run_id(self, index: int) -> str:
        attempt = 0
        while True:
            rng = random.Random(f"{self.config.seed}|run-id|{self._epoch}|{index}|{attempt}")
            body = "".join(rng.choice(ID_ALPHABET) for _ in range(20))
            run_id = "run_" + body if self.config.run_id_style == "prefixed" else "j57" + body[:17]
            if run_id not in self.runs:
                return run_id
            attempt += 1

    def settle(self) -> None:
        """Refund every run that has failed by now (FLORA charges completed runs only)."""
        now = self.now()
        while self._unsettled and self._unsettled[0][0] <= now:
            _, run_id = heapq.heappop(self._unsettled)
            cost = self.runs[run_id].cost_micros
            self.balance_micros += cost
            self.charged_micros -= cost

    def view(self, run: Run, *, poll_url: str | None) -> dict[str, Any]:
        """The run as ``GET /techniques/{slug}/runs/{run_id}`` shows it now."""
        now = self.now()
        status = run.status(now)
        out: dict[str, Any] = {
            "run_id": run.run_id,
            "status": status,
            "progress": run.progress(now),
            "created_at": run.created_ms,
        }
        if status != "pending":
            out["started_at"] = run.epoch_ms(run.started)
        if status == "completed":
            out["completed_at"] = run.epoch_ms(run.ended)
            if now - run.ended >= self.config.charged_cost_delay:
                out["charged_cost"] = run.cost_micros / MICROS
            out["outputs"] = [
                {"output_id": port.id, "type": port.type, "url": self.output_url(run, port)}
                for port in run.technique.outputs
            ]
        elif status == "failed" and run.failure:
            out["completed_at"] = run.epoch_ms(run.ended)
            out["charged_cost"] = 0
            out["error_code"], out["error_message"] = run.failure
        if poll_url and not self.config.omit_poll_url:
            out["poll_url"] = poll_url
        return out

    def output_url(self, run: Run, port: Port) -> str:
        """A fresh signed URL for one output, valid for ``url_ttl`` real seconds."""
        path = f"/media/{run.token}/{port.id}.{_render(run, port).extension}"
        expires = self.wall_ms() + round(self.config.url_ttl * 1000)
        signature = media.sign(self._secret, path, expires)
        return f"{self.media_base_url}{path}?exp={expires}&sig={signature}"

    def check_signature(self, path: str, expires: int, signature: str) -> bool:
        return media.verify(self._secret, path, expires, signature)

    def media_file(self, token: str, name: str) -> media.MediaFile | None:
        """The file at ``/media/{token}/{name}``, if its run has completed."""
        run = self.runs.get(self._by_token.get(token, ""))
        if run is None or run.status(self.now()) != "completed":
            return None
        output_id, _, extension = name.rpartition(".")
        for port in run.technique.outputs:
            if port.id == output_id:
                file = _render(run, port)
                return file if file.extension == extension else None
        return None

    def draw_api_fault(self, *, creates_run: bool) -> Fault:
        """Decide one API request's fault from the seeded stream, and count it."""
        rng, config = self._fault_rng, self.config
        drop, after, limited, failed, kind = (rng.random() for _ in range(5))
        fault = Fault.NONE
        if drop < config.drop_rate:
            fault = Fault.DROP_AFTER if creates_run and after < 0.5 else Fault.DROP
            self.counters.faults["drop"] += 1
        elif limited < config.rate_429:
            fault = Fault.RATE_LIMITED
            self.counters.faults["429"] += 1
        elif failed < config.error_5xx_rate:
            fault = Fault.UNKNOWN_ERROR if kind < 0.5 else Fault.UNAVAILABLE
            self.counters.faults["5xx"] += 1
        return fault

    def draw_truncation(self) -> float | None:
        """The fraction of a media body to send before hanging up, or None to send it all."""
        cut, fraction = self._media_rng.random(), self._media_rng.uniform(0.1, 0.9)
        if cut < self.config.truncate_rate:
            self.counters.faults["truncate"] += 1
            return fraction
        return None

    def stats(self) -> dict[str, Any]:
        """The counters as ``GET /_sandbox/stats`` returns them."""
        self.settle()
        c = self.counters
        runs = list(self.runs.values())
        first = min((r.created for r in runs), default=0.0)
        last = max((r.ended for r in runs), default=0.0)
        durations = [r.ended - r.started for r in runs]
        return {
            "requests": dict(sorted(c.requests.items())),
            "runs_created": c.runs_created,
            "idempotent_replays": c.idempotent_replays,
            "idempotency_rejections": c.idempotency_rejections,
            "charged_total": self.charged_micros / MICROS,
            "balance": self.balance_micros / MICROS,
            "downloads": c.downloads,
            "media_requests": c.media_requests,
            "media_auth_rejections": c.media_auth_rejections,
            "faults": {name: c.faults[name] for name in ("5xx", "429", "drop", "truncate")},
            "schedule": {
                "capacity": self.config.capacity,
                "ideal_makespan": ideal_makespan(durations, self.config.capacity) if runs else 0.0,
                "actual_makespan": last - first if runs else 0.0,
            },
        }

    def report(self) -> list[dict[str, Any]]:
        """Every run with the exact output bytes' sha256, as ``GET /_sandbox/runs`` returns."""
        now = self.now()
        return [self._report_one(run, now) for run in self.runs.values()]

    def _report_one(self, run: Run, now: float) -> dict[str, Any]:
        status = run.status(now)
        done = status in ("completed", "failed")
        charged = None
        if done:
            charged = 0.0 if run.failure else run.cost_micros / MICROS
        outputs = []
        if status == "completed":
            for port in run.technique.outputs:
                file = _render(run, port)
                outputs.append(
                    {
                        "output_id": port.id,
                        "type": port.type,
                        "content_type": file.content_type,
                        "sha256": file.sha256,
                        "bytes": len(file.body),
                    }
                )
        return {
            "run_id": run.run_id,
            "slug": run.technique.slug,
            "idempotency_key": run.idempotency_key,
            "inputs": [{"id": i, "type": t, "value": v} for i, t, v in run.inputs],
            "status": status,
            "charged_cost": charged,
            "created_at": run.created_ms,
            "completed_at": run.epoch_ms(run.ended) if done else None,
            "error_code": run.failure[0] if done and run.failure else None,
            "outputs": outputs,
        }


def _render(run: Run, port: Port) -> media.MediaFile:
    return _render_cached(port.type, media.output_seed(run.technique.slug, run.inputs, port.id))


@lru_cache(maxsize=2048)
def _render_cached(output_type: str, seed: bytes) -> media.MediaFile:
    return media.render(output_type, seed)


def _micros(usd: float) -> int:
    return round(usd * MICROS)


def fingerprint(slug: str, body: Mapping[str, Any]) -> str:
    """What two requests with one idempotency key must share to be the same request."""
    rest = {k: v for k, v in body.items() if k != "idempotency_key"}
    canonical = json.dumps([slug, rest], sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


def normalize_inputs(raw: Sequence[Mapping[str, str]]) -> Inputs:
    """The validated ``inputs`` array as (id, type, value) tuples."""
    return tuple((item["id"], item["type"], item["value"]) for item in raw)
