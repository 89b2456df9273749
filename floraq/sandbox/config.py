"""The sandbox's knobs and its technique catalog.

Every behaviour on which the FLORA sources disagree (see API-NOTES.md) is a field of
``SandboxConfig``, so a test can pin the sandbox to one reading and prove floraq copes
with it. Knobs change at run time through ``POST /_sandbox/config``, which arrives as
JSON; ``SandboxConfig.replace`` coerces JSON values to the field types.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any, Literal

import yaml

from floraq.errors import UsageError

DEFAULT_API_KEY = "sk_test_sandbox"
TECHNIQUE_TYPES = ("imageUrl", "videoUrl", "audioUrl", "documentUrl", "text")
OUTPUT_TYPES = ("imageUrl", "videoUrl", "audioUrl", "text")
RUN_INPUT_TYPES = ("text", "imageUrl", "videoUrl")

IdempotencyMode = Literal["replay", "suppress"]
RunIdStyle = Literal["prefixed", "opaque"]

_RATES = (
    "failure_rate",
    "failure_charge",
    "error_5xx_rate",
    "rate_429",
    "drop_rate",
    "truncate_rate",
    "asset_failure_rate",
    "upload_5xx_rate",
)
_NON_NEGATIVE = (
    "balance",
    "idempotency_window",
    "charged_cost_delay",
    "latency",
    "asset_ready_delay",
)


@dataclass(frozen=True, slots=True)
class SandboxConfig:
    """Every knob of the sandbox; the defaults behave like the vendor's page describes.

    Durations in the catalog (and ``duration``) are multiplied by ``time_scale``; every
    other time knob (``idempotency_window``, ``charged_cost_delay``, ``url_ttl``,
    ``latency``, ``retry_after``) is in seconds of the sandbox clock, which is the real
    clock unless ``frozen_clock`` stops it (then it moves only when told to, through
    ``SandboxServer.advance_clock`` or ``POST /_sandbox/clock``). Fault draws, run
    durations, failures and run ids all derive from ``seed``.
    """

    seed: int = 0
    api_keys: tuple[str, ...] = (DEFAULT_API_KEY,)
    revoked_keys: frozenset[str] = frozenset()
    read_only_keys: frozenset[str] = frozenset()  # valid keys without run permission: 403
    catalog: str | None = None  # a YAML catalog file; None is the packaged catalog.yaml
    balance: float = 1000.0  # USD; a run reserves run_cost at creation, refunded on failure
    time_scale: float = 1.0
    duration: tuple[float, float] | None = None  # overrides every technique's range
    capacity: int = 8  # runs running at once; the rest wait FIFO in `pending`
    frozen_clock: bool = False  # the clock stands still; it moves only when advanced
    failure_rate: float = 0.0
    failure_charge: float = 0.0  # fraction of run_cost a failed run keeps (0: refunded)
    create_status: int = 200  # 200 (page) or 201 (spec)
    omit_poll_url: bool = False
    run_id_style: RunIdStyle = "prefixed"  # run_… (spec) or j57… (page example)
    idempotency: IdempotencyMode = "replay"  # replay (docs) or suppress: 409 (spec)
    idempotency_window: float = 7200.0
    coalesce: bool = True  # False: concurrent requests with one key may both create runs
    charged_cost_delay: float = 0.0  # after completion, before charged_cost appears
    url_ttl: float = 3600.0
    expired_status: int = 403  # what an expired output URL answers: 403, 404 or 410
    latency: float = 0.0  # added to every API request
    error_5xx_rate: float = 0.0
    html_5xx: bool = False  # 5xx bodies as a load balancer's HTML page
    rate_429: float = 0.0
    retry_after: float | None = 1.0  # the Retry-After of a 429; None sends no header
    # The next N create-run POSTs are answered 429 (with retry_after), whatever the rates:
    # a test makes one process meet a rate limit exactly when it wants to.
    rate_limit_next_creates: int = 0
    drop_rate: float = 0.0  # connections dropped without an answer
    truncate_rate: float = 0.0  # media bodies cut short under a full Content-Length
    redirect_loop: bool = False  # every output URL answers 302 to itself
    upload_ttl: float = 3600.0  # how long an asset's upload reservation takes an upload
    asset_ready_delay: float = 0.0  # after complete, before the asset shows ready (or failed)
    asset_failure_rate: float = 0.0  # completed uploads whose asset ends failed
    upload_5xx_rate: float = 0.0  # uploads the upload host answers 503 (after reading them)
    check_asset_inputs: bool = False  # a run refuses an asset URL whose asset is not ready

    def __post_init__(self) -> None:
        problems = _problems(self)
        if problems:
            raise ValueError("; ".join(problems))

    def replace(self, changes: Mapping[str, object]) -> SandboxConfig:
        """A copy with ``changes`` applied, values coerced from JSON; ValueError names bad knobs."""
        known = {f.name: f for f in dataclasses.fields(self)}
        values: dict[str, Any] = {}
        problems: list[str] = []
        for name, raw in changes.items():
            if name not in known:
                problems.append(f"{name}: unknown knob")
                continue
            try:
                values[name] = _COERCE[str(known[name].type)](raw)
            except (TypeError, ValueError) as exc:
                problems.append(f"{name}: {exc}")
        if problems:
            raise ValueError("; ".join(problems))
        return dataclasses.replace(self, **values)

    def to_json(self) -> dict[str, Any]:
        """The knobs as JSON values (sets as sorted lists)."""
        out: dict[str, Any] = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if isinstance(value, frozenset):
                value = sorted(value)
            elif isinstance(value, tuple):
                value = list(value)
            out[f.name] = value
        return out


def _problems(config: SandboxConfig) -> list[str]:
    problems = [
        f"{name}: must be between 0 and 1" for name in _RATES if not 0 <= getattr(config, name) <= 1
    ]
    problems += [f"{name}: must be >= 0" for name in _NON_NEGATIVE if getattr(config, name) < 0]
    if not config.time_scale > 0:
        problems.append("time_scale: must be > 0")
    if not config.url_ttl > 0:
        problems.append("url_ttl: must be > 0")
    if config.rate_limit_next_creates < 0:
        problems.append("rate_limit_next_creates: must be >= 0")
    if not config.upload_ttl > 0:
        problems.append("upload_ttl: must be > 0")
    if config.capacity < 1:
        problems.append("capacity: must be >= 1")
    if not config.api_keys or not all(config.api_keys):
        problems.append("api_keys: need at least one non-empty key")
    if config.create_status not in (200, 201):
        problems.append("create_status: must be 200 or 201")
    if config.expired_status not in (403, 404, 410):
        problems.append("expired_status: must be 403, 404 or 410")
    if config.idempotency not in ("replay", "suppress"):
        problems.append("idempotency: must be 'replay' or 'suppress'")
    if config.run_id_style not in ("prefixed", "opaque"):
        problems.append("run_id_style: must be 'prefixed' or 'opaque'")
    if config.retry_after is not None and config.retry_after < 0:
        problems.append("retry_after: must be >= 0 or null")
    if config.duration is not None and not 0 <= config.duration[0] <= config.duration[1]:
        problems.append("duration: must be [lo, hi] with 0 <= lo <= hi")
    return problems


def _number(raw: object) -> float:
    if isinstance(raw, bool) or not isinstance(raw, int | float) or not math.isfinite(raw):
        raise ValueError(f"expected a number, got {raw!r}")
    return float(raw)


def _integer(raw: object) -> int:
    if isinstance(raw, bool) or not isinstance(raw, int):
        raise ValueError(f"expected an integer, got {raw!r}")
    return raw


def _boolean(raw: object) -> bool:
    if not isinstance(raw, bool):
        raise ValueError(f"expected true or false, got {raw!r}")
    return raw


def _string(raw: object) -> str:
    if not isinstance(raw, str):
        raise ValueError(f"expected a string, got {raw!r}")
    return raw


def _strings(raw: object) -> tuple[str, ...]:
    if isinstance(raw, str) or not isinstance(raw, list | tuple | set | frozenset):
        raise ValueError(f"expected a list of strings, got {raw!r}")
    return tuple(_string(item) for item in raw)


def _optional(coerce: Callable[[object], Any]) -> Callable[[object], Any]:
    return lambda raw: None if raw is None else coerce(raw)


def _pair(raw: object) -> tuple[float, float]:
    if not isinstance(raw, list | tuple) or len(raw) != 2:
        raise ValueError(f"expected [lo, hi], got {raw!r}")
    return (_number(raw[0]), _number(raw[1]))


_COERCE: dict[str, Callable[[object], Any]] = {
    "int": _integer,
    "float": _number,
    "bool": _boolean,
    "str | None": _optional(_string),
    "float | None": _optional(_number),
    "tuple[str, ...]": _strings,
    "frozenset[str]": lambda raw: frozenset(_strings(raw)),
    "tuple[float, float] | None": _optional(_pair),
    "IdempotencyMode": _string,
    "RunIdStyle": _string,
}


@dataclass(frozen=True, slots=True)
class Port:
    """One input or output of a technique, as ``GET /techniques/{slug}`` shows it."""

    id: str
    name: str
    type: str

    def to_json(self) -> dict[str, str]:
        return {"id": self.id, "name": self.name, "type": self.type}


@dataclass(frozen=True, slots=True)
class Technique:
    """A runnable technique; ``duration`` is its unscaled run-time range in seconds."""

    slug: str
    technique_id: str
    name: str
    description: str
    run_cost: float
    duration: tuple[float, float]
    inputs: tuple[Port, ...]
    outputs: tuple[Port, ...]

    def to_json(self) -> dict[str, Any]:
        """The documented shape; ``slug`` and ``duration`` are sandbox-only and not shown."""
        return {
            "technique_id": self.technique_id,
            "name": self.name,
            "description": self.description,
            "run_cost": self.run_cost,
            "inputs": [p.to_json() for p in self.inputs],
            "outputs": [p.to_json() for p in self.outputs],
        }


@dataclass(frozen=True, slots=True)
class Catalog:
    """The techniques the sandbox offers, in listing order."""

    techniques: tuple[Technique, ...]

    def find(self, slug_or_id: str) -> Technique | None:
        """The technique with this slug or ``tech_`` id, as the API accepts either."""
        for technique in self.techniques:
            if slug_or_id in (technique.slug, technique.technique_id):
                return technique
        return None


def load_catalog(path: str | Path | None = None) -> Catalog:
    """Read a catalog YAML file (default: the packaged one); UsageError says what is wrong."""
    if path is None:
        text = resources.files("floraq.sandbox").joinpath("catalog.yaml").read_text("utf-8")
        where = "catalog.yaml"
    else:
        where = str(path)
        try:
            text = Path(path).read_text("utf-8")
        except OSError as exc:
            raise UsageError(f"{where}: cannot read the catalog: {exc.strerror}") from exc
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise UsageError(f"{where}: not valid YAML: {exc}") from exc
    entries = data.get("techniques") if isinstance(data, dict) else None
    if not isinstance(entries, list) or not entries:
        raise UsageError(f"{where}: expected a mapping with a non-empty 'techniques' list")
    techniques = tuple(
        _technique(entry, f"{where}: technique {n}") for n, entry in enumerate(entries, 1)
    )
    seen: set[str] = set()
    for technique in techniques:
        for name in (technique.slug, technique.technique_id):
            if name in seen:
                raise UsageError(f"{where}: '{name}' is used by two techniques")
            seen.add(name)
    return Catalog(techniques)


def _technique(entry: object, where: str) -> Technique:
    if not isinstance(entry, dict):
        raise UsageError(f"{where}: expected a mapping")

    def text(key: str) -> str:
        value = entry.get(key)
        if not isinstance(value, str) or not value:
            raise UsageError(f"{where}: '{key}' must be a non-empty string")
        return value

    slug = text("slug")
    where = f"{where} ({slug})"
    technique_id = text("technique_id")
    if not technique_id.startswith("tech_"):
        raise UsageError(f"{where}: 'technique_id' must start with tech_")
    try:
        run_cost = _number(entry.get("run_cost"))
        lo, hi = _pair(entry.get("duration"))
    except ValueError as exc:
        raise UsageError(f"{where}: 'run_cost' or 'duration': {exc}") from exc
    if run_cost < 0 or not 0 <= lo <= hi:
        raise UsageError(f"{where}: need run_cost >= 0 and duration [lo, hi] with 0 <= lo <= hi")
    return Technique(
        slug=slug,
        technique_id=technique_id,
        name=text("name"),
        description=str(entry.get("description", "")),
        run_cost=run_cost,
        duration=(lo, hi),
        inputs=_ports(entry.get("inputs"), f"{where} inputs", TECHNIQUE_TYPES),
        outputs=_ports(entry.get("outputs"), f"{where} outputs", OUTPUT_TYPES),
    )


def _ports(raw: object, where: str, types: tuple[str, ...]) -> tuple[Port, ...]:
    if not isinstance(raw, list) or not raw:
        raise UsageError(f"{where}: expected a non-empty list")
    ports: list[Port] = []
    for item in raw:
        if not isinstance(item, dict) or not all(
            isinstance(item.get(k), str) for k in ("id", "name", "type")
        ):
            raise UsageError(f"{where}: each entry needs string 'id', 'name' and 'type'")
        if item["type"] not in types:
            raise UsageError(f"{where}: type '{item['type']}' is not one of {', '.join(types)}")
        ports.append(Port(item["id"], item["name"], item["type"]))
    if len({p.id for p in ports}) != len(ports):
        raise UsageError(f"{where}: ids must be unique")
    return tuple(ports)
