"""Decision 6: verify() refuses a rewritten text that is not exactly the client's plus our edits."""

from __future__ import annotations

import pytest

from rewriter import Rewrite, rewrite
from rewriter.api import check_statement, judge
from rewriter.classify import statements
from rewriter.refuse import Refused
from rewriter.splice import scan
from rewriter.verify import verify

from .schema import context


def _judged(sql: str, ctx):
    toks = scan(sql)
    return [judge(check_statement(k, f, ctx), ctx, toks) for k, f in statements(sql)]


def _check(sql: str, tamper) -> None:
    ctx = context()
    good = rewrite(sql, ctx)
    assert isinstance(good, Rewrite)
    verify(sql, good.sql, ctx, _judged(sql, ctx))  # the real rewrite verifies
    bad = tamper(good.sql)
    assert bad != good.sql
    with pytest.raises(Refused) as err:
        verify(sql, bad, ctx, _judged(sql, ctx))
    assert err.value.deny.rule in ("verify", "tables.public.secrets", "functions.allow", "tenancy.column")


TAMPERINGS = [
    ("UPDATE orders SET total = 0 WHERE id = 10 OR true", lambda s: s.replace("(id = 10 OR true)", "id = 10 OR true")),
    ("UPDATE orders SET total = 0 WHERE id = 10", lambda s: s.replace('"orders"."tenant_id" = \'acme\' AND ', "")),
    (
        "UPDATE orders SET total = 0 WHERE id = 10",
        lambda s: s.replace(
            '"orders"."tenant_id" = \'acme\' AND (id = 10)', '(id = 10) AND "orders"."tenant_id" = \'acme\''
        ),
    ),
    (
        "UPDATE orders SET total = 0 WHERE total::int > 0",  # the CASE guard is dropped
        lambda s: s.replace('CASE WHEN "orders"."tenant_id" = \'acme\' THEN (total::int > 0) END', "(total::int > 0)"),
    ),
    (
        "DELETE FROM orders WHERE length(tenant_id) > 0",  # the guard names another tenant
        lambda s: s.replace('CASE WHEN "orders"."tenant_id" = \'acme\'', 'CASE WHEN "orders"."tenant_id" = \'x\''),
    ),
    ("SELECT * FROM orders o WHERE o.total::int > 0", lambda s: s.replace(" OFFSET 0", "")),
    ("SELECT * FROM orders o WHERE o.id = 1", lambda s: s.replace("'acme')", "'acme' OFFSET 0)")),
    ("DELETE FROM orders WHERE id = 1", lambda s: s.replace("'acme'", "'globex'")),
    ("SELECT * FROM orders o", lambda s: s.replace("WHERE \"tenant_id\" = 'acme'", "")),
    ("SELECT * FROM orders o", lambda s: s.replace(") o", ') o, "public"."orders" x')),
    ("SELECT * FROM orders o", lambda s: s + "; SELECT 1"),
    ("SELECT * FROM orders o WHERE o.id = 1", lambda s: s.replace("o.id = 1", "o.id = 2")),
    (
        "SELECT * FROM orders o WHERE o.id = 1",
        lambda s: s.replace("o.id = 1", "o.id = 1 OR o.id IN (SELECT id FROM secrets)"),
    ),
    ("SELECT ssn FROM customers", lambda s: s.replace("CAST('****' AS text) AS \"ssn\"", '"ssn"')),
    ("INSERT INTO orders (id) VALUES (1)", lambda s: s.replace("'acme'", "'globex'")),
    ("INSERT INTO orders (id, tenant_id) VALUES ($1, $2)", lambda s: s.replace("$2", "$1")),
    (
        "INSERT INTO customers (id) VALUES (1) ON CONFLICT (id) DO UPDATE SET name = 'x'",
        lambda s: s.replace(' WHERE "customers"."tenant_id" = \'acme\'', ""),
    ),
    ("UPDATE customers SET name = 'x' RETURNING ssn", lambda s: s.replace("CAST('****' AS text) AS \"ssn\"", "ssn")),
    ("SELECT 'é', id FROM orders", lambda s: s.replace("'é', id", "'é', pg_read_file('x')")),
]


@pytest.mark.parametrize(("sql", "tamper"), TAMPERINGS, ids=[t[0] for t in TAMPERINGS])
def test_tampered_rewrite_is_refused(sql: str, tamper) -> None:
    _check(sql, tamper)
