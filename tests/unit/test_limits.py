"""Rate limits and quotas, pure parts: GCRA, the `limits:` config, which limits apply, refusals, the per-process counts."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from proxy.config.limits import Limit, Limits
from proxy.config.model import Config
from proxy.limits.gcra import gcra, most_admitted
from proxy.limits.limiter import Limiter
from proxy.limits.rules import CONCURRENCY, CONNECTIONS, RATE, Applied, Entity, applicable, message, timeout_ms
from proxy.session import params
from proxy.session.limited import LIMITED_EXECUTE, LIMITED_QUERY, decode, mark, statements, timeout_refusal
from proxy.session.state import Refusal, TimeoutCap
from proxy.wire.protocol import MSG_BIND, MSG_EXECUTE, MSG_QUERY, MSG_SYNC

# --- GCRA ------------------------------------------------------------------------------------


@settings(max_examples=300, deadline=None)
@given(
    rate=st.floats(min_value=0.5, max_value=500),
    burst=st.integers(min_value=1, max_value=30),
    gaps=st.lists(st.floats(min_value=0, max_value=0.2), min_size=1, max_size=200),
    sizes=st.lists(st.integers(min_value=1, max_value=5), min_size=1, max_size=200),
)
def test_gcra_never_admits_more_than_rate_times_window_plus_burst(rate, burst, gaps, sizes):
    interval, tat, now, admitted = 1.0 / rate, 0.0, 1000.0, []
    for gap, n in zip(gaps, sizes):
        now += gap
        decision = gcra(now, tat, interval, burst, n)
        assert 0 <= decision.admitted <= n
        tat = decision.tat
        admitted += [now] * decision.admitted
    for i, start in enumerate(admitted):  # every window [start, end] between two admissions
        for j in range(i, len(admitted)):
            assert j - i + 1 <= rate * (admitted[j] - start) + burst + 1e-6


@given(rate=st.floats(min_value=1, max_value=1000), burst=st.integers(min_value=1, max_value=50))
def test_gcra_admits_the_burst_at_once_then_the_rate(rate, burst):
    interval = 1.0 / rate
    first = gcra(100.0, 0.0, interval, burst, burst + 5)
    assert first.admitted == burst  # a full bucket: exactly the burst, never more
    assert first.retry_after == pytest.approx(interval, abs=1e-6)
    later = gcra(100.0 + 3 * interval, first.tat, interval, burst, 10)
    assert later.admitted == min(3, burst)  # three intervals later: three more (the bucket holds `burst`)


def test_most_admitted_names_the_tightest_bucket():
    assert most_admitted(0.0, [(0.0, 0.001, 100), (0.0, 0.5, 2), (0.0, 0.01, 3)], 10) == (2, 1)
    assert most_admitted(0.0, [(0.0, 0.001, 100)], 10) == (10, -1)


# --- config ----------------------------------------------------------------------------------


def test_config_limits_parse_and_validate():
    config = Config.model_validate(
        {
            "primary": {"host": "h"},
            "limits": {
                "redis": "redis://127.0.0.1:6379/0",
                "tenants": {"*": {"statements_per_second": 100, "burst": 20}, "acme": {"statements_per_second": 500}},
                "roles": {"analyst": {"concurrent_statements": 2, "statement_timeout_ms": 5000}},
                "users": {"report_bot": {"client_connections": 5}},
            },
        }
    )
    limits = config.limits
    assert limits is not None
    assert limits.tenants["*"].burst_size() == 20
    assert limits.tenants["acme"].burst_size() == 500  # default: the rate
    assert Limit(statements_per_second=0.5).burst_size() == 1
    assert Config.model_validate({"primary": {"host": "h"}}).limits is None


@pytest.mark.parametrize(
    "entry, fragment",
    [
        ({"burst": 5}, "needs `statements_per_second`"),
        ({"statements_per_second": 0}, "greater than 0"),
        ({"concurrent_statements": 0}, "greater than or equal to 1"),
        ({"statement_timeout_ms": -1}, "greater than or equal to 1"),
        ({"rate": 5}, "Extra inputs"),
    ],
)
def test_config_limits_refuse_nonsense(entry, fragment):
    with pytest.raises(ValidationError) as info:
        Limits.model_validate({"users": {"u": entry}})
    assert fragment in str(info.value)


# --- which limits apply, what a refusal says --------------------------------------------------


def test_applicable_uses_named_entries_then_the_default():
    config = Limits(
        users={"*": Limit(client_connections=9), "bob": Limit(client_connections=1)},
        roles={"analyst": Limit(concurrent_statements=2)},
        tenants={"*": Limit(statements_per_second=100), "acme": Limit(statements_per_second=500)},
    )
    got = applicable(config, "bob", {"analyst", "clerk"}, "acme")
    assert [(a.entity, a.limit) for a in got] == [
        (Entity("user", "bob"), Limit(client_connections=1)),
        (Entity("role", "analyst"), Limit(concurrent_statements=2)),
        (Entity("tenant", "acme"), Limit(statements_per_second=500)),
    ]
    other = applicable(config, "eve", (), "globex")
    assert [a.entity for a in other] == [Entity("user", "eve"), Entity("tenant", "globex")]
    assert other[1].limit.statements_per_second == 100  # each tenant its own bucket, the default's rate
    assert applicable(Limits(), "eve", (), None) == ()


def test_messages_name_the_limit_and_the_entity():
    acme = Entity("tenant", "acme")
    assert message(RATE, acme, Limit(statements_per_second=100)) == (
        "rate limit for tenant 'acme' exceeded: 100 statements per second"
    )
    assert "concurrency limit for tenant 'acme' exceeded: 2" in message(
        CONCURRENCY, acme, Limit(concurrent_statements=2)
    )
    assert "connection limit for tenant 'acme' exceeded: 3" in message(CONNECTIONS, acme, Limit(client_connections=3))


@pytest.mark.parametrize(
    "value, ms", [("5000", 5000), ("'5s'", 5000), ("1.5s", 1500), ("2min", 120000), ("0", 0), ("'abc'", None)]
)
def test_timeout_values_as_postgresql_reads_them(value, ms):
    assert timeout_ms(value) == ms


# --- the batch marked, SET refused -------------------------------------------------------------


def test_mark_refuses_the_statements_after_the_admitted_ones():
    batch = [(MSG_QUERY, b"q1"), (MSG_BIND, b"b"), (MSG_EXECUTE, b"e"), (MSG_SYNC, b"s"), (MSG_QUERY, b"q2")]
    assert statements(batch) == 3
    refusal = Refusal("53400", "over", "later")
    marked = mark(batch, 1, refusal)
    assert [k for k, _ in marked] == [MSG_QUERY, MSG_BIND, LIMITED_EXECUTE, MSG_SYNC, LIMITED_QUERY]
    assert marked[0] == batch[0] and decode(marked[4][1]) == refusal
    assert mark(batch, 3, refusal) == batch


@pytest.mark.parametrize(
    "sql, refused",
    [
        ("SET statement_timeout = 0", True),
        ("set statement_timeout to '10s'", True),
        ("SET LOCAL statement_timeout = '2s'", True),
        ("SET statement_timeout = 500", False),
        ("SET SESSION statement_timeout TO '1s'", False),
        ("SET LOCAL statement_timeout = '300ms'", False),
        ("SET work_mem = '64MB'", False),
    ],
)
def test_set_statement_timeout_above_the_cap_is_refused(sql, refused):
    counted = []
    got = timeout_refusal(params.effects(sql), sql, TimeoutCap(1000, lambda: counted.append(1)))
    assert (got is not None) == refused
    assert len(counted) == (1 if refused else 0)
    if got is not None:
        assert got.sqlstate == "53400" and "at most 1000 ms" in got.message


# --- the per-process counts and the local rate ------------------------------------------------


def test_limiter_counts_connections_and_statements_in_flight_per_entity():
    rejected = []
    limiter = Limiter(Limits(), on_reject=lambda limit, kind: rejected.append((limit, kind)))
    bob = Applied(Entity("user", "bob"), Limit(client_connections=2, concurrent_statements=1))
    acme = Applied(Entity("tenant", "acme"), Limit(client_connections=3))
    assert limiter.take(CONNECTIONS, [bob, acme]) is None
    assert limiter.take(CONNECTIONS, [bob, acme]) is None
    assert limiter.take(CONNECTIONS, [bob, acme]) == bob  # nothing taken: acme still at 2
    assert limiter.seen[acme.entity].connections == 2
    limiter.give(CONNECTIONS, [bob, acme])
    assert limiter.take(CONNECTIONS, [bob]) is None
    assert limiter.take(CONCURRENCY, [bob]) is None and limiter.take(CONCURRENCY, [bob]) == bob
    assert rejected == [(CONNECTIONS, "user"), (CONCURRENCY, "user")]
    row = next(r for r in limiter.rows() if r[1] == "bob")
    assert row[-3:] == [1, 2, "client_connections=1 concurrent_statements=1"]


def test_limiter_decides_rates_locally_without_redis():
    limiter = Limiter(Limits())
    slow = Applied(Entity("tenant", "t"), Limit(statements_per_second=1, burst=2))
    assert not limiter.shared()
    first = limiter.local([slow], 5)
    assert first.admitted == 2 and first.limiting == slow and 0 < first.retry_after <= 1.0
    assert limiter.local([slow], 1).admitted == 0
