"""Pure parts of keeping clients apart on a shared backend: statement names, state detection, SQL names."""

from __future__ import annotations

import doctest
import hashlib

import pytest
from hypothesis import given
from hypothesis import strategies as st

from proxy.pooling import prepared
from proxy.session import held, params, session_sql, sql_names
from proxy.session.params import Arg, Effect


@pytest.mark.parametrize("module", [held, params, prepared, sql_names])
def test_docstring_examples(module) -> None:
    assert doctest.testmod(module).failed == 0


def test_names_are_keyed_per_process_and_bound_to_the_scope() -> None:
    one, two = prepared.Registry(), prepared.Registry()
    text, types = "select * from t where id = $1", b"\x00\x01\x00\x00\x00\x17"
    assert one.get(text, types).name != two.get(text, types).name  # another process, another key
    unkeyed = "pgw_" + hashlib.blake2b(text.encode() + b"\x00" + types, digest_size=10).hexdigest()
    assert one.get(text, types).name != unkeyed
    acme, globex = one.get(text, types, "'acme'\x00app\x00v1"), one.get(text, types, "'globex'\x00app\x00v1")
    assert acme is not globex and acme.name != globex.name
    assert one.get(text, types, "'acme'\x00app\x00v2").name != acme.name  # another policy version
    assert one.peek(text, types, "'acme'\x00app\x00v1") is acme and one.peek(text, types) is not acme


@pytest.mark.parametrize(
    "sql",
    [
        "CREATE TEMP TABLE t (x int)",
        "create /* c */ temporary table t (x int)",
        "create global temporary table t (x int)",
        "create table pg_temp.t (x int)",
        'create table "pg_temp".t (x int)',
        "create temp view v as select 1",
        "create temp sequence s",
        "create type pg_temp.int4 as (a int)",
        "create function pg_temp.f() returns int language sql as 'select 1'",
        "select 1 as x into temp t",
        "with a as (select 1) select * into temporary t from a",
        "create temp table t as select 1",
        "declare c cursor with hold for select 1",
        "declare c cursor with/**/hold for select 1",
        "DECLARE c BINARY SCROLL CURSOR WITH HOLD FOR SELECT 1",
        "select pg_advisory_lock(1)",
        "select pg_catalog.pg_try_advisory_lock_shared(1)",
        "select set_config('statement_timeout', '1', false)",
        'select "set_config"($1, $2, false)',
        "SELECT SET_CONFIG('work_mem', '1MB', false)",
        "select 1; create temp table t (x int)",
        "select U&\"set\\005fconfig\"('work_mem', '1MB', false)",
        'create table U&"pg\\005ftemp".t (x int)',
        'select U&"pg_advisory\\005flock"(1)',
    ],
)
def test_state_that_outlives_the_transaction_is_seen(sql) -> None:
    assert params.leaves_state(sql)
    assert params.maybe_stateful(sql)


@pytest.mark.parametrize(
    "sql",
    [
        "select temperature from readings",
        "create temp table t (x int) on commit drop",
        "declare c cursor without hold for select 1",
        "select pg_advisory_xact_lock(1)",
        "select set_config('TimeZone', 'UTC', false)",
        "select 'hold' as word",
    ],
)
def test_state_that_ends_with_the_transaction_is_not(sql) -> None:
    assert not params.leaves_state(sql)


@pytest.mark.parametrize(
    "sql, effect",
    [
        ("EXECUTE q(1)", Effect("execute", "q", args=(Arg(True, "1"),))),
        ('execute "Q"', Effect("execute", "Q")),
        ("explain (analyze) execute q", Effect("execute", "q")),
        ("explain analyze create table t as execute q", Effect("execute", "q")),
        ("create temp table t as execute q(1)", Effect("execute", "q", args=(Arg(True, "1"),))),
        (
            "execute q('acme', 'a' || 'b', null)",
            Effect("execute", "q", args=(Arg(True, "acme"), Arg(False), Arg(True, None))),
        ),
        ("/* x */ deallocate q", Effect("deallocate", "q")),
        ("select 1; deallocate all", Effect("deallocate", "")),
    ],
)
def test_statements_that_name_a_prepared_statement(sql, effect) -> None:
    assert effect in params.effects(sql)
    assert params.maybe_stateful(sql)


def test_sql_names_refuse_a_doubtful_name_until_surely_deallocated() -> None:
    names = sql_names.SqlNames()
    assert names.refusal("never", "acme") is None  # not SQL-prepared: PostgreSQL answers
    names.prepare("q", "acme")
    names.prepare("q", "acme")  # a second PREPARE fails in PostgreSQL: still acme's
    assert names.refusal("q", "acme") is None and names.refusal("q", "globex") is not None
    names.deallocate("", sure=False)
    names.prepare("q", "globex")
    assert names.refusal("q", "globex") is not None and names.refusal("q", "acme") is not None
    names.deallocate("", sure=True)
    assert names.refusal("q", "globex") is None


@given(
    st.lists(
        st.sampled_from(
            ["temp", "hold", "set_config", "advisory_lock", "u&", "select", "tem", "ct&", "s&", "h", "u", "&", "_", " "]
        ),
        max_size=6,
    ),
    st.randoms(),
)
def test_the_factored_prefilter_finds_exactly_the_words(parts, rnd) -> None:
    """The prefilter's fast forms (a factored regular expression, plain byte searches) match
    exactly where one of params.MAY_LEAVE_STATE_WORDS occurs, in any case."""
    text = "".join(c.upper() if rnd.random() < 0.5 else c for c in "".join(parts))
    plain = any(word in text.lower() for word in params.MAY_LEAVE_STATE_WORDS)
    assert (params.MAY_LEAVE_STATE.search(text) is not None) == plain
    assert session_sql.may_leave_state(text.lower().encode()) == plain
