"""The result cache's pure parts: which statements are eligible, the byte-bounded answers, versions and signatures,
and what a captured answer may hold."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from proxy.cache.eligible import Catalog, Judge, judge, table_problem
from proxy.cache.lru import Answers
from proxy.cache.results import ResultCache
from proxy.cache.versions import LocalVersions, lsn_text
from proxy.config.cache import Cache
from proxy.ops.stats import Shapes
from proxy.pooling.prepared import Registry
from proxy.routing.volatility import Volatility
from proxy.session.caching import Caching, plain_answer
from proxy.session.probe import batch_key, bound_probe
from proxy.session.state import SessionState
from proxy.session.statements import Statements
from proxy.wire import protocol
from proxy.wire.protocol import MSG_BIND, MSG_DESCRIBE, MSG_EXECUTE, MSG_PARSE, MSG_SYNC

FUNCTIONS = {"lower": "i", "count": "i", "sum": "i", "now": "s", "random": "v", "my_reader": "s"}
OPERATORS = {"=": "i", ">": "s", "+": "i", "<": "i"}
CALLS = SimpleNamespace(functions=FUNCTIONS, operators=OPERATORS)
CATALOG = Catalog(
    frozenset({"public.items", "shop.orders"}),
    {"public.logs": "public.logs is unlogged or temporary: its writes are not in the WAL"},
    CALLS,
)


@pytest.mark.parametrize(
    ("sql", "tables"),
    [
        ("select name from items where id = 1", ("items",)),
        ("SELECT lower(name) FROM public.items i JOIN shop.orders o ON o.item = i.id", ("items", "orders")),
        ("with x as (select * from items) select count(*) from x", ("items",)),
        ("select * from items where id = (select max(id) from items)", None),  # max(): unknown here
        ("select * from orders", ("orders",)),  # unqualified: the listed table of that name
    ],
)
def test_eligible_reads_name_their_tables(sql: str, tables: tuple[str, ...] | None) -> None:
    assert judge(sql, CATALOG, stable_ok=False).tables == tables


@pytest.mark.parametrize(
    ("sql", "why"),
    [
        ("select * from notes", "not in cache.tables"),
        ("select * from public.logs", "unlogged"),
        ("select * from other.items", "not in cache.tables"),  # qualified: must be listed as written
        ("select now(), name from items", "stable function now()"),
        ("select current_timestamp, name from items", "stable function now()"),
        ("select name from items where at > 'today'", "stable function now()"),
        ("select random() from items", "volatile function random()"),
        ("select my_reader(id) from items", "stable function my_reader()"),
        ("select * from items for share", "FOR UPDATE"),  # (any row lock is named so)
        ("select * from items tablesample bernoulli (5)", "TABLESAMPLE"),
        ("select * from items; select 1", "several statements"),
        ("update items set name = 'x'", "not a SELECT"),
        ("explain select * from items", "not a SELECT"),
        ("select 1", "reads no table"),
        ("select * from pg_class", "not in cache.tables"),
        ("select * into t2 from items", "SELECT INTO"),
        ("with w as (delete from items returning *) select * from w", "data-modifying WITH"),
        ("selec * from items", "does not parse"),
    ],
)
def test_ineligible_statements_say_why(sql: str, why: str) -> None:
    verdict = judge(sql, CATALOG, stable_ok=False)
    assert verdict.tables is None and why in verdict.reason, verdict.reason


def test_stable_functions_only_when_the_config_allows_them() -> None:
    assert judge("select now(), name from items", CATALOG, stable_ok=True).tables == ("items",)
    assert judge("select random() from items", CATALOG, stable_ok=True).tables is None
    assert judge("select * from items", Catalog(CATALOG.usable, {}, None), stable_ok=True).tables is None


def test_the_judge_parses_each_shape_once() -> None:
    seen: list[str] = []

    def shape(sql: str) -> str:
        seen.append(sql)
        return sql.replace("2", "1")

    one = Judge(CATALOG, stable_ok=False, shape_key=shape)
    assert one("select * from items where id = 1").tables == one("select * from items where id = 2").tables
    assert len(one._seen) == 1


@pytest.mark.parametrize(
    ("row", "problem"),
    [
        ({"kind": "r", "persistence": "p", "row_security": False, "children": False, "same_name": 1}, None),
        ({"kind": "v", "persistence": "p", "row_security": False, "children": False, "same_name": 1}, "not a plain"),
        ({"kind": "r", "persistence": "u", "row_security": False, "children": False, "same_name": 1}, "unlogged"),
        ({"kind": "r", "persistence": "p", "row_security": True, "children": False, "same_name": 1}, "row level"),
        ({"kind": "r", "persistence": "p", "row_security": False, "children": True, "same_name": 1}, "children"),
        ({"kind": "r", "persistence": "p", "row_security": False, "children": False, "same_name": 2}, "also named"),
    ],
)
def test_listed_tables_that_cannot_be_cached(row: dict, problem: str | None) -> None:
    found = table_problem({"name": "public.items", **row})
    assert found is None if problem is None else problem in (found or "")


@settings(max_examples=200)
@given(st.lists(st.tuples(st.integers(0, 30), st.binary(max_size=300)), max_size=60), st.integers(0, 3000))
def test_answers_stay_within_their_bytes_and_keep_the_newest(puts: list[tuple[int, bytes]], budget: int) -> None:
    answers = Answers(budget)
    for key, value in puts:
        answers.put(key, "s", value, ttl_s=60)
        assert answers.size <= budget
        entry = answers.get(key)
        if len(value) + 100 <= budget:
            assert entry is not None and entry.answer == value
    assert answers.size == sum(len(e.answer) + 100 for e in answers._entries.values())


def test_an_answer_past_its_ttl_is_gone() -> None:
    answers = Answers(10_000)
    answers.put("k", "s", b"x", ttl_s=-1)
    assert answers.get("k") is None and answers.size == 0


@given(st.lists(st.tuples(st.sampled_from(["a", "b", "c"]), st.integers(0, 2**40)), max_size=30))
def test_a_bump_or_a_new_generation_always_changes_the_signature(bumps: list[tuple[str, int]]) -> None:
    versions = LocalVersions()
    tables = ("a", "b")
    for table, lsn in bumps:
        before = versions.signature("db", tables)
        versions.bump("db", frozenset({table}), lsn)
        after = versions.signature("db", tables)
        if table in tables and lsn_text(lsn) > before.split(",")[1 + tables.index(table)]:
            assert after != before
        elif table not in tables:
            assert after == before
    before = versions.signature("db", tables)
    versions.rotate("db")
    assert versions.signature("db", tables) != before


def test_versions_never_go_back() -> None:
    versions = LocalVersions()
    versions.bump("db", frozenset({"a"}), 0x200)
    high = versions.signature("db", ("a",))
    versions.bump("db", frozenset({"a"}), 0x100)
    assert versions.signature("db", ("a",)) == high


def test_a_captured_answer_holds_only_rows_and_tags() -> None:
    rows = (
        protocol.message(b"T", b"\x00\x00")
        + protocol.message(b"D", b"\x00\x00")
        + protocol.command_complete("SELECT 1")
    )
    assert plain_answer(rows, len(rows))
    notice = rows + protocol.message(b"N", b"Sx\x00\x00")
    assert not plain_answer(notice, len(notice))
    status = protocol.message(b"S", b"TimeZone\x00UTC\x00") + rows
    assert not plain_answer(status, len(status))
    assert not plain_answer(rows[:-1], len(rows) - 1)  # cut short


def test_facts_judge_a_shape_once_and_key_each_message_by_its_own_text() -> None:
    """Texts differing only in integers share one judgement (and the statistics' shaping), never a
    key: the answer of `id = 5` must not be looked up under `id = 6`'s text."""

    volatility = Volatility(FUNCTIONS, OPERATORS, {})
    catalog = Catalog(frozenset({"public.items"}), {}, volatility)
    reads: list[str] = []

    async def read_catalog(database: str) -> tuple[Volatility, Catalog]:
        reads.append(database)
        return volatility, catalog

    async def scenario() -> None:
        config = Cache(tables=["public.items"])
        shapes = Shapes()
        caching = Caching(config, ResultCache(config), lambda _db: SimpleNamespace(), read_catalog, shapes)
        caching.classifier("db")
        assert caching.facts("db", protocol.query("select 1")) is None  # (the catalog is not read yet)
        await caching._loading["db"]
        five, six = (protocol.query(f"select qty from items where id = {n}") for n in (5, 6))
        a, b = caching.facts("db", five), caching.facts("db", six)
        assert a is not None and b is not None
        assert (a.tables, a.text, b.tables, b.text) == (("items",), shapes.of(five)[0], ("items",), shapes.of(six)[0])
        assert a.route is b.route  # judged once
        write = caching.facts("db", protocol.query("update items set qty = 1 where id = 5"))
        assert write is not None and write.tables is None and write.route.writes and not write.route.read
        parse = protocol.parse("", "select qty from notes where id = $1")
        assert (f := caching.facts("db", parse)) is not None and f.tables is None and f.route.read
        assert reads == ["db"]

    asyncio.run(scenario())


@settings(max_examples=60, deadline=None)
@given(
    args=st.lists(st.one_of(st.none(), st.binary(max_size=12)), max_size=3),
    describe=st.booleans(),
    limit=st.integers(0, 3),
    named=st.booleans(),
)
def test_a_judged_batch_is_keyed_as_batch_key_keys_it(
    args: list[bytes | None], describe: bool, limit: int, named: bool
) -> None:
    """The fast key of a statement judged before (bound_probe: text and types from its facts) is the
    one the general path gives: a hit on either is the same answer."""
    text = "select qty from items where id = $1"
    names = Statements(Registry())
    names.remember("s1", text, b"\x00\x01\x00\x00\x00\x17", "")
    parse = protocol.parse("", text, b"\x00\x01\x00\x00\x00\x17")
    values = b"".join(b"\xff\xff\xff\xff" if a is None else len(a).to_bytes(4, "big") + a for a in args)
    name = b"s1" if named else b""
    bind = protocol.message(
        b"B", b"\x00" + name + b"\x00\x00\x00" + len(args).to_bytes(2, "big") + values + b"\x00\x00"
    )
    msgs = [] if named else [(MSG_PARSE, parse)]
    msgs += [(MSG_BIND, bind)] + ([(MSG_DESCRIBE, protocol.message(b"D", b"P\x00"))] if describe else [])
    msgs += [(MSG_EXECUTE, protocol.message(b"E", b"\x00" + limit.to_bytes(4, "big"))), (MSG_SYNC, protocol.SYNC)]
    state = SessionState(1, 2, database="db", user="u", settings={"TimeZone": "UTC"})
    judge = Judge(CATALOG, stable_ok=False)
    slow = batch_key(msgs, state, names, None, judge)
    fast = bound_probe(msgs, state, ("items",), text, b"\x00\x01\x00\x00\x00\x17")
    clock = any(
        a is not None and any(w in a.lower() for w in (b"now", b"today", b"tomorrow", b"yesterday")) for a in args
    )
    assert slow == fast and (slow is None) == clock
