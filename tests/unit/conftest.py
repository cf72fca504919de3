"""Fixtures of the auth and TLS tests: test certificates and one throwaway PostgreSQL with TLS."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.certs import Certs, temporary_certs
from tests.harness import free_port
from tests.pgcluster import PgCluster

# Roles of the cluster: name -> (password, how PostgreSQL stores it).
ROLES = {
    "md5_user": ("md5-secret", "md5"),
    "scram_user": ("scram-secret", "scram-sha-256"),
    "clear_user": ("clear-secret", "scram-sha-256"),
    "unicode_user": ("pässwörd\u00a0ü", "scram-sha-256"),
}  # SASLprep maps U+00A0 to a space


@pytest.fixture(scope="session")
def certs() -> Iterator[Certs]:
    with temporary_certs() as made:
        yield made


@pytest.fixture(scope="session")
def other_certs() -> Iterator[Certs]:
    """Certificates of an unrelated CA, for checks that must fail."""
    with temporary_certs() as made:
        yield made


@pytest.fixture(scope="session")
def pg_cluster(certs) -> Iterator[PgCluster]:
    """A cluster with ssl=on whose pg_hba says md5 (so SCRAM-stored roles use SCRAM) and cleartext
    for clear_user; the roles of ROLES exist."""
    cluster = PgCluster(None, free_port(), auth="md5", ssl_certs=certs).start()
    try:
        for name, (password, encryption) in ROLES.items():
            cluster.create_role(name, password, encryption)
        yield cluster
    finally:
        cluster.stop()
