"""Read routing decisions without servers: a batch's route, the session override, the replica chosen, the watermark kept."""

from __future__ import annotations

import asyncio

import pytest
from hypothesis import given
from hypothesis import strategies as st

from proxy.pooling.prepared import Registry
from proxy.routing.balance import choose
from proxy.routing.health import Breaker, ServerState
from proxy.routing.volatility import ReadClassifier, Volatility
from proxy.routing.watermark import Watermarks
from proxy.session import routes
from proxy.session.statements import Statements
from proxy.wire import protocol

VOLATILITY = Volatility(
    functions={"lower": "i", "now": "s", "count": "i", "nextval": "v", "pg_advisory_lock": "v", "pg_notify": "v"},
    operators={"=": "i", ">": "i"},
    relations={},
)
CLASSIFIER = ReadClassifier(VOLATILITY)


def _names() -> Statements:
    return Statements(Registry())


def _parse(sql: str, name: str = "") -> tuple[int, bytes]:
    return protocol.MSG_PARSE, protocol.parse(name, sql)


def _query(sql: str) -> tuple[int, bytes]:
    return protocol.MSG_QUERY, protocol.query(sql)


def _bind(stmt: str = "") -> tuple[int, bytes]:
    return protocol.MSG_BIND, protocol.message(b"B", protocol.cstr("") + protocol.cstr(stmt) + b"\x00\x00" * 3)


BIND = _bind()
EXECUTE = (protocol.MSG_EXECUTE, protocol.message(b"E", protocol.cstr("") + b"\x00\x00\x00\x00"))
SYNC = (protocol.MSG_SYNC, protocol.SYNC)


@pytest.mark.parametrize(
    "msgs, read",
    [
        ([_query("select lower(name) from t where id = 1")], True),
        ([_query("select now(), count(*) from t")], True),
        ([_query("begin read only")], True),
        ([_query("begin")], False),
        ([_query("begin isolation level serializable, read only")], False),
        ([_query("select nextval('s')")], False),
        ([_query("select pg_advisory_lock(1)")], False),
        ([_query("select pg_notify('c', 'x')")], False),
        ([_query("select * from t for update")], False),
        ([_query("/* pgwarden:primary */ select 1")], False),
        ([_query("insert into t values (1)")], False),
        ([_query("select 1"), _query("delete from t")], False),
        ([_parse("select * from t where id = $1"), BIND, EXECUTE, SYNC], True),
        ([_parse("select * from t where id = $1"), BIND, EXECUTE, _parse("update t set a = 1"), BIND, SYNC], False),
        ([BIND, EXECUTE, SYNC], False),  # binds a statement pgwarden never saw
        ([_query("set work_mem = '8MB'")], False),
        ([_query("select unknown_function()")], False),
    ],
)
def test_a_batch_goes_to_a_replica_only_when_every_statement_is_a_read(msgs, read):
    assert routes.judge_batch(msgs, _names(), CLASSIFIER).read is read


def test_nothing_is_read_before_the_catalog_is_known():
    judged = routes.judge_batch([_query("select 1")], _names(), ReadClassifier(None))
    assert not judged.read


def test_session_statements_alone_do_not_count_as_writes():
    assert routes.judge_batch([_query("set work_mem = '8MB'")], _names(), CLASSIFIER).writes is False
    assert routes.judge_batch([_query("begin")], _names(), CLASSIFIER).writes is True


def test_a_bound_named_statement_is_judged_by_its_text():
    names = _names()
    names.remember("s1", "select lower(a) from t", b"\x00\x00", "")
    names.remember("s2", "select nextval('q')", b"\x00\x00", "")
    assert routes.judge_batch([_bind("s1"), EXECUTE, SYNC], names, CLASSIFIER).read
    assert not routes.judge_batch([_bind("s2"), EXECUTE, SYNC], names, CLASSIFIER).read


@pytest.mark.parametrize(
    "text, expected",
    [
        ("SET pgwarden.route = primary", "primary"),
        ("set pgwarden.route to 'replica'", "replica"),
        ("SET SESSION pgwarden.route = auto", "auto"),
        ("set pgwarden.route = sideways", "auto"),
    ],
)
def test_the_session_override(text, expected):
    assert routes.session_route({"pgwarden.route": text}, "auto") == expected


def _server(name: str, lsn: int, outstanding: int = 0, weight: float = 1.0, up: bool = True) -> ServerState:
    server = ServerState(
        name=name,
        host="127.0.0.1",
        port=1,
        kind="replica",
        role="standby",
        weight=weight,
        max_lag_bytes=1 << 30,
        max_lag_ms=10_000,
        breaker=Breaker(3, 5.0),
    )
    server.up, server.lsn, server.outstanding, server.lag_bytes, server.lag_ms = up, lsn, outstanding, 0, 0.0
    return server


def test_the_replica_with_the_fewest_outstanding_per_weight_that_has_the_watermark():
    a, b, c = _server("a", 100, outstanding=3), _server("b", 100, outstanding=1), _server("c", 50)
    assert choose([a, b, c], watermark=0) is c
    assert choose([a, b, c], watermark=100) is b
    assert choose([a, b, c], watermark=101) is None
    heavy = _server("h", 100, outstanding=3, weight=4.0)
    assert choose([a, b, heavy], watermark=100) is heavy  # 3/4 < 1/1


def test_sequential_reads_rotate_by_weight():
    a, b = _server("a", 0), _server("b", 0, weight=2.0)
    picks = []
    for _ in range(30):
        chosen = choose([a, b], 0)
        assert chosen is not None
        chosen.routed += 1
        picks.append(chosen.name)
    assert picks.count("b") == 20 and picks.count("a") == 10


def test_a_replica_down_lagging_or_with_an_open_breaker_is_skipped():
    down, lagging, broken, fine = (_server(n, 100) for n in "dlbf")
    down.up = False
    lagging.lag_ms = 60_000.0
    for _ in range(3):
        broken.breaker.failure(0.0)
    assert choose([down, lagging, broken], 0) is None
    assert choose([down, lagging, broken, fine], 0) is fine


@given(st.lists(st.tuples(st.integers(0, 1000), st.integers(0, 5)), min_size=1, max_size=6), st.integers(0, 1000))
def test_a_chosen_replica_has_always_replayed_the_watermark(servers, watermark):
    replicas = [_server(str(i), lsn, outstanding) for i, (lsn, outstanding) in enumerate(servers)]
    chosen = choose(replicas, watermark)
    if chosen is None:
        assert all(r.lsn < watermark for r in replicas)
    else:
        assert chosen.lsn >= watermark
        load = chosen.outstanding / chosen.weight
        assert all(load <= r.outstanding / r.weight for r in replicas if r.lsn >= watermark)


def test_watermarks_only_move_forward():
    marks = Watermarks()
    marks.advance_local(("db", "t"), 10)
    marks.advance_local(("db", "t"), 5)
    assert marks.local(("db", "t")) == 10
    assert asyncio.run(marks.get(("db", "t"))) == 10


def test_zeroing_integer_constants_never_changes_a_judgement():
    """judge_batch caches by literal_key (one parse per shape): the route must not depend on it."""
    from proxy.ops.stats import literal_key
    from rewriter.readonly import read_shape
    from tests.unit.test_readonly import SHAPES

    extra = ["select * from t where id = 5 for update", "select nextval('s1') limit 3", "insert into t2 values (1)"]
    for sql in [row[0] for row in SHAPES] + extra:
        assert read_shape(literal_key(sql)).route == read_shape(sql).route, sql


def test_one_parse_per_statement_shape_and_one_lookup_per_text_sent_again():
    from proxy.ops.stats import literal_key

    classifier = ReadClassifier(VOLATILITY, shape_key=literal_key)
    first = classifier.judge("select lower(name) from t where id = 5")
    assert classifier.judge("select lower(name) from t where id = 6") is first
    assert list(classifier.cache) == ["select lower(name) from t where id = 0"]
    constant = classifier.judge("select lower(name) from t")
    assert classifier.judge("select lower(name) from t") is constant and len(classifier.cache) == 2
