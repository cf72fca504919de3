"""The router hands the live database's own functions and operators to the rewriter, keeps them over a
reload, and judges literal-dependent checks (secret settings) on the text, not only its shape."""

from __future__ import annotations

from proxy.enforce.router import ORIGINAL, Refuse, load_router
from proxy.enforce.schema import routines
from rewriter import Column
from tests.policy.conftest import POLICY

SCHEMA = {
    "public.customers": (
        Column("id", "integer"),
        Column("tenant_id", "text"),
        Column("name", "text"),
        Column("email", "text"),
        Column("ssn", "text"),
        Column("phone", "text"),
        Column("born", "date"),
    ),
    "public.orders": (
        Column("id", "integer"),
        Column("tenant_id", "text"),
        Column("customer_id", "integer"),
        Column("total", "numeric"),
    ),
}
ROUTINES = routines([("public", "upper")], [("public", "===", "public", "leak_op")])


def _router(tmp_path, with_routines=True):
    path = tmp_path / "policy.yaml"
    path.write_text(POLICY)
    router = load_router(path)
    router.add_schema("shop", SCHEMA, ("public",), ROUTINES if with_routines else None)
    return router, path


def _decide(router, sql):
    return router.decide(router.identity("acme_app"), "acme", "shop", sql)


def test_user_routines_reach_the_rewriter_and_survive_a_reload(tmp_path):
    router, path = _router(tmp_path)
    for sql in ["select upper('x'::varchar)", "select 1 === 2"]:
        assert isinstance(_decide(router, sql), Refuse), sql
    reloaded = load_router(path, router.schemas, router.search_paths, router.routines)
    assert isinstance(_decide(reloaded, "select upper('x'::varchar)"), Refuse)
    assert _decide(reloaded, "select pg_catalog.upper('x'::varchar)") == ORIGINAL


def test_without_user_routines_the_built_in_is_assumed(tmp_path):
    router, _ = _router(tmp_path, with_routines=False)
    assert _decide(router, "select upper('x'::varchar)") == ORIGINAL


def test_secret_settings_are_refused_though_their_shape_is_not(tmp_path):
    router, _ = _router(tmp_path)
    assert _decide(router, "select current_setting('TimeZone')") == ORIGINAL
    assert isinstance(_decide(router, "select current_setting('primary_conninfo')"), Refuse)
    assert _decide(router, "select setting from pg_settings where name = 'work_mem'") == ORIGINAL
    assert isinstance(_decide(router, "select setting from pg_settings where name = 'archive_command'"), Refuse)


def test_a_text_too_long_to_shape_is_decided_as_it_is(tmp_path, monkeypatch):
    """A huge statement is never scanned for its shape (it is refused by its parse: 54001); a long one
    that is not too complex gets the decision its text gets."""
    from proxy.enforce import router as router_module

    router, _ = _router(tmp_path)
    monkeypatch.setattr(router_module, "SHAPED_MAX_CHARS", 1000)
    scanned: list[str] = []
    real = router_module.shapes.shape
    monkeypatch.setattr(router_module.shapes, "shape", lambda sql: scanned.append(sql) or real(sql))
    long = "select name from customers where " + " or ".join(f"id = {i}" for i in range(200))
    decision = _decide(router, long)
    assert scanned == [] and "acme" in decision.sql and "id = 199" in decision.sql
    short = "select name from customers where id = 7"
    assert "acme" in _decide(router, short).sql and scanned == [short]
    huge = "select 1 from customers where " + " or ".join(f"name = 'y{i}'" for i in range(20000))
    refused = _decide(router, huge)
    assert isinstance(refused, Refuse) and refused.sqlstate == "54001" and scanned == [short]
