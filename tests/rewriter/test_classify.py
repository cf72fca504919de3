"""classify(): statement kinds by PostgreSQL's parser, relations read and written, locks and calls."""

from __future__ import annotations

import pytest

from rewriter import classify

KINDS = [
    ("RELEASE SAVEPOINT s1", "savepoint"),
    ("ROLLBACK TO SAVEPOINT s1", "savepoint"),
    ("SAVEPOINT s1", "savepoint"),
    ("BEGIN READ ONLY", "transaction"),
    ("COMMIT PREPARED 'x'", "two_phase"),
    ("PREPARE TRANSACTION 'x'", "two_phase"),
    ("MOVE 5 IN c", "fetch"),
    ("FETCH ALL FROM c", "fetch"),
    ("CLOSE c", "close"),
    ("LISTEN ch", "listen"),
    ("NOTIFY ch", "notify"),
    ("DISCARD ALL", "discard"),
    ("DEALLOCATE ALL", "deallocate"),
    ("SET CONSTRAINTS ALL DEFERRED", "set_constraints"),
    ("SET TIME ZONE 'UTC'", "set"),
    ("RESET ALL", "reset"),
    ("SHOW TimeZone", "show"),
    ("DECLARE c CURSOR FOR SELECT 1", "declare"),
    ("EXPLAIN (FORMAT JSON) SELECT 1", "explain"),
    ("COPY t TO STDOUT", "copy_to"),
    ("COPY t FROM STDIN", "copy_from"),
    ("TRUNCATE t", "truncate"),
    ("SELECT * INTO t2 FROM t", "ddl"),
    ("CREATE TABLE t (a int)", "ddl"),
    ("DO $$ BEGIN END $$", "do"),
    ("MERGE INTO t USING u ON true WHEN MATCHED THEN DELETE", "merge"),
    ("SELECT FROM WHERE", "invalid"),
]


@pytest.mark.parametrize(("sql", "kind"), KINDS)
def test_kind(sql: str, kind: str) -> None:
    assert classify(sql).kind == kind


def test_reads_writes_resolve_names_and_skip_ctes() -> None:
    kind = classify(
        "WITH orders AS (SELECT * FROM orders) UPDATE app.t SET a = 1 FROM orders, pg_class",
        search_path=("app", "public"),
    )
    assert kind.writes == ("app.t",)
    assert kind.reads == ("app.orders", "pg_catalog.pg_class")


def test_multi_statement_parts_and_read_only() -> None:
    kind = classify("SELECT 1 FROM t; SELECT nextval('s') FROM u FOR UPDATE")
    assert kind.kind == "multi" and [p.kind for p in kind.parts] == ["select", "select"]
    assert kind.reads == ("public.t", "public.u") and kind.functions == ("nextval",)
    assert kind.locks and not kind.read_only
    assert classify("SELECT a FROM t").read_only
    assert not classify("EXPLAIN ANALYZE DELETE FROM t").read_only


def test_setting_names_and_values() -> None:
    assert classify("SET LOCAL statement_timeout = 5").setting == "statement_timeout"
    kind = classify("SET search_path TO app, \"Public\", 'x y'")
    assert (kind.setting, kind.values) == ("search_path", ("app", "Public", "x y"))
    assert classify("SHOW pgwarden.tenant").setting == "pgwarden.tenant"
