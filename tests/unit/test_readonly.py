"""rewriter.readonly and the ReadClassifier: which statements a replica may serve, never a write judged a read."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from proxy.routing.volatility import ReadClassifier, Volatility
from rewriter.readonly import READ, SESSION, WRITE, read_shape

# What a catalog would say (the integration test reads a real one): enough for the statements below.
VOLATILITY = Volatility(
    functions={
        **dict.fromkeys(["lower", "upper", "abs", "count", "sum", "max", "row_number", "generate_series"], "i"),
        **dict.fromkeys(["now", "pg_catalog.now", "current_setting"], "s"),
        **dict.fromkeys(["nextval", "pg_catalog.nextval", "random", "setval", "vfield", "bernoulli"], "v"),
    },
    operators={**dict.fromkeys(["+", "=", "<", ">", "<=", ">=", "<>", "~~"], "i"), "public.@+@": "v", "@+@": "v"},
    relations={"ul": "u", "vnext": "v", "public.vnext": "v", "tmp": "t", "policed": "p"},
)

SHAPES = [
    # (statement, route, reason) for read_shape alone
    ("SELECT a FROM t WHERE b = $1 ORDER BY c", READ, "read"),
    ("TABLE t", READ, "read"),
    ("VALUES (1), (2)", READ, "read"),
    ("WITH c AS (SELECT * FROM t) SELECT * FROM c JOIN u USING (id)", READ, "read"),
    ("EXPLAIN SELECT * FROM t", READ, "read"),
    ("EXPLAIN (ANALYZE, BUFFERS) SELECT * FROM t", READ, "read"),
    ("COPY t TO STDOUT", READ, "read"),
    ("COPY (SELECT a FROM t) TO STDOUT WITH (FORMAT csv)", READ, "read"),
    ("SELECT 1; SELECT 2", READ, "several reads"),
    ("INSERT INTO t VALUES (1)", WRITE, "INSERT"),
    ("UPDATE t SET a = 1", WRITE, "UPDATE"),
    ("DELETE FROM t", WRITE, "DELETE"),
    ("MERGE INTO t USING u ON t.id = u.id WHEN MATCHED THEN DELETE", WRITE, "MERGE"),
    ("SELECT * FROM t FOR UPDATE", WRITE, "FOR UPDATE"),
    ("SELECT * FROM t FOR NO KEY UPDATE SKIP LOCKED", WRITE, "FOR UPDATE"),
    ("SELECT * FROM (SELECT * FROM t FOR SHARE) s", WRITE, "FOR UPDATE"),
    ("SELECT * FROM t WHERE a IN (SELECT b FROM u FOR KEY SHARE)", WRITE, "FOR UPDATE"),
    ("WITH c AS (SELECT * FROM t FOR UPDATE) SELECT * FROM c", WRITE, "FOR UPDATE"),
    ("SELECT 1 UNION ALL SELECT 2 FOR UPDATE", WRITE, "FOR UPDATE"),
    ("WITH c AS (INSERT INTO t VALUES (1) RETURNING *) SELECT * FROM c", WRITE, "data-modifying WITH"),
    ("WITH a AS (WITH b AS (DELETE FROM t RETURNING *) SELECT * FROM b) SELECT * FROM a", WRITE, "data-modifying"),
    ("SELECT * FROM (WITH w AS (UPDATE t SET a = 1 RETURNING a) SELECT a FROM w) s", WRITE, "data-modifying"),
    ("WITH c AS (SELECT 1) INSERT INTO t SELECT * FROM c", WRITE, "INSERT"),
    ("SELECT * INTO newt FROM t", WRITE, "SELECT INTO"),
    ("SELECT 1 UNION SELECT 2 INTO newt", WRITE, "SELECT INTO"),
    ("CREATE TABLE x AS SELECT * FROM t", WRITE, "CREATE TABLE AS"),
    ("CREATE MATERIALIZED VIEW m AS SELECT 1", WRITE, "CREATE MATERIALIZED VIEW"),
    ("EXPLAIN ANALYZE INSERT INTO t VALUES (1)", WRITE, "EXPLAIN ANALYZE of INSERT"),
    ("EXPLAIN (ANALYZE) WITH c AS (DELETE FROM t RETURNING *) SELECT * FROM c", WRITE, "data-modifying"),
    ("EXPLAIN UPDATE t SET a = 1", WRITE, "EXPLAIN of UPDATE"),
    ("COPY t FROM STDIN", WRITE, "COPY FROM"),
    ("COPY t TO '/tmp/t.csv'", WRITE, "COPY TO a file"),
    ("COPY t TO PROGRAM 'cat'", WRITE, "COPY TO a file"),
    ("COPY (DELETE FROM t RETURNING *) TO STDOUT", WRITE, "COPY of DELETE"),
    ("SELECT 1; INSERT INTO t VALUES (1)", WRITE, "INSERT"),
    ("SELECT 1; BEGIN", WRITE, "session and read"),
    ("SELECT * FROM pg_temp.tmp", WRITE, "temporary table pg_temp.tmp"),
    ("SELECT * FROM pg_temp_3.tmp", WRITE, "temporary table"),
    ("/* pgwarden:primary */ SELECT 1", WRITE, "pgwarden:primary comment"),
    ("  /*PGWARDEN : Primary*/\nSELECT 1", WRITE, "pgwarden:primary comment"),
    ("-- from the ORM\n/* pgwarden:primary */ SELECT 1", WRITE, "pgwarden:primary comment"),
    ("SELECT 1 /* pgwarden:primary */", READ, "read"),
    ("SELECT txid_current()", WRITE, "transaction id"),
    ("SELECT pg_catalog.pg_current_xact_id()", WRITE, "transaction id"),
    ("SELEC 1", WRITE, "does not parse"),
    ("SELECT * FROM a.b.c", WRITE, "three-part"),
    ("LOCK t", WRITE, "LOCK"),
    ("CALL p()", WRITE, "CALL"),
    ("DO $$ BEGIN END $$", WRITE, "DO"),
    ("NOTIFY c", WRITE, "NOTIFY"),
    ("LISTEN c", WRITE, "LISTEN"),
    ("PREPARE q AS SELECT 1", WRITE, "PREPARE"),
    ("EXECUTE q", WRITE, "EXECUTE"),
    ("DECLARE c CURSOR FOR SELECT 1", WRITE, "DECLARE"),
    ("FETCH c", WRITE, "FETCH"),
    ("TRUNCATE t", WRITE, "TRUNCATE"),
    ("VACUUM t", WRITE, "VACUUM"),
    ("CREATE TABLE x (a int)", WRITE, "CREATE"),
    ("PREPARE TRANSACTION 'x'", WRITE, "PREPARE TRANSACTION"),
    ("COMMIT PREPARED 'x'", WRITE, "COMMIT PREPARED"),
    ("SET TRANSACTION ISOLATION LEVEL SERIALIZABLE", WRITE, "SERIALIZABLE"),
    ("SET default_transaction_isolation = 'serializable'", WRITE, "serializable"),
    ("SET SESSION CHARACTERISTICS AS TRANSACTION READ WRITE", WRITE, "READ WRITE"),
    ("SET standard_conforming_strings = off", WRITE, "reads statement text"),
    ("SET client_encoding = 'SJIS'", WRITE, "reads statement text"),
    ("SET standard_conforming_strings = on", SESSION, "SET"),
    ("SET search_path = public", SESSION, "SET"),
    ("SET TRANSACTION READ ONLY", SESSION, "SET"),
    ("RESET ALL", SESSION, "RESET"),
    ("SHOW work_mem", SESSION, "SHOW"),
    ("DISCARD ALL", SESSION, "DISCARD"),
    ("DEALLOCATE ALL", SESSION, "DEALLOCATE"),
    ("SAVEPOINT s", SESSION, "SAVEPOINT"),
    ("RELEASE s", SESSION, "RELEASE"),
    ("ROLLBACK TO SAVEPOINT s", SESSION, "ROLLBACK TO"),
    ("", SESSION, "empty"),
]

TRANSACTIONS = [
    # (statement, begins, ends)
    ("BEGIN", "read_write", False),
    ("BEGIN READ ONLY", "read_only", False),
    ("START TRANSACTION READ ONLY, ISOLATION LEVEL REPEATABLE READ", "read_only", False),
    ("BEGIN ISOLATION LEVEL SERIALIZABLE READ ONLY", "read_write", False),
    ("START TRANSACTION READ ONLY, ISOLATION LEVEL SERIALIZABLE, DEFERRABLE", "read_write", False),
    ("BEGIN READ ONLY READ WRITE", "read_write", False),
    ("BEGIN READ WRITE", "read_write", False),
    ("COMMIT", None, True),
    ("END", None, True),
    ("ROLLBACK", None, True),
    ("ABORT", None, True),
    ("COMMIT AND CHAIN", None, True),
    ("ROLLBACK TO s", None, False),
    ("COMMIT; BEGIN READ ONLY", "read_only", True),
    ("BEGIN READ ONLY; COMMIT", None, True),
]

JUDGED = [
    # (statement, route, reason) for the classifier over VOLATILITY
    ("SELECT lower(a), now() FROM t WHERE b = 1", READ, "read"),
    ("SELECT nextval('s')", WRITE, "calls volatile function nextval()"),
    ("SELECT pg_catalog.nextval('s')", WRITE, "calls volatile function pg_catalog.nextval()"),
    ("SELECT frobnicate(1)", WRITE, "unknown function frobnicate()"),
    ("SELECT a FROM t ORDER BY random()", WRITE, "random()"),
    ("VALUES (1, nextval('s'))", WRITE, "nextval()"),
    ("SELECT * FROM t, LATERAL (SELECT nextval('s')) l", WRITE, "nextval()"),
    ("SELECT * FROM generate_series(1, nextval('s'))", WRITE, "nextval()"),
    ("SELECT * FROM t TABLESAMPLE SYSTEM (random())", WRITE, "random()"),
    ("SELECT count(*) FILTER (WHERE random() > 0) FROM t", WRITE, "random()"),
    ("SELECT row_number() OVER (ORDER BY random()) FROM t", WRITE, "random()"),
    ("SELECT CASE WHEN a > 0 THEN setval('s', 1) END FROM t", WRITE, "setval()"),
    ("SELECT t.vfield FROM t", WRITE, "field notation"),
    ("SELECT (t).vfield FROM t", WRITE, "field notation"),
    ("SELECT t.a FROM t", READ, "read"),
    ("SELECT 1 OPERATOR(public.@+@) 2", WRITE, "operator public.@+@"),
    ("SELECT 1 @+@ 2", WRITE, "operator @+@"),
    ("SELECT 1 ### 2", WRITE, "unknown operator ###"),
    ("SELECT a FROM t WHERE a IS DISTINCT FROM 1 AND b BETWEEN 1 AND 2", READ, "read"),
    ("SELECT * FROM ul", WRITE, "reads unlogged table ul"),
    ("SELECT * FROM public.vnext", WRITE, "reads view public.vnext that calls a volatile function"),
    ("SELECT * FROM t WHERE EXISTS (SELECT 1 FROM vnext)", WRITE, "view vnext"),
    ("SELECT * FROM tmp", WRITE, "temporary table tmp"),
    ("SELECT * FROM policed", WRITE, "row security policy"),
    ("COPY ul TO STDOUT", WRITE, "unlogged"),
    ("EXPLAIN ANALYZE SELECT nextval('s')", WRITE, "nextval()"),
    ("SELECT 1; SELECT nextval('s')", WRITE, "nextval()"),
    ("BEGIN READ ONLY", SESSION, "BEGIN"),
    ("INSERT INTO t VALUES (1)", WRITE, "INSERT"),
]


@pytest.mark.parametrize(("sql", "route", "reason"), SHAPES)
def test_shape(sql: str, route: str, reason: str) -> None:
    shape = read_shape(sql)
    assert (shape.route, reason in shape.reason) == (route, True), shape


@pytest.mark.parametrize(("sql", "begins", "ends"), TRANSACTIONS)
def test_transaction(sql: str, begins: str | None, ends: bool) -> None:
    shape = read_shape(sql)
    assert (shape.route, shape.begins, shape.ends) == (SESSION, begins, ends)


@pytest.mark.parametrize(("sql", "route", "reason"), JUDGED)
def test_judged(sql: str, route: str, reason: str) -> None:
    judgement = ReadClassifier(VOLATILITY).judge(sql)
    assert (judgement.route, reason in judgement.reason) == (route, True), judgement


def test_names_collected() -> None:
    shape = read_shape(
        "SELECT s.f(a), count(*) OVER w, max(b) FROM sch.t1 JOIN t2 ON t1.a OPERATOR(pg_catalog.=) t2.a "
        "WHERE a ~~ 'x%' AND b IN (SELECT c FROM t3) GROUP BY 1 WINDOW w AS (ORDER BY lower(c))"
    )
    assert shape.route == READ
    assert shape.functions == {"s.f", "count", "max", "lower"}
    assert shape.operators == {"pg_catalog.=", "~~", "="}  # IN (subquery) compares with "="
    assert shape.relations == {"sch.t1", "t2", "t3"}


def test_cte_names_are_not_relations() -> None:
    assert read_shape("WITH t AS (SELECT 1 AS a) SELECT a FROM t, u").relations == {"u"}


def test_nothing_is_read_before_volatility() -> None:
    judgement = ReadClassifier(None).judge("SELECT 1")
    assert judgement.route == WRITE and "not read yet" in judgement.reason
    assert ReadClassifier(None).judge("BEGIN READ ONLY").begins == "read_only"


def test_cache_is_bounded_and_evicts_oldest() -> None:
    classifier = ReadClassifier(VOLATILITY, cap=3)
    for i in range(5):
        classifier.judge(f"SELECT {i}")
    assert list(classifier.cache) == ["SELECT 2", "SELECT 3", "SELECT 4"]
    assert classifier.judge("SELECT 4") is classifier.cache["SELECT 4"]
    long = "SELECT '" + "x" * 30_000 + "'"
    assert classifier.judge(long).route == READ and long not in classifier.cache


# --- property: a read composed around one write part is never READ -----------------------------------

EXPR_TO_EXPR = ["lower({})", "({} + 1)", "abs({})", "CASE WHEN a > 0 THEN {} ELSE 0 END", "coalesce({}, 0)",
                "ARRAY[{}]", "(SELECT {})", "max({}) OVER (ORDER BY a)", "{} IN (1, 2)", "ROW({}, 1)"]  # fmt: skip
EXPR_TO_QUERY = [
    "SELECT {} FROM t",
    "SELECT a FROM t WHERE {} > 0",
    "SELECT a FROM t ORDER BY {}",
    "VALUES (1, {})",
    "SELECT a FROM t, LATERAL (SELECT {} AS x) l",
    "SELECT a FROM t GROUP BY a HAVING max({}) > 0",
    "SELECT sum(a) FILTER (WHERE {} > 0) FROM t",
    "SELECT * FROM generate_series(1, {})",
    "SELECT a FROM t JOIN u ON {} = u.b",
]
QUERY_TO_EXPR = ["(SELECT x FROM ({}) s LIMIT 1)", "EXISTS ({})", "a IN ({})", "a = ANY (ARRAY({}))"]
QUERY_TO_QUERY = [
    "SELECT * FROM ({}) s",
    "WITH c AS ({}) SELECT * FROM c",
    "WITH RECURSIVE c AS ({}) SELECT * FROM c",
    "SELECT 1 UNION ALL ({})",
    "({}) EXCEPT SELECT 2",
    "SELECT * FROM t JOIN ({}) s ON true",
    "SELECT * FROM t WHERE EXISTS ({})",
    "SELECT * FROM t, LATERAL ({}) l",
]
TOP = ["{}", "EXPLAIN {}", "EXPLAIN ANALYZE {}", "COPY ({}) TO STDOUT", "SELECT 1; {}", "{}; SELECT 2"]
# (clean part, the write part in its place, its kind: "e" expression or "q" query)
POISONS = [
    ("a", "nextval('s')", "e"),
    ("a", "pg_catalog.nextval('s')", "e"),
    ("a", "random()", "e"),
    ("a", "a OPERATOR(public.@+@) 1", "e"),
    ("a", "t.vfield", "e"),
    ("SELECT a FROM t", "SELECT a FROM t FOR UPDATE", "q"),
    ("SELECT a FROM t", "SELECT a FROM t FOR KEY SHARE", "q"),
    ("SELECT a FROM t", "SELECT a FROM (SELECT a FROM t FOR NO KEY UPDATE) s", "q"),
    ("SELECT a FROM t", "WITH w AS (INSERT INTO t (a) VALUES (1) RETURNING a) SELECT a FROM w", "q"),
    ("SELECT a FROM t", "WITH c AS (WITH w AS (DELETE FROM t RETURNING a) SELECT a FROM w) SELECT a FROM c", "q"),
    ("SELECT a FROM t", "SELECT a FROM ul", "q"),
]


@st.composite
def composed(draw: st.DrawFn) -> tuple[str, str]:
    """(clean, poisoned): the same composition of reads around a clean part and around a write part."""
    clean, poison, kind = draw(st.sampled_from(POISONS))
    for _ in range(draw(st.integers(0, 5))):
        if kind == "e":
            template = draw(st.sampled_from(EXPR_TO_EXPR + EXPR_TO_QUERY))
            kind = "e" if template in EXPR_TO_EXPR else "q"
        else:
            template = draw(st.sampled_from(QUERY_TO_QUERY + QUERY_TO_EXPR))
            kind = "q" if template in QUERY_TO_QUERY else "e"
        clean, poison = template.format(clean), template.format(poison)
    if kind == "e":
        clean, poison = f"SELECT {clean}", f"SELECT {poison}"
    if draw(st.booleans()):
        clean, poison = f"SELECT * FROM ({clean}) s", f"SELECT * INTO newt FROM ({poison}) s"
    top = draw(st.sampled_from(TOP))
    return top.format(clean), top.format(poison)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(composed())
def test_a_write_part_is_never_read(pair: tuple[str, str]) -> None:
    clean, poisoned = pair
    classifier = ReadClassifier(VOLATILITY)
    assert classifier.judge(clean).route == READ, clean  # the composition itself is a read
    judgement = classifier.judge(poisoned)
    assert judgement.route == WRITE, (poisoned, judgement)
