"""Name resolution as PostgreSQL does it (search_path, pg_catalog first) and the session's grants."""

from __future__ import annotations

from rewriter import Allow, Column, Context, Deny, Rewrite, TableRule, rewrite

ALL = frozenset({"select", "insert", "update", "delete"})
COLS = (Column("id", "integer"), Column("tenant_id", "text"))


def _ctx(search_path=("app", "public"), **extra) -> Context:
    tables = {
        "app.orders": TableRule("app.orders", "tenant_id", ALL),
        "public.orders": TableRule("public.orders", None, ALL),
    }
    return Context(
        tables, {"app.orders": COLS, "public.orders": COLS}, "acme", frozenset({"app.f"}), search_path, **extra
    )


def test_unqualified_name_follows_search_path() -> None:
    first = rewrite("SELECT * FROM orders", _ctx(("app", "public")))
    assert isinstance(first, Rewrite) and first.tables == ("app.orders",)
    assert rewrite("SELECT * FROM orders", _ctx(("public", "app"))) == Allow("SELECT * FROM orders")


def test_catalog_names_resolve_to_pg_catalog_first() -> None:
    ctx = _ctx()
    assert rewrite("SELECT * FROM pg_class", ctx) == Allow("SELECT * FROM pg_class")
    denied = rewrite("SELECT * FROM pg_authid", ctx)
    assert isinstance(denied, Deny) and denied.rule == "catalogs"


def test_router_can_deny_more_relations() -> None:
    denied = rewrite(
        "SELECT * FROM pg_catalog.pg_settings", _ctx(denied_relations=frozenset({"pg_catalog.pg_settings"}))
    )
    assert isinstance(denied, Deny) and denied.rule == "catalogs"


def test_functions_resolve_by_search_path() -> None:
    assert isinstance(rewrite("SELECT f()", _ctx(("app",))), Allow)
    assert isinstance(rewrite("SELECT f()", _ctx(("public",))), Deny)
    assert isinstance(rewrite("SELECT app.f(), upper('x')", _ctx(("public",))), Allow)


def test_tenant_literal_is_quoted() -> None:
    ctx = Context(_ctx().tables, _ctx().schema, "o'brien\\", search_path=("app",))
    result = rewrite("SELECT id FROM orders", ctx)
    assert isinstance(result, Rewrite)
    assert "WHERE \"tenant_id\" = E'o''brien\\\\'" in result.sql


def test_writes_that_read_rows_need_select_as_in_postgresql() -> None:
    rules = {"app.orders": TableRule("app.orders", "tenant_id", frozenset({"update", "insert"}))}
    ctx = Context(rules, {"app.orders": COLS}, "acme", search_path=("app",))
    assert isinstance(rewrite("UPDATE orders SET id = 1", ctx), Rewrite)
    assert isinstance(rewrite("INSERT INTO orders (id) VALUES (1) ON CONFLICT DO NOTHING", ctx), Rewrite)
    for sql in (
        "UPDATE orders SET id = 1 WHERE id = 2",
        "UPDATE orders SET id = 1 RETURNING id",
        "INSERT INTO orders (id) VALUES (1) RETURNING id",
    ):
        denied = rewrite(sql, ctx)
        assert isinstance(denied, Deny) and denied.rule == "tables.app.orders.grants", sql
