"""The router judges each database's statements with its backend's PostgreSQL major."""

from __future__ import annotations

from proxy.enforce.router import ORIGINAL, Forward, Refuse, load_router
from tests.policy.conftest import POLICY
from tests.unit.test_router_routines import SCHEMA


def _router(tmp_path, major):
    path = tmp_path / "policy.yaml"
    path.write_text(POLICY)
    router = load_router(path)
    router.add_schema("shop", SCHEMA, ("public",), None, major)
    return router


def _decide(router, sql):
    return router.decide(router.identity("acme_app"), "acme", "shop", sql)


def test_a_15_backend_gets_the_text_as_15_reads_it(tmp_path):
    router = _router(tmp_path, 15)
    assert router.server_supported("shop")
    assert isinstance(_decide(router, "select * from system_user"), Refuse)
    decision = _decide(router, "select x::json ->> 'a' from (select '{\"a\":1}' as x) t")
    assert isinstance(decision, Forward) and '::"json"' in decision.sql
    # the literal-shape cache puts the client's literals back into the quoted text
    decision = _decide(router, "select 'a'::json, 2")
    assert isinstance(decision, Forward) and decision.sql == "select 'a'::\"json\", 2"


def test_an_18_backend_gets_the_clients_text(tmp_path):
    router = _router(tmp_path, 18)
    assert _decide(router, "select '{}'::json") == ORIGINAL


def test_an_unknown_major_is_judged_as_the_parser_reads(tmp_path):
    assert _decide(_router(tmp_path, None), "select '{}'::json") == ORIGINAL


def test_an_unsupported_backend_refuses_every_policed_statement(tmp_path):
    for major in (13, 14, 19):
        router = _router(tmp_path, major)
        assert not router.server_supported("shop")
        decision = _decide(router, "select 1")
        assert isinstance(decision, Refuse) and decision.sqlstate == "0A000"
        assert f"PostgreSQL {major}" in decision.message
        assert router.decide(router.identity("postgres"), None, "shop", "select 1") == ORIGINAL  # bypass


def test_a_backend_reporting_another_major_than_the_control_plane_read(tmp_path):
    router = _router(tmp_path, 15)
    assert router.version_problem("shop", "15.8 (Debian 15.8-1.pgdg120+1)") is None
    assert router.version_problem("shop", "") is None
    message, hint = router.version_problem("shop", "16.2")
    assert "PostgreSQL 16.2" in message and "PostgreSQL 15" in message and hint


def test_an_unsupported_backend_is_a_login_problem(tmp_path):
    message, hint = _router(tmp_path, 14).version_problem("shop", "14.11")
    assert "PostgreSQL 14" in message and "15 to 18" in message and hint


def test_a_reload_keeps_each_databases_major(tmp_path):
    """A reloaded policy keeps the live schemas, so the schema is not read again: the major must come along."""
    router = _router(tmp_path, 15)
    reloaded = load_router(router.source, router.schemas, router.search_paths, router.routines, router.server_majors)
    assert reloaded.server_majors == {"shop": 15}
    assert isinstance(_decide(reloaded, "select * from system_user"), Refuse)
