"""Judging functions PostgreSQL calls unnamed (casts, type I/O, domain checks, operator classes): pure tests."""

from __future__ import annotations

import pytest

from rewriter.api import rewrite
from rewriter.catalog import CastFacts, CatalogFacts, Routine, TypeFacts
from rewriter.context import Column, Context, MaskSpec, TableRule, UserRoutines
from rewriter.result import Deny
from rewriter.risks import implicit_risks

TEXT, INT4 = 25, 23
TREF, TREF_ARRAY, DCHK, DOUTER, TSORT, HOLDER, MOOD = 20000, 20001, 20002, 20003, 20004, 20005, 20006
LEAK = Routine(30000, "public", "leak")

FACTS = CatalogFacts(
    types={
        TREF: TypeFacts(TREF, "public.tref"),
        TREF_ARRAY: TypeFacts(TREF_ARRAY, "public._tref", TREF, (TREF,)),
        DCHK: TypeFacts(DCHK, "public.dchk", 0, (TEXT,), (Routine(30001, "public", "chk", "constraint c function"),)),
        DOUTER: TypeFacts(DOUTER, "public.douter", 0, (DCHK,)),
        TSORT: TypeFacts(TSORT, "public.tsort", 0, (), (Routine(30002, "ops", "cmp", "default btree operator class"),)),
        HOLDER: TypeFacts(HOLDER, "public.holder", 0, (INT4, DOUTER, TSORT)),
        MOOD: TypeFacts(MOOD, "public.mood", 0, (), (Routine(3504, "pg_catalog", "enum_in", "input function"),)),
    },
    casts=(CastFacts(TEXT, TREF, "pg_catalog.text", "public.tref", "e", LEAK),),
    columns={"public.holder": (("d", DOUTER), ("s", TSORT), ("m", MOOD))},
    signatures={"public.order_total": frozenset({TREF}), "public.uses_dchk": frozenset({DCHK})},
    builtin_types=frozenset({"pg_catalog.text", "pg_catalog.int4", "pg_catalog.date"}),
)
SCHEMA = {
    "public.holder": (Column("id", "integer"), Column("d", "douter"), Column("s", "tsort"), Column("m", "mood")),
    "public.t": (Column("id", "integer"), Column("name", "text")),
}
TABLES = {name: TableRule(name, None, frozenset({"select", "insert", "update", "delete"})) for name in SCHEMA}


def ctx(allowed: frozenset[str] = frozenset(), facts: CatalogFacts = FACTS) -> Context:
    return Context(TABLES, SCHEMA, None, allowed, implicit=implicit_risks(facts, allowed))


@pytest.mark.parametrize(
    "sql, word",
    [
        ("select ('x'::text)::tref", "public.tref"),
        ("select cast(name as public.tref) from t", "public.tref"),
        ("select tref 'x'", "public.tref"),
        ("select tref('x'::text)", "a cast to public.tref"),
        ("select ('x'::text).tref", "public.tref"),
        ("select 'x'::text::tref[]", "public.tref"),
        ("select '{x}'::text[]::_tref", "public._tref"),
        ("select 'x'::dchk", "public.chk"),
        ("select 'x'::douter", "public.douter"),
        ("select id from holder order by s", '"s"'),
        ("select distinct d from holder", '"d"'),
        ("select * from holder", "holder"),
        ("select h from holder h", "whole row"),
        ("insert into holder (id) values (1)", "new row"),
        ("copy holder to stdout", "every column"),
        ("update holder set d = 'x'", '"d"'),
        ("select * from json_to_record('{}') as r(a dchk)", "dchk"),
    ],
)
def test_unsafe_implicit_calls_are_refused(sql, word):
    result = rewrite(sql, ctx())
    assert isinstance(result, Deny), sql
    assert word in result.message and result.rule == "functions.allow" and "functions.allow" in result.hint


@pytest.mark.parametrize("sql", ["select record_in('(x)', 20000, -1)", "select pg_catalog.array_recv(null, 1, 1)"])
def test_built_ins_that_run_any_types_input_function_are_refused(sql):
    result = rewrite(sql, ctx())
    assert isinstance(result, Deny) and "input or receive function" in result.message


@pytest.mark.parametrize(
    "sql",
    [
        "select '1'::int, now()::date, name::text, cast(id as bigint) from t",
        "select id, m from holder order by m",
        "select 'happy'::mood",
        "select * from t",
        "select int4('1'), ('x'::text).length",
        "copy holder (id, m) to stdout",
        "select 1::pg_catalog.int4",
    ],
)
def test_built_ins_and_safe_user_types_are_allowed(sql):
    assert not isinstance(rewrite(sql, ctx()), Deny), sql


def test_allowing_every_function_behind_a_type_makes_it_usable():
    allowed = ctx(frozenset({"public.leak", "public.chk", "ops.cmp"}))
    for sql in [
        "select ('x'::text)::tref",
        "select 'x'::douter",
        "select * from holder order by s",
        "insert into holder (id) values (1)",
    ]:
        assert not isinstance(rewrite(sql, allowed), Deny), sql
    assert isinstance(rewrite("select 'x'::dchk", ctx(frozenset({"public.leak"}))), Deny)


def test_an_allowed_function_taking_an_unsafe_type_is_refused():
    result = rewrite("select uses_dchk('x')", ctx(frozenset({"public.uses_dchk"})))
    assert isinstance(result, Deny) and "public.dchk" in result.message


def test_a_type_named_like_a_built_in_resolves_by_search_path():
    facts = CatalogFacts(
        types={TREF: TypeFacts(TREF, "public.text", 0, (), (LEAK,))}, builtin_types=frozenset({"pg_catalog.text"})
    )
    assert not isinstance(rewrite("select 'x'::text", ctx(facts=facts)), Deny)
    assert isinstance(rewrite("select 'x'::public.text", ctx(facts=facts)), Deny)
    later = Context({}, {}, None, search_path=("public", "pg_catalog"), implicit=implicit_risks(facts, frozenset()))
    assert isinstance(rewrite("select 'x'::text", later), Deny)


def test_an_unallowed_implicit_cast_between_built_ins_refuses_every_statement():
    facts = CatalogFacts(casts=(CastFacts(INT4, TEXT, "pg_catalog.int4", "pg_catalog.text", "i", LEAK),))
    result = rewrite("select 1", ctx(facts=facts))
    assert isinstance(result, Deny) and "public.leak" in result.message
    assert not isinstance(rewrite("select 1", ctx(frozenset({"public.leak"}), facts)), Deny)
    explicit = CatalogFacts(
        casts=(CastFacts(INT4, TEXT, "pg_catalog.int4", "pg_catalog.text", "e", LEAK),),
        builtin_types=frozenset({"pg_catalog.text", "pg_catalog.int4"}),
    )
    assert not isinstance(rewrite("select 1", ctx(facts=explicit)), Deny)
    assert isinstance(rewrite("select 1::text", ctx(facts=explicit)), Deny)
    assert isinstance(rewrite("select text(1)", ctx(facts=explicit)), Deny)


def test_a_built_in_types_default_operator_class_with_a_user_function_refuses_every_statement():
    facts = CatalogFacts(builtin_opclasses=(("text btree", LEAK),))
    assert isinstance(rewrite("select 1", ctx(facts=facts)), Deny)


def test_a_masked_or_tenant_column_of_an_unsafe_type_refuses_the_relation():
    masked = dict(
        TABLES, **{"public.holder": TableRule("public.holder", None, frozenset({"select"}), {"d": MaskSpec("redact")})}
    )
    context = Context(masked, SCHEMA, None, implicit=implicit_risks(FACTS, frozenset()))
    result = rewrite("select id from holder", context)
    assert isinstance(result, Deny) and "masked column" in result.message
    tenant = dict(TABLES, **{"public.holder": TableRule("public.holder", "s", frozenset({"select"}))})
    result = rewrite(
        "select id from holder", Context(tenant, SCHEMA, "acme", implicit=implicit_risks(FACTS, frozenset()))
    )
    assert isinstance(result, Deny) and '"s"' in result.message


def test_an_operator_whose_allowed_function_takes_an_unsafe_type_is_refused():
    allowed = frozenset({"public.uses_dchk"})
    context = Context(
        TABLES,
        SCHEMA,
        None,
        allowed,
        routines=UserRoutines(frozenset({"public.uses_dchk"}), {"public.===": frozenset({"public.uses_dchk"})}),
        implicit=implicit_risks(FACTS, allowed),
    )
    result = rewrite("select 'x' === 'y'", context)
    assert isinstance(result, Deny) and "operator ===" in result.message and "public.dchk" in result.message
