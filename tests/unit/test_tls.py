"""Tests of proxy/wire/tls.py: contexts against a real PostgreSQL with ssl=on, and libpq against server_context."""

from __future__ import annotations

import socket
import ssl
import threading

import psycopg
import pytest

from proxy.wire.auth import Credential
from proxy.wire.tls import backend_context, server_context
from tests.pgcluster import login
from tests.unit.authserver import AuthServer
from tests.unit.conftest import ROLES

SCRAM_PASSWORD = ROLES["scram_user"][0]


def test_disable_means_no_context():
    assert backend_context("disable", None) is None


@pytest.mark.parametrize("mode, ca", [("verify-full", None), ("verify-ca", None), ("allow", None)])
def test_bad_backend_settings_are_refused(mode, ca):
    with pytest.raises(ValueError):
        backend_context(mode, ca)


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost"])
def test_verify_full_with_the_right_ca_logs_in_over_tls(pg_cluster, certs, host):
    tls = backend_context("verify-full", str(certs.ca_cert))
    result = login(pg_cluster.host, pg_cluster.port, "scram_user", SCRAM_PASSWORD, tls=tls, server_hostname=host)
    assert result.ok, result.error
    assert result.tls_version in ("TLSv1.2", "TLSv1.3")
    assert result.auth_requests[0] == 10  # SCRAM over TLS (PostgreSQL also offers -PLUS)


def test_verify_full_refuses_a_backend_signed_by_another_ca(pg_cluster, other_certs):
    tls = backend_context("verify-full", str(other_certs.ca_cert))
    with pytest.raises(ssl.SSLCertVerificationError, match="certificate verify failed"):
        login(pg_cluster.host, pg_cluster.port, "scram_user", SCRAM_PASSWORD, tls=tls)


def test_verify_full_refuses_a_host_name_the_certificate_does_not_name(pg_cluster, certs):
    tls = backend_context("verify-full", str(certs.ca_cert))
    with pytest.raises(ssl.SSLCertVerificationError, match="[Hh]ostname mismatch|not valid for"):
        login(pg_cluster.host, pg_cluster.port, "scram_user", SCRAM_PASSWORD, tls=tls, server_hostname="db.example.com")


@pytest.mark.parametrize("mode", ["prefer", "require"])
def test_require_encrypts_without_verifying(pg_cluster, mode):
    tls = backend_context(mode, None)
    result = login(
        pg_cluster.host, pg_cluster.port, "md5_user", ROLES["md5_user"][0], tls=tls, server_hostname="db.example.com"
    )
    assert result.ok and result.tls_version in ("TLSv1.2", "TLSv1.3")


def test_require_with_a_ca_checks_the_chain_not_the_name(pg_cluster, certs, other_certs):
    """libpq's sslmode=require behaves like verify-ca when a root certificate is given."""
    right = backend_context("require", str(certs.ca_cert))
    assert login(
        pg_cluster.host, pg_cluster.port, "md5_user", ROLES["md5_user"][0], tls=right, server_hostname="db.example.com"
    ).ok
    wrong = backend_context("require", str(other_certs.ca_cert))
    with pytest.raises(ssl.SSLCertVerificationError):
        login(pg_cluster.host, pg_cluster.port, "md5_user", ROLES["md5_user"][0], tls=wrong)


def test_contexts_refuse_tls_below_1_2(certs):
    assert server_context(str(certs.server_cert), str(certs.server_key)).minimum_version == ssl.TLSVersion.TLSv1_2
    assert backend_context("require", None).minimum_version == ssl.TLSVersion.TLSv1_2


def test_server_context_answers_with_postgresql_alpn(certs):
    """PostgreSQL 17's libpq offers ALPN "postgresql"; the server names it back as PostgreSQL does."""
    server = server_context(str(certs.server_cert), str(certs.server_key))
    client = backend_context("verify-full", str(certs.ca_cert))
    listener = socket.create_server(("127.0.0.1", 0))
    with listener, socket.create_connection(listener.getsockname()) as raw:
        accepted, _ = listener.accept()
        done = threading.Thread(target=lambda: server.wrap_socket(accepted, server_side=True).close())
        done.start()
        with client.wrap_socket(raw, server_hostname="localhost") as tls:
            assert tls.selected_alpn_protocol() == "postgresql"
        done.join(10)


def test_server_context_needs_a_key_matching_the_certificate(certs, other_certs):
    with pytest.raises(ssl.SSLError):
        server_context(str(certs.server_cert), str(other_certs.server_key))


def connect(port: int, **tls) -> psycopg.Connection:
    return psycopg.connect(
        host="127.0.0.1",
        port=port,
        user="alice",
        password="pw",
        dbname="db",
        gssencmode="disable",
        connect_timeout=5,
        **tls,
    )


def test_libpq_verifies_the_server_context(certs, other_certs):
    server = AuthServer(
        "scram-sha-256",
        {"alice": Credential(password="pw")},
        tls=server_context(str(certs.server_cert), str(certs.server_key)),
    )
    try:
        with connect(server.port, sslmode="verify-full", sslrootcert=str(certs.ca_cert)) as conn:
            assert conn.pgconn.ssl_in_use
        with pytest.raises(psycopg.OperationalError, match="certificate verify failed"):
            connect(server.port, sslmode="verify-full", sslrootcert=str(other_certs.ca_cert))
        with connect(server.port, sslmode="disable") as conn:  # TLS is offered, not imposed, here
            assert not conn.pgconn.ssl_in_use
    finally:
        server.close()
