"""/metrics (parsed with prometheus_client's own parser) and /readyz, through a real pgwarden."""

from __future__ import annotations

import asyncio
import json
import time
import urllib.error
import urllib.parse
import urllib.request

import psycopg
import pytest
from prometheus_client.parser import text_string_to_metric_families

from proxy.app.server import Server
from proxy.config.model import Config
from proxy.ops.metrics import Metrics, MetricsConfig
from tests.harness import REDIS_URL, free_port, scrape
from tests.policy.conftest import DB, POLICED_ROLE, connect, policy_proxy, shop_db  # noqa: F401 (fixture)


def value(samples, name: str, **labels) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def test_metrics_follow_traffic_refusals_and_pools(shop_db, tmp_path):
    proxy = policy_proxy(tmp_path / "m", "transaction")
    try:
        before = scrape(proxy)
        with connect(proxy, "acme_app") as conn:
            conn.execute("select count(*) from customers")
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                conn.execute("select * from secrets")
            with pytest.raises(psycopg.errors.UndefinedColumn):
                conn.execute("select nope from countries")
            during = scrape(proxy)
        after = scrape(proxy)
        assert (
            sum(
                value(after, "pgwarden_statements_total", protocol=p, decision="rewritten")
                for p in ("simple", "extended")
            )
            >= 1
        )
        assert (
            value(after, "pgwarden_refusals_total", rule="tables.public.secrets")
            == value(before, "pgwarden_refusals_total", rule="tables.public.secrets") + 1
        )
        assert value(after, "pgwarden_backend_errors_total", **{"class": "42"}) >= 1
        assert value(after, "pgwarden_logins_total", outcome="ok") >= 1
        assert value(during, "pgwarden_client_connections", state="ready") >= 1
        pool = f"{DB}/{POLICED_ROLE}"  # acme_app's backends log in as the policed role
        assert value(after, "pgwarden_backend_connections", pool=pool, state="idle") >= 1
        assert value(after, "pgwarden_policy_loaded") == 1
        assert value(after, "pgwarden_rewrite_seconds_count") >= 1
        time.sleep(1.2)  # statement latencies are aggregated once a second
        assert value(scrape(proxy), "pgwarden_statement_seconds_count") >= 2
        assert value(after, "pgwarden_rewrite_cache_lookups", result="miss") >= 1
    finally:
        proxy.stop()


def _readyz(proxy) -> tuple[int, dict]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{proxy.http_port}/readyz", timeout=5) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def test_readyz_reports_each_check(make_proxy):
    ok = make_proxy()
    status, body = _readyz(ok)
    assert status == 200 and body["ready"] and body["checks"]["primary_reachable"]
    down = make_proxy(primary={"host": "127.0.0.1", "port": free_port()})
    status, body = _readyz(down)
    assert status == 503 and body["checks"]["primary_reachable"] is False and body["checks"]["accepting"]
    assert value(scrape(down), "pgwarden_primary_up") == 0 and value(scrape(ok), "pgwarden_primary_up") == 1


def test_readyz_wants_postgresql_not_just_an_open_port(make_proxy):
    """A port that accepts TCP but is not PostgreSQL (here: the tests' Redis) is not a ready primary."""
    redis_port = urllib.parse.urlsplit(REDIS_URL).port
    not_postgres = make_proxy(primary={"host": "127.0.0.1", "port": redis_port})
    status, body = _readyz(not_postgres)
    assert status == 503 and body["checks"]["primary_reachable"] is False


def test_per_tenant_series_are_capped_and_off_by_default():
    async def build() -> Server:
        return Server(Config(primary={"host": "127.0.0.1"}))

    server = asyncio.run(build())
    default = Metrics(server)
    default.statement("simple", "allowed", tenant="acme")
    assert b"pgwarden_tenant_statements" not in default.exposition()
    capped = Metrics(server, MetricsConfig(per_tenant=True, max_tenants=2))
    for tenant in ("acme", "globex", "initech", "umbrella", "acme"):
        capped.statement("extended", "rewritten", tenant=tenant)
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(capped.exposition().decode())
        for s in family.samples
    }
    assert value(samples, "pgwarden_tenant_statements_total", tenant="acme", decision="rewritten") == 2
    assert value(samples, "pgwarden_tenant_statements_total", tenant="other", decision="rewritten") == 2
    assert value(samples, "pgwarden_statements_total", protocol="extended", decision="rewritten") == 5
    tenants = {labels for (name, labels) in samples if name == "pgwarden_tenant_statements_total"}
    assert len(tenants) == 3  # acme, globex, other: never more than max_tenants + 1
