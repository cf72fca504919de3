"""`limits:` under a policy: a bucket per tenant value, limits per policy role (statement_timeout)."""

from __future__ import annotations

import time

import psycopg
import pytest

from tests.policy.conftest import connect, policy_proxy, shop_db  # noqa: F401 (fixture)


@pytest.fixture(scope="module")
def limited(shop_db, tmp_path_factory):
    limits = {
        "tenants": {"*": {"statements_per_second": 2, "burst": 2}},
        "roles": {"analyst": {"statement_timeout_ms": 400}},
    }
    proxy = policy_proxy(tmp_path_factory.mktemp("limits-policed"), "transaction", limits=limits)
    yield proxy
    proxy.stop()


def test_each_tenant_has_its_own_bucket(limited):
    with connect(limited, "acme_app") as acme, connect(limited, "globex_app") as globex:
        time.sleep(1.1)
        for _ in range(2):
            acme.execute("select count(*) from orders")
        with pytest.raises(psycopg.errors.ConfigurationLimitExceeded) as info:
            acme.execute("select count(*) from orders")
        assert info.value.diag.message_primary == "rate limit for tenant 'acme' exceeded: 2 statements per second"
        for _ in range(2):  # globex's bucket is its own
            assert globex.execute("select count(*) from orders").fetchone() == (1,)
    with connect(limited, "saas_backend") as saas:  # a trusted user moves between buckets with SET
        time.sleep(1.1)
        saas.execute("set pgwarden.tenant = 'globex'")  # (no tenant before it: no tenant bucket pays)
        saas.execute("select 1")
        saas.execute("select 1")
        with pytest.raises(psycopg.errors.ConfigurationLimitExceeded) as info:
            saas.execute("select 1")
        assert "tenant 'globex'" in info.value.diag.message_primary


def test_statement_timeout_per_role(limited):
    with connect(limited, "alice") as alice:
        assert alice.execute("show statement_timeout").fetchone() == ("400ms",)
        with pytest.raises(psycopg.errors.ConfigurationLimitExceeded) as info:
            alice.execute("set statement_timeout = 0")
        assert "at most 400 ms" in info.value.diag.message_primary
        alice.execute("set statement_timeout = 200")
        assert alice.execute("show statement_timeout").fetchone() == ("200ms",)
    with connect(limited, "acme_app") as app:  # another role: no cap
        app.execute("set statement_timeout = 0")
