"""Mask kinds evaluated by PostgreSQL: values as POLICY_FORMAT.md says, names and types kept."""

from __future__ import annotations

import datetime
import decimal
import hashlib

from rewriter import Rewrite, rewrite

from .schema import context


def _fetch(conn, sql: str):
    with conn.cursor() as cur:
        cur.execute(sql)
        rows, desc = cur.fetchall(), [(d.name, d.type_code) for d in cur.description]
    conn.rollback()
    return rows, desc


def test_every_mask_kind(databases) -> None:
    conn = databases[0]
    sql = "SELECT * FROM customers ORDER BY id"
    result = rewrite(sql, context(masks="all"))
    assert isinstance(result, Rewrite)
    rows, desc = _fetch(conn, result.sql)
    _, plain_desc = _fetch(databases[1], sql)
    assert desc == plain_desc  # same names, same types
    assert rows == [
        (1, "acme", "Ann", "****", "****@acme.test", "****0101", datetime.date(1980, 1, 1), decimal.Decimal(10)),
        (2, "acme", "Bob", "****", "****@acme.test", "****0102", datetime.date(1991, 1, 1), decimal.Decimal(4)),
    ]


def test_hash_mask_is_salted_sha256_and_joinable(databases) -> None:
    result = rewrite(
        "SELECT n.token FROM notes n JOIN notes m ON m.token = n.token ORDER BY n.id", context(masks="all")
    )
    rows, _ = _fetch(databases[0], result.sql)
    assert rows == [(hashlib.sha256(b"pepper" + t).hexdigest(),) for t in (b"tok-1", b"tok-2")]


def test_filter_on_masked_column_sees_only_the_masked_value(databases) -> None:
    result = rewrite("SELECT id FROM customers WHERE ssn = '111-11-1111' OR ssn LIKE '1%'", context())
    assert _fetch(databases[0], result.sql)[0] == []


def test_other_tenant_rows_are_invisible_and_untouchable(databases) -> None:
    conn = databases[0]
    for sql in (
        "UPDATE orders SET total = 0 WHERE id = 20 RETURNING id",
        "DELETE FROM orders WHERE tenant_id = 'globex' RETURNING id",
        "SELECT id FROM orders WHERE id = 20",
    ):
        assert _fetch(conn, rewrite(sql, context()).sql)[0] == [], sql
    rows, _ = _fetch(conn, rewrite("INSERT INTO orders (id, total) VALUES (99, 1) RETURNING tenant_id", context()).sql)
    assert rows == [("acme",)]
