"""The sandbox's pure parts: knobs, catalog, schedule and billing on a fake clock."""

from __future__ import annotations

from pathlib import Path

import pytest

from floraq.errors import UsageError
from floraq.sandbox import SandboxConfig, ideal_makespan, load_catalog
from floraq.sandbox.clock import SandboxClock
from floraq.sandbox.state import SandboxState, fingerprint, plan_run

IMAGE = (("input_image", "imageUrl", "https://example.com/a.jpg"),)


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def make_state(**knobs: object) -> tuple[SandboxState, FakeClock]:
    clock = FakeClock()
    config = SandboxConfig(seed=1).replace(knobs)
    return SandboxState(config, clock=clock, wall=lambda: 1_700_000_000.0), clock


def create(state: SandboxState, key: str | None = None, inputs: object = IMAGE) -> str:
    technique = state.catalog.find("portrait-enhancer")
    assert technique is not None
    run = state.create_run(technique, inputs, key=key, api_key="k", fingerprint="f")  # type: ignore[arg-type]
    return run.run_id


def test_replace_coerces_json_values() -> None:
    """JSON lists become tuples and frozensets; numbers become floats where declared."""
    config = SandboxConfig().replace(
        {"duration": [1, 2], "revoked_keys": ["a"], "balance": 5, "retry_after": None}
    )
    assert config.duration == (1.0, 2.0) and config.revoked_keys == frozenset({"a"})
    assert config.balance == 5.0 and config.retry_after is None


def test_replace_names_every_bad_knob() -> None:
    """Unknown knobs and bad values are all reported in one ValueError."""
    with pytest.raises(ValueError, match="nope: unknown knob; capacity: expected an integer"):
        SandboxConfig().replace({"nope": 1, "capacity": "8"})


@pytest.mark.parametrize(
    ("knobs", "message"),
    [
        ({"failure_rate": 1.5}, "failure_rate: must be between 0 and 1"),
        ({"capacity": 0}, "capacity: must be >= 1"),
        ({"create_status": 202}, "create_status: must be 200 or 201"),
        ({"idempotency": "maybe"}, "idempotency: must be 'replay' or 'suppress'"),
        ({"duration": (3.0, 1.0)}, "duration: must be [lo, hi] with 0 <= lo <= hi"),
    ],
)
def test_invalid_knobs_are_refused(knobs: dict[str, object], message: str) -> None:
    """Out-of-range knob values raise ValueError naming the knob."""
    with pytest.raises(ValueError, match=message.replace("[", r"\[")):
        SandboxConfig(**knobs)  # type: ignore[arg-type]


def test_packaged_catalog_has_the_required_techniques() -> None:
    """The shipped catalog offers the five techniques floraq's tests rely on."""
    slugs = {t.slug for t in load_catalog().techniques}
    assert {"portrait-enhancer", "poster-maker", "product-shot", "image-to-video"} <= slugs
    assert "caption-writer" in slugs


def test_catalog_errors_name_the_file_and_technique(tmp_path: Path) -> None:
    """A catalog entry with a bad technique_id is a UsageError pointing at it."""
    path = tmp_path / "catalog.yaml"
    path.write_text(
        "techniques:\n  - {slug: a, technique_id: a1, name: A, run_cost: 1, duration: [1, 2],"
        " inputs: [{id: x, name: X, type: text}], outputs: [{id: y, name: Y, type: text}]}\n"
    )
    with pytest.raises(UsageError, match=r"catalog.yaml: technique 1 \(a\): 'technique_id' must"):
        load_catalog(path)


def test_plan_is_a_function_of_seed_slug_and_key() -> None:
    """The same seed and key give the same duration; another key gives another."""
    config = SandboxConfig(seed=5)
    technique = load_catalog().find("portrait-enhancer")
    assert technique is not None
    one = plan_run(config, technique, IMAGE, "key-1", 0)
    assert one == plan_run(config, technique, IMAGE, "key-1", 99)
    assert one != plan_run(config, technique, IMAGE, "key-2", 0)
    assert 5 <= one.duration <= 20


def test_ideal_makespan_packs_runs_on_the_slots() -> None:
    """Four runs of 1 s on two slots take 2 s; one 3 s run among them sets the span."""
    assert ideal_makespan([1, 1, 1, 1], 2) == 2
    assert ideal_makespan([3, 1, 1, 1], 2) == 3


def test_fifo_capacity_schedules_on_the_clock() -> None:
    """With capacity 1 the second run starts when the first ends, and the views say so."""
    state, clock = make_state(capacity=1, duration=[10, 10])
    first, second = create(state), create(state)
    view = state.view(state.runs[second], poll_url=None)
    assert (view["status"], view["progress"]) == ("pending", 0)
    clock.now += 15
    assert state.view(state.runs[first], poll_url=None)["status"] == "completed"
    view = state.view(state.runs[second], poll_url=None)
    assert (view["status"], view["progress"]) == ("running", 50)
    assert view["started_at"] == view["created_at"] + 10_000


def test_balance_is_reserved_then_refunded_on_failure() -> None:
    """A failing run holds run_cost until it fails, then the balance is whole again."""
    state, clock = make_state(balance=1, duration=[10, 10])
    failing = (("input_image", "imageUrl", "https://e.com/[[fail:internal_error]]"),)
    create(state, inputs=failing)
    assert state.stats()["balance"] == 0.95
    clock.now += 11
    assert (state.stats()["balance"], state.stats()["charged_total"]) == (1.0, 0.0)


def test_idempotency_record_expires_with_the_window() -> None:
    """find_idempotent finds the run inside the window and forgets it after."""
    state, clock = make_state(idempotency_window=60)
    run_id = create(state, key="k")
    clock.now += 59
    found = state.find_idempotent("k", "k")
    assert found is not None and found.run_id == run_id
    clock.now += 2
    assert state.find_idempotent("k", "k") is None


def test_fingerprint_ignores_where_the_key_was_sent() -> None:
    """The body with and without idempotency_key has one fingerprint; other inputs differ."""
    body = {"inputs": [{"id": "a", "type": "text", "value": "x"}], "mode": "async"}
    assert fingerprint("s", body) == fingerprint("s", body | {"idempotency_key": "k"})
    assert fingerprint("s", body) != fingerprint("other", body)


def test_frozen_clock_stands_still_and_advances_both_clocks() -> None:
    """Frozen, real time passing changes nothing; an advance moves monotonic and wall alike."""
    real = FakeClock()
    clock = SandboxClock(real, lambda: 1_700_000_000.0 + real.now)
    clock.set_frozen(True)
    real.now += 60
    assert (clock.now(), clock.wall()) == (100.0, 1_700_000_100.0)
    clock.advance(5)
    assert (clock.now(), clock.wall()) == (105.0, 1_700_000_105.0)
    with pytest.raises(ValueError, match="advance: must be"):
        clock.advance(-1)


def test_thawed_clock_runs_on_from_where_it_stood() -> None:
    """Unfreezing never jumps: time goes on from the frozen instant at the real rate."""
    real = FakeClock()
    clock = SandboxClock(real, lambda: 1_700_000_000.0 + real.now)
    clock.set_frozen(True)
    real.now += 60
    clock.set_frozen(False)
    assert clock.now() == 100.0
    real.now += 2
    assert (clock.now(), clock.wall()) == (102.0, 1_700_000_102.0)


def test_frozen_state_holds_a_run_until_the_clock_is_advanced() -> None:
    """With frozen_clock, a 10 s run is at 0 % after a real minute and done after 10 s advanced."""
    state, clock = make_state(frozen_clock=True, duration=[10, 10])
    run = state.runs[create(state)]
    clock.now += 60
    assert (state.view(run, poll_url=None)["progress"], run.status(state.now())) == (0, "running")
    state.clock.advance(10)
    assert state.view(run, poll_url=None)["status"] == "completed"
