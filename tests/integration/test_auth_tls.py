"""Authentication and TLS through a real pgwarden, with psql and psycopg: every client method, TLS both ways."""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import asyncpg
import psycopg
import pytest

from proxy.wire.auth import scram_verifier
from proxy.wire.tls import backend_context
from tests.certs import Certs, temporary_certs
from tests.harness import ROOT, ProxyProcess, base_config, free_port
from tests.pgcluster import PgCluster, login

PASSWORDS = {"alice": "alice-pw", "envy": "envy-pw", "verified": "verified-pw"}
USERS = {
    "alice": {"password": "alice-pw"},
    "envy": {"password_env": "PGWARDEN_TEST_ENVY_PW"},
    "verified": {"scram_verifier": scram_verifier("verified-pw")},
}
ENV = {"PGWARDEN_TEST_ENVY_PW": "envy-pw"}
CLUSTER_ROLES = {"md5_user": ("md5-pw", "md5"), "scram_user": ("scram-pw", "scram-sha-256")}


def proxy_process(workdir: Path, env: dict | None = None, **overrides) -> ProxyProcess:
    """A pgwarden on `base_config(**overrides)`, not started yet: use it in a `with`."""
    return ProxyProcess(base_config(**overrides), workdir, env)


@pytest.fixture(scope="module")
def certs() -> Iterator[Certs]:
    with temporary_certs() as made:
        yield made


@pytest.fixture(scope="module")
def other_certs() -> Iterator[Certs]:
    """Certificates of an unrelated CA, for checks that must fail."""
    with temporary_certs() as made:
        yield made


def _password_proxy(tmp_path_factory, method: str):
    """A pgwarden asking clients for passwords with `method`, in front of the local PostgreSQL."""
    proxy = proxy_process(tmp_path_factory.mktemp(method), ENV, auth={"method": method, "users": USERS}).start()
    yield proxy
    proxy.stop()


@pytest.fixture(scope="module")
def scram_proxy(tmp_path_factory):
    yield from _password_proxy(tmp_path_factory, "scram-sha-256")


@pytest.fixture(scope="module")
def md5_proxy(tmp_path_factory):
    yield from _password_proxy(tmp_path_factory, "md5")


@pytest.fixture(params=["scram", "md5"])
def password_proxy(request) -> ProxyProcess:
    """The SCRAM pgwarden, then the md5 one."""
    return request.getfixturevalue(f"{request.param}_proxy")


def psql(
    proxy: ProxyProcess, user: str, password: str = "", sql: str = "SELECT current_user", **dsn
) -> subprocess.CompletedProcess:
    env = {**os.environ, "PGPASSWORD": password, "PGCONNECT_TIMEOUT": "10"}
    env.pop("PGSSLMODE", None)
    return subprocess.run(
        ["psql", "-X", "-A", "-t", "-c", sql, proxy.dsn(user=user, **dsn)],
        capture_output=True,
        text=True,
        env=env,
        timeout=30,
    )


# --- client authentication ---------------------------------------------------------------------


SCRAM_REQUESTS, MD5_REQUESTS = [10, 11, 12, 0], [5, 0]  # AuthenticationSASL..Ok, MD5Password, Ok
LOGINS = [
    ("scram", "alice", SCRAM_REQUESTS),
    ("scram", "envy", SCRAM_REQUESTS),
    ("scram", "verified", SCRAM_REQUESTS),
    ("md5", "alice", MD5_REQUESTS),
    ("md5", "envy", MD5_REQUESTS),
]


@pytest.mark.parametrize("which, user, requests", LOGINS, ids=[f"{w}-{u}" for w, u, _ in LOGINS])
def test_configured_users_log_in_with_psql_and_psycopg(request, which, user, requests):
    proxy = request.getfixturevalue(f"{which}_proxy")
    result = psql(proxy, user, PASSWORDS[user])
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "postgres"  # backend_auth.user
    with psycopg.connect(proxy.dsn(user=user, password=PASSWORDS[user])) as conn:
        assert conn.execute("SELECT 40 + 2").fetchone() == (42,)
    seen = login(proxy.host, proxy.port, user, PASSWORDS[user])
    assert seen.ok and seen.auth_requests == requests


async def asyncpg_login(proxy: ProxyProcess, user: str, password: str) -> str:
    conn = await asyncpg.connect(
        host=proxy.host, port=proxy.port, user=user, password=password, database="postgres", ssl=False, timeout=10
    )
    try:
        return await conn.fetchval("SELECT current_user")
    finally:
        await conn.close()


def test_asyncpg_logs_in_and_gets_sqlstates(password_proxy):
    """asyncpg has its own SCRAM and md5 code (not libpq) and reports the SQLSTATE of a refusal."""
    assert asyncio.run(asyncpg_login(password_proxy, "alice", "alice-pw")) == "postgres"
    with pytest.raises(asyncpg.InvalidPasswordError, match='failed for user "alice"') as err:
        asyncio.run(asyncpg_login(password_proxy, "alice", "not-it"))
    assert err.value.sqlstate == "28P01"
    with pytest.raises(asyncpg.InvalidAuthorizationSpecificationError) as err:
        asyncio.run(asyncpg_login(password_proxy, "mallory", "x"))
    assert err.value.sqlstate == "28000"


NODE_DIR = ROOT / "tests" / "node"
NODE_LOGIN = """
const { Client } = require('pg');
const c = new Client({host: process.env.H, port: +process.env.P, user: process.env.U,
                      password: process.env.W, database: 'postgres', ssl: false});
c.connect().then(() => c.query('SELECT current_user AS u'))
  .then(r => { console.log(r.rows[0].u); return c.end(); })
  .catch(e => { console.log('ERROR ' + e.code + ' ' + e.message); process.exit(1); });
"""


@pytest.mark.skipif(
    not (NODE_DIR / "node_modules" / "pg").exists() or not shutil.which("node"),
    reason="node-postgres is not installed (make node-deps)",
)
def test_node_postgres_logs_in(password_proxy):
    """node-postgres sends the SCRAM user name '*' where libpq sends none."""

    def node(user: str, password: str) -> subprocess.CompletedProcess:
        env = {**os.environ, "H": password_proxy.host, "P": str(password_proxy.port), "U": user, "W": password}
        return subprocess.run(
            ["node", "-e", NODE_LOGIN], cwd=NODE_DIR, env=env, capture_output=True, text=True, timeout=30
        )

    ok = node("alice", "alice-pw")
    assert ok.returncode == 0 and ok.stdout.strip() == "postgres", ok.stdout + ok.stderr
    refused = node("alice", "not-it")
    assert refused.stdout.startswith("ERROR 28P01 password authentication failed"), refused.stdout


def test_wrong_password_is_fatal_28P01(password_proxy):
    seen = login(password_proxy.host, password_proxy.port, "alice", "not-it")
    assert (seen.error["severity"], seen.error["sqlstate"], seen.error["message"]) == (
        "FATAL",
        "28P01",
        'password authentication failed for user "alice"',
    )
    result = psql(password_proxy, "alice", "not-it")
    assert result.returncode != 0
    assert 'FATAL:  password authentication failed for user "alice"' in result.stderr
    with pytest.raises(psycopg.OperationalError, match='password authentication failed for user "alice"'):
        psycopg.connect(password_proxy.dsn(user="alice", password="not-it"))


def test_unknown_user_is_fatal_28000(password_proxy):
    seen = login(password_proxy.host, password_proxy.port, "mallory", "whatever")
    assert (seen.error["severity"], seen.error["sqlstate"]) == ("FATAL", "28000")
    assert seen.error["message"] == 'role "mallory" is not known to pgwarden'
    assert "auth.users" in seen.error["hint"]
    result = psql(password_proxy, "mallory", "whatever")
    assert 'FATAL:  role "mallory" is not known to pgwarden' in result.stderr
    assert "HINT:" in result.stderr and "auth.users" in result.stderr


def test_unknown_database_is_fatal_3D000(password_proxy):
    seen = login(password_proxy.host, password_proxy.port, "alice", "alice-pw", dbname="no_such_db")
    assert (seen.error["severity"], seen.error["sqlstate"]) == ("FATAL", "3D000")
    assert seen.error["message"] == 'database "no_such_db" does not exist'
    with pytest.raises(psycopg.OperationalError, match='database "no_such_db" does not exist'):
        psycopg.connect(password_proxy.dsn(user="alice", password="alice-pw", dbname="no_such_db"))


def test_md5_with_only_a_verifier_says_what_to_change(md5_proxy):
    seen = login(md5_proxy.host, md5_proxy.port, "verified", PASSWORDS["verified"])
    assert (seen.error["severity"], seen.error["sqlstate"]) == ("FATAL", "28000")
    assert "scram-sha-256" in seen.error["hint"]


def test_unset_password_env_is_refused_naming_it(tmp_path):
    with proxy_process(tmp_path, auth={"method": "scram-sha-256", "users": USERS}) as proxy:
        seen = login(proxy.host, proxy.port, "envy", "envy-pw")
        assert (seen.error["severity"], seen.error["sqlstate"]) == ("FATAL", "28000")
        assert "password_env" in seen.error["hint"]
        assert login(proxy.host, proxy.port, "alice", "alice-pw").ok


def test_trust_lets_any_user_in_without_a_password(tmp_path):
    with proxy_process(tmp_path) as proxy:
        seen = login(proxy.host, proxy.port, "whoever", None)
        assert seen.ok and seen.auth_requests == [0]
        result = psql(proxy, "whoever")
        assert result.returncode == 0 and result.stdout.strip() == "postgres", result.stderr
        assert login(proxy.host, proxy.port, "whoever", None, dbname="no_such_db").error["sqlstate"] == "3D000"


# --- TLS between clients and pgwarden -----------------------------------------------------------


def tls_listen(certs: Certs, mode: str) -> dict:
    return {"tls": {"mode": mode, "cert": str(certs.server_cert), "key": str(certs.server_key)}}


def test_listen_tls_allow_serves_tls_and_plain_clients(tmp_path, certs, other_certs):
    with proxy_process(tmp_path, listen=tls_listen(certs, "allow")) as proxy:
        for host in ("127.0.0.1", "localhost"):
            with psycopg.connect(proxy.dsn(host=host, sslmode="verify-full", sslrootcert=str(certs.ca_cert))) as conn:
                assert conn.pgconn.ssl_in_use
                assert conn.execute("SELECT 1").fetchone() == (1,)
        with psycopg.connect(proxy.dsn(sslmode="disable")) as conn:
            assert not conn.pgconn.ssl_in_use
        with pytest.raises(psycopg.OperationalError, match="certificate verify failed"):
            psycopg.connect(proxy.dsn(sslmode="verify-full", sslrootcert=str(other_certs.ca_cert)))
        result = psql(proxy, "postgres", sql="SELECT 1", sslmode="require")
        assert result.returncode == 0, result.stderr


def test_listen_tls_require_refuses_plain_clients_clearly(tmp_path, certs):
    with proxy_process(
        tmp_path, ENV, listen=tls_listen(certs, "require"), auth={"method": "scram-sha-256", "users": USERS}
    ) as proxy:
        seen = login(proxy.host, proxy.port, "alice", "alice-pw")
        assert (seen.error["severity"], seen.error["sqlstate"]) == ("FATAL", "28000")
        assert "requires TLS" in seen.error["message"] and "sslmode=require" in seen.error["hint"]
        result = psql(proxy, "alice", "alice-pw", sslmode="disable")
        assert result.returncode != 0 and "requires TLS" in result.stderr
        result = psql(proxy, "alice", "alice-pw", sslmode="require")
        assert result.returncode == 0 and result.stdout.strip() == "postgres", result.stderr
        tls = backend_context("verify-full", str(certs.ca_cert))
        seen = login(proxy.host, proxy.port, "alice", "alice-pw", tls=tls)
        assert seen.ok and seen.tls_version in ("TLSv1.2", "TLSv1.3")
        assert seen.auth_requests[0] == 10
        with psycopg.connect(proxy.dsn(user="alice", password="alice-pw", sslmode="require")) as conn:
            assert conn.pgconn.ssl_in_use


# --- TLS and passwords between pgwarden and a backend --------------------------------------------


@pytest.fixture(scope="module")
def ssl_cluster(certs):
    """A PostgreSQL with ssl=on and password auth (md5 in pg_hba: SCRAM-stored roles use SCRAM)."""
    cluster = PgCluster(None, free_port(), auth="md5", ssl_certs=certs).start()
    try:
        for name, (password, encryption) in CLUSTER_ROLES.items():
            cluster.create_role(name, password, encryption)
        yield cluster
    finally:
        cluster.stop()


def backend_proxy(
    tmp_path: Path, cluster: PgCluster, tls: dict, backend_auth: dict, env: dict | None = None
) -> ProxyProcess:
    return proxy_process(
        tmp_path, env, primary={"host": cluster.host, "port": cluster.port, "tls": tls}, backend_auth=backend_auth
    )


SSL_QUERY = "SELECT current_user, ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()"
BACKENDS = {
    "require/scram/password_env": ({"mode": "require"}, "scram_user", True),
    "verify-full/md5": ({"mode": "verify-full", "ca": "CA"}, "md5_user", True),
    "verify-full/scram": ({"mode": "verify-full", "ca": "CA"}, "scram_user", True),
    "prefer/md5": ({"mode": "prefer"}, "md5_user", True),
    "disable/scram": ({"mode": "disable"}, "scram_user", False),
}


@pytest.mark.parametrize("tls, role, encrypted", BACKENDS.values(), ids=BACKENDS.keys())
def test_backend_tls_and_password_auth(tmp_path, ssl_cluster, certs, tls, role, encrypted):
    tls = {k: str(certs.ca_cert) if v == "CA" else v for k, v in tls.items()}
    auth = {"user": role, "password_env": "PGWARDEN_TEST_BACKEND_PW"}
    env = {"PGWARDEN_TEST_BACKEND_PW": CLUSTER_ROLES[role][0]}
    with backend_proxy(tmp_path, ssl_cluster, tls, auth, env) as proxy:
        result = psql(proxy, "anyone", sql=SSL_QUERY)
        assert result.returncode == 0, result.stderr + proxy.logs()
        assert result.stdout.strip() == f"{role}|{'t' if encrypted else 'f'}"


def test_backend_user_defaults_to_the_clients(tmp_path, ssl_cluster):
    auth = {"user": None, "password": CLUSTER_ROLES["md5_user"][0]}  # None: no user in the config
    with backend_proxy(tmp_path, ssl_cluster, {"mode": "require"}, auth) as proxy:
        with psycopg.connect(proxy.dsn(user="md5_user")) as conn:
            assert conn.execute(SSL_QUERY).fetchone() == ("md5_user", True)


def test_verify_full_refuses_a_backend_signed_by_another_ca(tmp_path, ssl_cluster, other_certs):
    tls = {"mode": "verify-full", "ca": str(other_certs.ca_cert)}
    auth = {"user": "md5_user", "password": CLUSTER_ROLES["md5_user"][0]}
    with backend_proxy(tmp_path, ssl_cluster, tls, auth) as proxy:
        seen = login(proxy.host, proxy.port, "anyone", None)
        assert seen.error["severity"] == "FATAL"
        assert "certificate verify failed" in seen.error["message"]
        result = psql(proxy, "anyone")
        assert result.returncode != 0 and "certificate verify failed" in result.stderr


def test_backend_password_missing_names_password_env(tmp_path, ssl_cluster):
    with backend_proxy(tmp_path, ssl_cluster, {"mode": "require"}, {"user": "scram_user"}) as proxy:
        seen = login(proxy.host, proxy.port, "anyone", None)
        assert (seen.error["severity"], seen.error["sqlstate"]) == ("FATAL", "28P01")
        assert "backend_auth.password_env" in seen.error["hint"]


def test_backend_wrong_password_is_28P01(tmp_path, ssl_cluster):
    auth = {"user": "scram_user", "password": "not-it"}
    with backend_proxy(tmp_path, ssl_cluster, {"mode": "require"}, auth) as proxy:
        seen = login(proxy.host, proxy.port, "anyone", None)
        assert (seen.error["severity"], seen.error["sqlstate"]) == ("FATAL", "28P01")
        assert 'password authentication failed for user "scram_user"' in seen.error["message"]
