"""Property tests: generated SELECTs over the test schema are rewritten, verified, and isolate tenants.

Isolation oracle (docs/architecture.md, decision 4): the rows a rewritten query returns from a
database holding every tenant equal the rows the client's query returns from a
database holding only the session tenant's rows.
"""

from __future__ import annotations

from collections import Counter

import psycopg
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rewriter import Allow, Deny, Rewrite, rewrite
from rewriter.analyse import node_type
from rewriter.classify import statements

from .schema import context

COLUMNS = {
    "customers": ("id", "tenant_id", "name", "ssn"),
    "orders": ("id", "tenant_id", "customer_id", "total", "note"),
    "countries": ("code", "name"),
}
PROTECTED = {"customers", "orders"}


@st.composite
def from_item(draw, i: int) -> tuple[str, str, tuple[str, ...]]:
    """(text, reference name, columns) of one FROM item: a table, ONLY table, or subquery."""
    table = draw(st.sampled_from(sorted(COLUMNS)))
    alias = f"s{i}"
    form = draw(st.sampled_from(["plain", "alias", "only", "subquery", "qualified"]))
    if form == "plain" and i == 0:
        return table, table, COLUMNS[table]
    text = {
        "plain": f"{table} {alias}",
        "alias": f"{table} AS {alias}",
        "only": f"ONLY {table} {alias}",
        "subquery": f"(SELECT * FROM {table}) {alias}",
        "qualified": f"public.{table} {alias}",
    }[form]
    return text, alias, COLUMNS[table]


@st.composite
def condition(draw, ref: str, cols: tuple[str, ...]) -> str:
    col = draw(st.sampled_from(cols))
    options = [f"{ref}.{col} IS NOT NULL", f"{ref}.{col} IS NULL"]
    if "id" in cols:
        options += [
            f"{ref}.id > {draw(st.integers(0, 12))}",
            f"EXISTS (SELECT 1 FROM orders o9 WHERE o9.customer_id = {ref}.id)",
            f"{ref}.id IN (SELECT customer_id FROM orders)",
            f"(SELECT count(*) FROM customers c9 WHERE c9.id = {ref}.id) > 0",
        ]
    return draw(st.sampled_from(options))


@st.composite
def select(draw) -> str:
    items = [draw(from_item(i)) for i in range(draw(st.integers(1, 2)))]
    joiner = draw(st.sampled_from([", ", " JOIN ", " LEFT JOIN "]))
    from_text = items[0][0]
    for text, _, _ in items[1:]:
        from_text += joiner + text + ("" if joiner == ", " else " ON true")
    ref, cols = items[-1][1], items[-1][2]
    target = draw(st.sampled_from(["*", f"{ref}.{cols[0]}", "count(*)", f"{ref}.*"]))
    where = draw(st.none() | condition(ref, cols))
    sql = f"SELECT {target} FROM {from_text}" + (f" WHERE {where}" if where else "")
    shape = draw(st.sampled_from(["plain", "union", "table", "lateral", "in_cte"]))
    if shape == "union":
        sql = f"SELECT id FROM {draw(st.sampled_from(sorted(PROTECTED)))} UNION ALL SELECT id FROM orders o2"
    elif shape == "table":
        sql = f"TABLE {draw(st.sampled_from(sorted(COLUMNS)))}"
    elif shape == "lateral":
        sql = (
            "SELECT c.id, l.total FROM customers c, LATERAL (SELECT o.total FROM orders o WHERE o.customer_id = c.id) l"
        )
    elif shape == "in_cte":
        sql = f"WITH q AS ({sql}) SELECT count(*) FROM q"
    if shape in ("plain", "union", "lateral") and draw(st.booleans()):
        table = draw(st.sampled_from(sorted(PROTECTED)))
        sql = f"WITH {table} AS (SELECT * FROM {table} WHERE id > 1) " + sql
    return sql


def tree_refs(node: object, inside_projection: bool = False):
    """(relname, schemaname, inside a tenant projection) for every RangeVar of a parse tree."""
    if isinstance(node, list):
        for item in node:
            yield from tree_refs(item, inside_projection)
        return
    if not isinstance(node, dict):
        return
    typed = node_type(node)
    if typed and typed[0] == "RangeVar":
        yield typed[1]["relname"], typed[1].get("schemaname"), inside_projection
        return
    if typed and typed[0] == "RangeSubselect":
        sub = typed[1]["subquery"]["SelectStmt"]
        where = str(sub.get("whereClause", ""))
        inside = "tenant_id" in where and "'acme'" in where and len(sub.get("fromClause", [])) == 1
        yield from tree_refs(typed[1]["subquery"], inside or inside_projection)
        return
    for value in (typed[1] if typed else node).values():
        yield from tree_refs(value, inside_projection)


@settings(max_examples=300, deadline=None)
@given(select())
def test_generated_selects_verify_and_read_protected_tables_only_through_projections(sql: str) -> None:
    result = rewrite(sql, context())
    assert isinstance(result, (Rewrite, Allow)), (sql, result)
    text = result.sql
    ctes = {t for t in PROTECTED if f"WITH {t} AS" in sql}
    for relname, schema, inside in tree_refs([f for _, f in statements(text)]):
        if relname in PROTECTED:
            assert (schema == "public" and inside) or (schema is None and relname in ctes), (sql, text)


def _rows(conn, sql: str) -> Counter:
    with conn.cursor() as cur:
        cur.execute(sql.replace("%", "%%"))
        rows = Counter(repr(r) for r in cur.fetchall())
    conn.rollback()
    return rows


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(select())
def test_isolation_oracle(databases, sql: str) -> None:
    all_tenants, acme_only = databases
    result = rewrite(sql, context(masks="none"))
    assert isinstance(result, (Rewrite, Allow)), (sql, result)
    assert _rows(all_tenants, result.sql) == _rows(acme_only, sql), (sql, result.sql)


CORPUS_LIKE = [
    "SELECT o.id FROM orders o WHERE o.total > $1 ORDER BY 1",
    "UPDATE customers SET name = $1 WHERE id = $2 RETURNING ssn",
    "INSERT INTO orders (id, total) VALUES ($1, $2) ON CONFLICT (id) DO UPDATE SET total = EXCLUDED.total",
    "WITH x AS (DELETE FROM orders WHERE id = 1 RETURNING *) SELECT * FROM x, customers c",
    "COPY (SELECT * FROM customers) TO STDOUT",
]


@settings(max_examples=400, deadline=None)
@given(st.sampled_from(CORPUS_LIKE), st.integers(0, 200), st.integers(0, 12), st.text(max_size=6))
def test_mangled_statements_never_raise(sql: str, at: int, cut: int, insert: str) -> None:
    """Fail closed, never crash: any text gets Allow, Rewrite or Deny (and a Rewrite still verifies)."""
    at = min(at, len(sql))
    mangled = sql[:at] + insert + sql[at + cut :]
    result = rewrite(mangled, context())
    assert isinstance(result, (Allow, Rewrite, Deny))
    if isinstance(result, Rewrite):
        statements(result.sql)


@st.composite
def write(draw) -> str:
    """An UPDATE, DELETE or upsert of a tenant table, aimed at every tenant's rows."""
    alias = draw(st.sampled_from(["", " o", " AS o"]))
    ref = "o" if alias else "orders"
    cond = draw(
        st.sampled_from(
            [
                "",
                f" WHERE {ref}.id = 20",
                f" WHERE {ref}.id > 0 OR true",
                f" WHERE {ref}.tenant_id = 'globex'",
                f" WHERE {ref}.customer_id IN (SELECT id FROM customers)",
                f" WHERE NOT ({ref}.id = 10)",
            ]
        )
    )
    ret = draw(st.sampled_from(["", " RETURNING *", f" RETURNING {ref}.id"]))
    kind = draw(st.sampled_from(["update", "delete", "delete_using", "upsert"]))
    if kind == "update":
        return f"UPDATE orders{alias} SET total = 0, note = 'hit'{cond}{ret}"
    if kind == "delete":
        return f"DELETE FROM orders{alias}{cond}{ret}"
    if kind == "delete_using":
        return f"DELETE FROM orders{alias} USING customers c WHERE c.id = {ref}.customer_id{ret}"
    row = draw(st.sampled_from([20, 21, 10, 500]))
    where = draw(st.sampled_from(["", f" WHERE {ref}.total >= 0 OR true"]))
    return (
        f"INSERT INTO orders{' AS o' if alias else ''} (id, total) VALUES ({row}, 1) "
        f"ON CONFLICT (id) DO UPDATE SET total = 0, note = 'hit'{where}{ret}"
    )


OTHERS = (
    "SELECT * FROM orders WHERE tenant_id <> 'acme' "
    "UNION ALL SELECT id, tenant_id, id, 0, name FROM customers WHERE tenant_id <> 'acme' ORDER BY 1"
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(write())
def test_writes_never_touch_another_tenants_rows(databases, sql: str) -> None:
    conn = databases[0]
    result = rewrite(sql, context(masks="none"))
    assert isinstance(result, Rewrite), (sql, result)
    with conn.cursor() as cur:
        before = cur.execute(OTHERS).fetchall()
        cur.execute(result.sql)
        after = cur.execute(OTHERS).fetchall()
    conn.rollback()
    assert after == before, (sql, result.sql)


@st.composite
def target_read(draw, ref: str) -> str:
    """A text expression reading the write target's row `ref`: a masked column, the whole row, a field of it."""
    expr = draw(
        st.sampled_from(
            [
                f"{ref}.ssn",
                "ssn",
                f"({ref}).ssn",
                f"({ref}.*).ssn",
                f"{ref}::text",
                f"row_to_json({ref})::text",
                f"to_jsonb({ref}) ->> 'ssn'",
                f"ROW({ref}.*)::text",
                f"format('%s', {ref})",
                f"{ref}.name",
                f"{ref}.ssn || ''",
                f"upper({ref}.ssn)",
            ]
        )
    )
    for depth in range(draw(st.integers(0, 2))):
        expr = draw(st.sampled_from([f"(SELECT {expr})", f"(SELECT x FROM (SELECT {expr} AS x) s{depth})"]))
    return expr


@st.composite
def write_reading_target(draw) -> str:
    """An UPDATE, DELETE or upsert of customers whose SET, WHERE, ON CONFLICT or RETURNING reads its target."""
    alias = draw(st.sampled_from(["", " c", " AS c"]))
    ref = "c" if alias else "customers"
    expr = draw(target_read(ref))
    where = draw(
        st.sampled_from(["", f" WHERE {expr} LIKE '1%'", f" WHERE {expr} LIKE '%111%'", f" WHERE {expr} IS NOT NULL"])
    )
    ret = draw(st.sampled_from(["", f" RETURNING {expr}", f" RETURNING {ref}.id"]))
    kind = draw(st.sampled_from(["update", "delete", "upsert"]))
    if kind == "update":
        value = draw(st.sampled_from([expr, "'n'"]))
        return f"UPDATE customers{alias} SET name = {value}{where}{ret}"
    if kind == "delete":
        return f"DELETE FROM customers{alias}{where}{ret}"
    value = draw(st.sampled_from([expr, "EXCLUDED.name"]))
    return (
        f"INSERT INTO customers{' AS c' if alias else ''} (id, name) VALUES ({draw(st.sampled_from([1, 3]))}, 'n') "
        f"ON CONFLICT (id) DO UPDATE SET name = {value}{where}{ret}"
    )


def _outcome(conn, sql: str, masked_world: bool) -> tuple:
    """What running `sql` shows: its rows and count (or error), and the table afterwards (ssn aside)."""
    with conn.cursor() as cur:
        try:
            if masked_world:
                cur.execute("UPDATE customers SET ssn = '****' WHERE ssn IS NOT NULL")
            cur.execute(sql.replace("%", "%%"))
            shown = (cur.rowcount, cur.fetchall() if cur.description else None)
            stored = cur.execute("SELECT id, tenant_id, name, email, phone FROM customers ORDER BY id").fetchall()
        except psycopg.Error as exc:
            shown, stored = (type(exc).__name__,), ()
    conn.rollback()
    return shown, stored


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(write_reading_target())
def test_writes_reading_their_target_behave_as_if_masked_values_were_stored(databases, sql: str) -> None:
    """Non-interference: a write that is not refused returns, stores and counts the same whether the
    masked column holds real values or its masked value (so it cannot reveal or infer the real one)."""
    result = rewrite(sql, context())
    assert isinstance(result, (Rewrite, Deny)), (sql, result)
    if isinstance(result, Deny):
        assert result.rule == "tables.public.customers.masks", (sql, result)
        return
    conn = databases[0]
    assert _outcome(conn, result.sql, False) == _outcome(conn, result.sql, True), (sql, result.sql)
