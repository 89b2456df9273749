"""Everything the sandbox remembers, driven by an injected clock; no HTTP here.

A run's whole timeline is fixed when it is created: its duration and fate come from
the seed (and its idempotency key, so a row gets the same run every time), and its
start from a FIFO over ``capacity`` slots. A poll only reads that timeline at the
clock's ``now``; ``settle`` refunds failed runs. The jobs are in their own modules:
``runs`` (a run and its plan), ``schedule`` (slots), ``idempotency`` (keys),
``billing`` (the balance), ``faults`` (seeded fault draws), ``reports`` (counters and
``/_sandbox/*`` views) and ``clock`` (time a test can freeze and advance).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Mapping
from typing import Any

from floraq.errors import UsageError
from floraq.sandbox import media
from floraq.sandbox.assets import Asset, AssetStore
from floraq.sandbox.billing import Billing, micros, usd
from floraq.sandbox.clock import SandboxClock
from floraq.sandbox.config import Catalog, Port, SandboxConfig, Technique, load_catalog
from floraq.sandbox.faults import COUNTED_AS, Fault, FaultDraws
from floraq.sandbox.idempotency import KeyStore, fingerprint
from floraq.sandbox.reports import Counters, run_report, stats_json
from floraq.sandbox.runs import (
    FAILURES,
    Inputs,
    Run,
    RunStatus,
    new_run_id,
    normalize_inputs,
    plan_run,
    render,
)
from floraq.sandbox.schedule import Slots, ideal_makespan

__all__ = [  # the names importers of this module relied on before the split
    "FAILURES",
    "Fault",
    "Inputs",
    "Run",
    "SandboxState",
    "fingerprint",
    "ideal_makespan",
    "normalize_inputs",
    "plan_run",
]


class SandboxState:
    """The sandbox's runs, keys, balance and counters; owned by the server's event loop."""

    def __init__(
        self,
        config: SandboxConfig,
        *,
        clock: Callable[[], float],
        wall: Callable[[], float],
        media_base_url: str = "",
        upload_base_url: str = "",
    ) -> None:
        self.initial_config = config
        self.config = config
        self.catalog: Catalog = load_catalog(config.catalog)
        self.media_base_url = media_base_url
        self.upload_url = f"{upload_base_url}/api/v1/files/upload"
        self.clock = SandboxClock(clock, wall)
        self.clock.set_frozen(config.frozen_clock)
        self.in_flight = 0  # API requests being answered now (not reset: they are real)
        self._epoch = 0
        self._secret = hashlib.sha256(f"floraq-sandbox-media|{config.seed}".encode()).digest()
        self.reset()

    def reset(self) -> None:
        """Forget runs, keys and counters; restore the balance; restart the fault streams.

        The clock goes on from where it is: a reset never moves time back.
        """
        self._epoch += 1
        self.runs: dict[str, Run] = {}
        self._by_token: dict[str, str] = {}
        self._keys = KeyStore()
        self._slots = Slots(self.config.capacity)
        self.billing = Billing(self.config.balance)
        self.counters = Counters()
        self.faults = FaultDraws(self.config.seed)
        self._limited_creates = self.config.rate_limit_next_creates
        self.assets = AssetStore(self.config.seed, self._secret + str(self._epoch).encode())
        self.asset_keys = KeyStore()  # (kind|key) -> asset id
        self.asset_key_bodies: dict[tuple[str, str], str] = {}  # -> the create's fingerprint

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
            self.billing.set_balance(config.balance)
        if "capacity" in changes:
            self._slots.resize(config.capacity)
        if "seed" in changes:
            self.faults = FaultDraws(config.seed)
        if "rate_limit_next_creates" in changes:
            self._limited_creates = config.rate_limit_next_creates
        self.clock.set_frozen(config.frozen_clock)
        return config

    def restore_config(self) -> None:
        """Go back to the knobs the server started with (``reset`` then restores the balance)."""
        self.config = self.initial_config
        self.catalog = load_catalog(self.config.catalog)
        self.clock.set_frozen(self.config.frozen_clock)

    def now(self) -> float:
        return self.clock.now()

    def wall_ms(self) -> int:
        return int(self.clock.wall() * 1000)

    def find_idempotent(self, api_key: str, key: str) -> Run | None:
        """The run an earlier request with this key made, if the key is still remembered."""
        window = self.config.idempotency_window
        run_id = self._keys.find(api_key, key, now=self.now(), window=window)
        return None if run_id is None else self.runs.get(run_id)

    def find_asset_key(self, api_key: str, key: str) -> Asset | None:
        """The asset an earlier asset request with this (kind-prefixed) key named."""
        window = self.config.idempotency_window
        asset_id = self.asset_keys.find(api_key, key, now=self.now(), window=window)
        return None if asset_id is None else self.assets.assets.get(asset_id)

    def asset_digest(self, url: str) -> str | None:
        """The sha256 of the bytes uploaded to the asset ``url`` names, when it is ready."""
        asset = self.assets.by_url(url)
        if asset is None or asset.status(self.now()).value != "ready":
            return None
        return asset.sha256

    def can_afford(self, technique: Technique) -> bool:
        self.settle()
        return self.billing.can_afford(micros(technique.run_cost))

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
        started, ended = self._slots.place(now, plan.duration)
        run_id = new_run_id(self.config, self._epoch, index, self.runs)
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
            cost_micros=micros(technique.run_cost),
            token=hashlib.sha256(self._secret + run_id.encode()).hexdigest()[:24],
            failure_charge_micros=round(micros(technique.run_cost) * self.config.failure_charge),
        )
        self.runs[run_id] = run
        self._by_token[run.token] = run_id
        if key:
            self._keys.remember(api_key, key, run_id, now=now)
        self.billing.charge(
            run_id,
            run.cost_micros,
            refund_at=ended if plan.failure else None,
            refund_micros=run.cost_micros - run.charged_micros,
        )
        self.counters.runs_created += 1
        return run

    def settle(self) -> None:
        """Refund every run that has failed by now (FLORA charges completed runs only)."""
        self.billing.settle(self.now())

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
        if status is not RunStatus.PENDING:
            out["started_at"] = run.epoch_ms(run.started)
        if status is RunStatus.COMPLETED:
            out["completed_at"] = run.epoch_ms(run.ended)
            if now - run.ended >= self.config.charged_cost_delay:
                out["charged_cost"] = usd(run.cost_micros)
            out["outputs"] = [
                {"output_id": port.id, "type": port.type, "url": self.output_url(run, port)}
                for port in run.technique.outputs
            ]
        elif status is RunStatus.FAILED and run.failure:
            out["completed_at"] = run.epoch_ms(run.ended)
            out["charged_cost"] = usd(run.charged_micros) if run.charged_micros else 0
            out["error_code"], out["error_message"] = run.failure
        if poll_url and not self.config.omit_poll_url:
            out["poll_url"] = poll_url
        return out

    def output_url(self, run: Run, port: Port) -> str:
        """A fresh signed URL for one output, valid for ``url_ttl`` seconds."""
        path = f"/media/{run.token}/{port.id}.{render(run, port).extension}"
        expires = self.wall_ms() + round(self.config.url_ttl * 1000)
        signature = media.sign(self._secret, path, expires)
        return f"{self.media_base_url}{path}?exp={expires}&sig={signature}"

    def check_signature(self, path: str, expires: int, signature: str) -> bool:
        return media.verify(self._secret, path, expires, signature)

    def media_file(self, token: str, name: str) -> media.MediaFile | None:
        """The file at ``/media/{token}/{name}``, if its run has completed."""
        run = self.runs.get(self._by_token.get(token, ""))
        if run is None or run.status(self.now()) is not RunStatus.COMPLETED:
            return None
        output_id, _, extension = name.rpartition(".")
        for port in run.technique.outputs:
            if port.id == output_id:
                file = render(run, port)
                return file if file.extension == extension else None
        return None

    def draw_api_fault(self, *, creates_run: bool) -> Fault:
        """Decide one API request's fault from the seeded stream, and count it."""
        fault = self.faults.api_fault(self.config, creates_run=creates_run)
        if creates_run and self._limited_creates > 0:  # drawn first: the streams never shift
            self._limited_creates -= 1
            fault = Fault.RATE_LIMITED
        if fault is not Fault.NONE:
            self.counters.faults[COUNTED_AS[fault]] += 1
        return fault

    def request_started(self) -> None:
        """One more API request being answered; the most at once is kept in the counters."""
        self.in_flight += 1
        self.counters.max_in_flight = max(self.counters.max_in_flight, self.in_flight)

    def request_ended(self) -> None:
        self.in_flight -= 1

    def draw_truncation(self) -> float | None:
        """The fraction of a media body to send before hanging up, or None to send it all."""
        cut = self.faults.truncation(self.config)
        if cut is not None:
            self.counters.faults["truncate"] += 1
        return cut

    def stats(self) -> dict[str, Any]:
        """The counters as ``GET /_sandbox/stats`` returns them."""
        self.settle()
        runs = list(self.runs.values())
        return stats_json(self.counters, self.billing, runs, self.config.capacity)

    def report(self) -> list[dict[str, Any]]:
        """Every run with the exact output bytes' sha256, as ``GET /_sandbox/runs`` returns."""
        now = self.now()
        reports = [run_report(run, now) for run in self.runs.values()]
        for report in reports:  # an input that is one of our assets: the bytes it holds
            report["input_assets"] = {
                item["id"]: self.asset_digest(item["value"])
                for item in report["inputs"]
                if self.assets.by_url(item["value"]) is not None
            }
        return reports
