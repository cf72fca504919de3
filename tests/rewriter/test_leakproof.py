"""The leak-free judgement (rewriter/leakproof.py) and what the rewrite makes of it: fences and guards."""

from __future__ import annotations

import pytest

from rewriter import Deny, Rewrite, rewrite
from rewriter.classify import statements
from rewriter.leakproof import first_leak
from rewriter.refuse import Refused
from rewriter.writes import tenant_value

from .schema import context


def judge(sql: str) -> str | None:
    ((kind, fields),) = statements(sql)
    return first_leak(kind, fields)


LEAK_FREE = [
    "SELECT * FROM customers WHERE id = $1",
    'SELECT "customers"."id" FROM "customers" WHERE "customers"."id" = $1 LIMIT 21',
    "SELECT * FROM orders WHERE created > $1 AND tenant_id = 'acme'",
    "SELECT * FROM orders WHERE id IN (1, 2, $3) OR id BETWEEN $1 AND 10 OR id NOT BETWEEN 1 AND 2",
    "SELECT * FROM orders WHERE note IS NULL AND total IS NOT DISTINCT FROM $1 AND id <> 3 AND id != 4",
    "SELECT * FROM orders WHERE NOT (id >= 1 AND id <= 9) AND (total IS TRUE) IS NOT FALSE",
    "SELECT * FROM orders WHERE id = ANY($1) AND id = $2::int AND created > '2020-01-01'::date",
    "SELECT * FROM customers WHERE name LIKE 'A%' AND email ILIKE '%@acme.io'",
    "SELECT upper(name), count(*) FROM customers WHERE id > 0 GROUP BY upper(name) ORDER BY lower(upper(name))",
    "SELECT c.* FROM customers c JOIN orders o ON o.customer_id = c.id LEFT JOIN countries k USING (code)",
    "SELECT * FROM customers c WHERE EXISTS (SELECT 1 FROM orders o WHERE o.customer_id = c.id)",
    "SELECT * FROM customers WHERE id IN (SELECT customer_id FROM orders WHERE total > 10)",
    "SELECT * FROM (SELECT id, name FROM customers WHERE id > 1) s WHERE s.name = 'x'",
    "WITH x AS (SELECT id FROM orders) SELECT * FROM x WHERE id = 1",
    "SELECT id FROM orders UNION SELECT upper(name)::int FROM customers",
    "SELECT * FROM customers WHERE created < CURRENT_DATE",
    "UPDATE orders SET total = total * 2, note = lower($2) WHERE id = $1 RETURNING upper(note)",
    "DELETE FROM orders WHERE id = $1 RETURNING *",
    "INSERT INTO orders (id, total) VALUES ($1, $2 * 2) ON CONFLICT (id) DO UPDATE SET total = excluded.total + 1",
    "INSERT INTO orders (id) SELECT upper(name)::int FROM customers WHERE id = 1",
    "WITH moved AS (DELETE FROM orders WHERE total < 10 RETURNING id) SELECT count(*) FROM moved",
    "COPY (SELECT lower(name) FROM customers WHERE id = 1) TO STDOUT",
    "EXPLAIN SELECT * FROM customers WHERE id = 1",
    "SELECT * FROM customers WHERE id = ANY(ARRAY[$1, $2::int, 3]) AND name IN ($3::VARCHAR)",
    "INSERT INTO orders (id, total) SELECT p0::int, p1 FROM (VALUES ($1::int, $2, 0), ($3::int, $4, 1)) AS s(p0, p1, n)",
    # a subquery's own ORDER BY / LIMIT / OFFSET of columns, constants and parameters
    (
        "SELECT * FROM customers c WHERE EXISTS (SELECT 1 FROM orders o WHERE o.customer_id = c.id "
        "ORDER BY o.id DESC NULLS LAST, c.name LIMIT $1 OFFSET 2)"
    ),
    (
        "SELECT * FROM customers WHERE id IN (SELECT DISTINCT customer_id FROM orders GROUP BY customer_id "
        "ORDER BY customer_id FETCH FIRST 3 ROWS WITH TIES)"
    ),
    "SELECT * FROM customers WHERE id IN (SELECT id FROM orders UNION (SELECT id FROM orders ORDER BY 1 LIMIT ALL))",
]

LEAKY = [
    ("SELECT id FROM customers WHERE id > 10 AND has_schema_privilege(name, 'USAGE')", "has_schema_privilege"),
    ("SELECT 1 FROM customers WHERE id = 12 AND set_config('x.leak', email, true) IS NULL", "set_config"),
    ("SELECT 1 FROM orders WHERE total::int > 0", "cast"),
    ("SELECT 1 FROM orders WHERE CAST(total AS int) > 0", "cast"),
    ("SELECT 1 FROM orders WHERE total / 2 > 1", "/"),
    ("SELECT 1 FROM orders WHERE -total > 1", "-"),
    ("SELECT 1 FROM orders WHERE id + 1 = 2", "+"),
    ("SELECT 1 FROM customers WHERE name ~ 'x'", "~"),
    ("SELECT 1 FROM customers WHERE name LIKE $1", "LIKE"),
    ("SELECT 1 FROM customers WHERE 'x' LIKE name", "LIKE"),
    ("SELECT 1 FROM customers WHERE name LIKE 'a\\'", "escape"),
    ("SELECT 1 FROM customers WHERE name LIKE 'a!' ESCAPE '!'", "LIKE"),
    ("SELECT 1 FROM customers WHERE name SIMILAR TO 'x'", "SIMILAR"),
    ("SELECT 1 FROM customers WHERE tags[1] = 'x'", "A_Indirection"),
    ("SELECT 1 FROM customers WHERE (id, name) = (1, 'x')", "RowExpr"),
    ("SELECT 1 FROM customers c WHERE c = c", "whole row"),
    ("SELECT 1 FROM customers c WHERE c.* IS NOT NULL", None),
    ("SELECT 1 FROM customers WHERE CASE WHEN name > 'a' THEN true END", "CaseExpr"),
    ("SELECT 1 FROM customers WHERE coalesce(name, '') = 'x'", "CoalesceExpr"),
    ("SELECT 1 FROM customers WHERE id OPERATOR(pg_catalog.=) 1", "operator"),
    ("SELECT 1 FROM customers c JOIN orders o ON o.customer_id = c.id AND o.total::int > 0", "cast"),
    ("SELECT name FROM customers GROUP BY name HAVING length(name) > 1", "length"),
    ("SELECT 1 FROM customers WHERE EXISTS (SELECT 1 FROM orders o WHERE o.total::int = 1)", "cast"),
    ("SELECT 1 FROM customers WHERE id IN (SELECT upper(name)::int FROM customers)", "cast"),
    ("SELECT 1 FROM countries, LATERAL (SELECT 1 FROM orders WHERE total::int = 1) x", "cast"),
    (
        "SELECT * FROM (SELECT id, has_schema_privilege(name, 'USAGE') AS x FROM customers) s WHERE s.x",
        "has_schema_privilege",
    ),
    ("WITH x AS (SELECT upper(name) AS u FROM customers) SELECT * FROM x WHERE u = 'A'", "upper"),
    ("SELECT (SELECT max(id) FROM orders WHERE total::int = 1) FROM customers", "max"),
    ("SELECT 1 FROM customers ORDER BY (SELECT 1 FROM orders WHERE total::int = 1)", "cast"),
    ("SELECT 1 FROM generate_series(1, 3) g JOIN customers ON id = g", "generate_series"),
    ("SELECT 1 FROM orders UNION ALL SELECT 1 FROM customers WHERE name::int = 1", "cast"),
    ("UPDATE orders SET total = 1 WHERE id > 110 AND has_table_privilege(tenant_id, 'select')", "has_table_privilege"),
    ("UPDATE orders o SET total = 1 FROM customers c WHERE c.id = o.customer_id AND c.name::int = 1", "cast"),
    ("DELETE FROM orders o USING customers c WHERE lower(c.name) = 'x'", "lower"),
    ("UPDATE orders SET total = (SELECT max(total) FROM orders WHERE total::int = 1)", "max"),
    (
        "INSERT INTO customers (id) VALUES (15) ON CONFLICT (id) DO UPDATE SET name = 'x' WHERE customers.email::int > 0",
        "cast",
    ),
    ("INSERT INTO orders (id) SELECT id FROM customers WHERE name::int = 1", "cast"),
    ("WITH u AS (UPDATE orders SET total = 1 WHERE total::int = 1 RETURNING id) SELECT * FROM u", "cast"),
    ("MERGE INTO countries k USING customers c ON k.code = c.name WHEN MATCHED THEN DO NOTHING", ""),
    (
        "COPY (SELECT id FROM customers WHERE id > 10 AND has_schema_privilege(name, 'USAGE')) TO STDOUT",
        "has_schema_privilege",
    ),
    ("EXPLAIN ANALYZE SELECT id FROM customers WHERE name::int = 1", "cast"),
    ("DECLARE c CURSOR FOR SELECT id FROM customers WHERE name::int = 1", "cast"),
    ("SELECT 1 FROM customers WHERE name COLLATE \"C\" = 'x'", "CollateClause"),
    ("SELECT 1 FROM customers WHERE xmlparse(document name) IS NOT NULL", "XmlExpr"),
    ("SELECT 1 FROM customers WHERE id = ANY(ARRAY[length(name)])", "length"),
    ("SELECT * FROM (VALUES (1::int / 0)) v(x) JOIN customers ON id = x", "/"),
    # a correlated subquery's ORDER BY / LIMIT / OFFSET / FETCH / GROUP BY / DISTINCT / window
    # run once per outer row, before the outer tenant filter
    (
        (
            "SELECT count(*) FROM customers WHERE id IN (SELECT id FROM orders "
            "ORDER BY set_config('my.leak', current_setting('my.leak') || customers.name, true) LIMIT 5)"
        ),
        "set_config",
    ),
    (
        "SELECT 1 FROM customers WHERE EXISTS (SELECT 1 FROM orders LIMIT CASE WHEN customers.id = 15 THEN -1 END)",
        "CaseExpr",
    ),
    (
        "SELECT 1 FROM customers WHERE EXISTS (SELECT 1 FROM orders OFFSET CASE WHEN customers.id = 15 THEN -1 END)",
        "CaseExpr",
    ),
    (
        (
            "SELECT 1 FROM customers WHERE EXISTS (SELECT 1 FROM orders "
            "FETCH FIRST (CASE WHEN customers.id = 15 THEN -1 END) ROWS ONLY)"
        ),
        "CaseExpr",
    ),
    ("SELECT 1 FROM customers WHERE EXISTS (SELECT 1 FROM orders ORDER BY 1 / customers.id)", "/"),
    ("SELECT 1 FROM customers WHERE EXISTS (SELECT 1 FROM orders ORDER BY id USING <)", "USING"),
    ("SELECT 1 FROM customers WHERE EXISTS (SELECT id FROM orders GROUP BY customers.id / 0)", "/"),
    ("SELECT 1 FROM customers WHERE EXISTS (SELECT DISTINCT ON (customers.id / 0) id FROM orders)", "/"),
    ("SELECT 1 FROM customers WHERE EXISTS (SELECT id FROM orders WINDOW w AS (ORDER BY customers.id))", "WindowDef"),
    (
        (
            "SELECT 1 FROM customers WHERE EXISTS (SELECT id FROM orders UNION "
            "(SELECT id FROM orders ORDER BY 1 / customers.id LIMIT 1))"
        ),
        "/",
    ),
    (
        (
            "SELECT 1 FROM customers WHERE EXISTS (SELECT id FROM orders UNION SELECT id FROM orders "
            "ORDER BY 1 LIMIT CASE WHEN customers.id = 1 THEN -1 END)"
        ),
        "CaseExpr",
    ),
    (
        (
            "UPDATE orders SET total = total WHERE id IN (SELECT id FROM countries "
            "LIMIT CASE WHEN orders.id = 1 THEN -1 END)"
        ),
        "CaseExpr",
    ),
    ("DELETE FROM orders WHERE EXISTS (SELECT 1 FROM countries ORDER BY 1 / orders.id)", "/"),
    ("SELECT 1 FROM customers c JOIN orders o ON o.id IN (SELECT id FROM orders ORDER BY 1 / c.id LIMIT 1)", "/"),
    ("WITH x AS (SELECT id FROM orders ORDER BY lower(note) LIMIT 1) SELECT * FROM x", "lower"),
]


@pytest.mark.parametrize("sql", LEAK_FREE)
def test_leak_free_statements(sql: str) -> None:
    assert judge(sql) is None


@pytest.mark.parametrize(("sql", "word"), LEAKY, ids=[s for s, _ in LEAKY])
def test_leaky_statements_name_what_leaks(sql: str, word: str | None) -> None:
    leak = judge(sql)
    if word is None:  # `c.*` in a condition is every column: leak-free
        assert leak is None
        return
    assert leak is not None, sql
    assert word.lower() in leak.lower(), leak


def test_only_leaky_statements_are_fenced() -> None:
    ctx = context()
    fast = rewrite("SELECT * FROM customers WHERE id = $1", ctx)
    slow = rewrite("SELECT * FROM customers WHERE id = $1 AND name::int > 0", ctx)
    assert isinstance(fast, Rewrite) and isinstance(slow, Rewrite)
    assert "OFFSET 0" not in fast.sql
    assert slow.sql.count("OFFSET 0") == 1 and "'acme' OFFSET 0)" in slow.sql


def test_every_projection_of_a_leaky_statement_is_fenced() -> None:
    sql = (
        "SELECT 1 FROM customers c JOIN orders o ON o.customer_id = c.id "
        "WHERE EXISTS (SELECT 1 FROM orders x WHERE x.total::int = 1)"
    )
    result = rewrite(sql, context())
    assert isinstance(result, Rewrite)
    assert result.sql.count("OFFSET 0") == 3


@pytest.mark.parametrize(
    ("sql", "where"),
    [
        ("UPDATE orders SET total = 1 WHERE id = $1", 'WHERE "orders"."tenant_id" = \'acme\' AND (id = $1)'),
        ("DELETE FROM orders o WHERE o.id = 1", 'WHERE "o"."tenant_id" = \'acme\' AND (o.id = 1)'),
        (
            "UPDATE orders SET total = 1 WHERE total::int = 1",
            'WHERE "orders"."tenant_id" = \'acme\' AND CASE WHEN "orders"."tenant_id" = \'acme\' THEN (total::int = 1) END',
        ),
        (
            "INSERT INTO orders AS o (id) VALUES (1) ON CONFLICT (id) DO UPDATE SET total = 1 WHERE o.total::int > 0",
            'WHERE "o"."tenant_id" = \'acme\' AND CASE WHEN "o"."tenant_id" = \'acme\' THEN (o.total::int > 0) END',
        ),
        (
            "INSERT INTO orders (id) VALUES (1) ON CONFLICT (id) DO UPDATE SET total = 1 WHERE orders.total > 0",
            'WHERE "orders"."tenant_id" = \'acme\' AND (orders.total > 0)',
        ),
    ],
)
def test_write_conditions_come_after_the_tenant_predicate(sql: str, where: str) -> None:
    result = rewrite(sql, context())
    assert isinstance(result, Rewrite), result
    assert where in result.sql


@pytest.mark.parametrize(
    "expr",
    [
        "'acme'::varchar(2)",
        "CAST('acme' AS char(3))",
        "varchar(1) 'acme'",
        "'acme'::text",
        "$2::varchar(1)",
        "$2::text",
        "'acme'::text::text",
    ],
)
def test_a_cast_around_the_tenant_value_is_refused(expr: str) -> None:
    ((_, fields),) = statements(f"INSERT INTO orders (id, tenant_id) VALUES (1, {expr})")
    value = fields["selectStmt"]["SelectStmt"]["valuesLists"][0]["List"]["items"][1]
    with pytest.raises(Refused) as info:
        tenant_value(value, "tenant_id", "acme")
    assert info.value.deny.rule == "tenancy.column" and "cast" in info.value.deny.message
    result = rewrite(f"INSERT INTO orders (id, tenant_id) VALUES (1, {expr})", context())
    assert isinstance(result, Deny) and result.hint


def test_a_plain_tenant_value_is_accepted() -> None:
    for sql in [
        "INSERT INTO orders (id, tenant_id) VALUES (1, 'acme')",
        "INSERT INTO orders (id, tenant_id) VALUES (1, $1)",
        "UPDATE orders SET tenant_id = 'acme' WHERE id = 1",
    ]:
        assert isinstance(rewrite(sql, context()), Rewrite), sql
