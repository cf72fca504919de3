"""The circuit breaker of proxy/routing/health.py: closed, open, one half-open probe, reopening."""

from __future__ import annotations

from proxy.routing.health import CLOSED, HALF_OPEN, OPEN, Breaker, ServerState


def test_opens_after_consecutive_failures_only() -> None:
    b = Breaker(failures=3, open_s=5.0)
    b.failure(0.0)
    b.failure(0.1)
    b.success(0.2)  # a success in between starts the count again
    b.failure(0.3)
    b.failure(0.4)
    assert (b.state, b.opened, b.allow(0.5)) == (CLOSED, 0, True)
    b.failure(0.6)
    assert (b.state, b.opened) == (OPEN, 1)
    assert not b.allow(0.7)
    assert not b.allow(5.59)  # open_s counts from the failure that opened it


def test_half_open_lets_exactly_one_probe_through() -> None:
    b = Breaker(failures=1, open_s=2.0)
    b.failure(10.0)
    assert b.allow(12.0)
    assert b.state == HALF_OPEN
    assert [b.allow(12.0 + i / 10) for i in range(1, 10)] == [False] * 9
    b.success(12.5)
    assert b.state == CLOSED
    assert all(b.allow(12.6) for _ in range(5))


def test_failed_probe_reopens_for_a_full_period() -> None:
    b = Breaker(failures=2, open_s=1.0)
    b.failure(0.0)
    b.failure(0.0)
    assert b.allow(1.0)
    b.failure(1.2)  # the probe failed: open again at once, no count to reach
    assert (b.state, b.opened) == (OPEN, 2)
    assert not b.allow(2.1)
    assert b.allow(2.2)


def test_lost_probe_is_replaced_after_open_s() -> None:
    b = Breaker(failures=1, open_s=1.0)
    b.failure(0.0)
    assert b.allow(1.0)
    assert not b.allow(1.9)
    assert b.allow(2.0)  # the first probe never reported


def test_failure_while_open_does_not_extend_it() -> None:
    b = Breaker(failures=1, open_s=1.0)
    b.failure(0.0)
    b.failure(0.9)  # a connect started before it opened, reporting late
    assert (b.opened, b.allow(1.0)) == (1, True)


def test_unknown_lag_is_lagging() -> None:
    s = ServerState("r:1", "r", 1, "replica", "standby", 1.0, 1000, 100, Breaker(3, 5.0))
    s.lag_bytes = 0
    assert s.lagging()  # lag_ms unknown
    s.lag_ms = 100.0
    assert not s.lagging()
    s.lag_bytes = 1001
    assert s.lagging()
