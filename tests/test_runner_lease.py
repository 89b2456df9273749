"""A worker's lease as the runner keeps it: a POST attempt leaves only while the lease
outlasts the attempt's whole deadline, and a lease lost is never used again."""

from __future__ import annotations

from typing import cast

from floraq.ledger.leases import PgLeases, WorkerView
from floraq.results import WorkersStatus
from floraq.runner.lease import LeaseKeeper, post_deadline


class FakeServer:
    """The ledger's lease calls, answered as the server would: seconds left, or None."""

    def __init__(self) -> None:
        self.answers: list[float | None] = []
        self.renewals = 0
        self.worker: str | None = None

    def register_worker(self, lease_seconds: float) -> tuple[str, float]:
        self.worker = "w1"
        return "w1", lease_seconds

    def renew_lease(self, lease_seconds: float) -> float | None:
        self.renewals += 1
        return self.answers.pop(0)

    def release_worker(self) -> None:
        self.worker = None


def keeper(now: list[float]) -> tuple[LeaseKeeper, FakeServer]:
    server = FakeServer()
    lease = LeaseKeeper(
        ledger=cast(PgLeases, server), seconds=9.0, deadline=3.0, clock=lambda: now[0]
    )
    return lease, server


def test_an_attempt_leaves_only_while_the_lease_outlasts_its_deadline() -> None:
    now = [100.0]
    lease, server = keeper(now)
    assert lease.start() == "w1" and lease.left() == 9.0
    now[0] = 105.0  # 4 s left > a 3 s deadline: no renewal needed
    assert lease.may_send() and server.renewals == 0
    now[0] = 106.5  # 2.5 s left: renew first (the server grants 9 s from now)
    server.answers = [9.0]
    assert lease.may_send() and server.renewals == 1 and lease.left() == 9.0
    now[0] = 113.0  # 2.5 s left again, and the server says the lease had passed
    server.answers = [None]
    assert not lease.may_send() and lease.lost
    assert not lease.may_send() and not lease.held() and server.renewals == 2  # never again


def test_a_renewal_the_server_grants_late_counts_from_when_it_was_asked() -> None:
    """Time left is a lower bound: measured from the moment the renewal was sent."""
    now = [0.0]
    lease, server = keeper(now)
    lease.start()
    now[0] = 8.0
    server.answers = [6.0]  # the server's answer: 6 s left on its clock
    assert lease.renew() and lease.until == 14.0

    def broken(lease_seconds: float) -> float | None:
        raise RuntimeError("the server is gone")

    server.renew_lease = broken  # type: ignore[method-assign]
    assert not lease.renew() and lease.lost  # a failed renewal is a lost lease
    lease.release()
    assert server.worker is None


def test_one_attempt_fits_a_third_of_the_lease() -> None:
    assert post_deadline(60.0, 120.0) == 20.0
    assert post_deadline(600.0, 120.0) == 120.0  # never longer than the client's own


def test_status_names_each_worker_and_the_rows_whose_lease_expired() -> None:
    alive = WorkerView(
        id="a", host="box-1", pid=41, rows=12, heartbeat_at=1.0, heartbeat_age=3.2, lease_left=41.6
    )
    dead = WorkerView(
        id="b", host="box-2", pid=7, rows=5, heartbeat_at=1.0, heartbeat_age=75.0, lease_left=-15.0
    )
    shown = WorkersStatus((alive, dead))
    assert shown.lines() == [
        "workers (2):",
        "  box-1 pid 41: 12 row(s) leased; last heartbeat 3 s ago; lease 42 s left",
        "  box-2 pid 7: 5 row(s) leased; last heartbeat 75 s ago; lease expired",
        "rows whose lease expired: 5 (the next worker to look takes them over)",
    ]
    assert shown.as_json()["rows_lease_expired"] == 5
    assert [w["lease_expired"] for w in shown.as_json()["workers"]] == [False, True]
    assert WorkersStatus(()).lines() == ["workers: none holds a lease"]
