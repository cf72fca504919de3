"""The `replicated` fixture: a primary with replicas "r1" and "r2" (r2 applies WAL 2 s late), or a skip."""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from tests.harness import NO_SERVICES

if TYPE_CHECKING:
    from tests.replication.cluster import ReplicatedCluster

APPLY_DELAY_MS = 2000  # r2's recovery_min_apply_delay
NEEDED = ("initdb", "pg_ctl", "pg_basebackup", "postgres", "psql")


def missing() -> str | None:
    """Why no replicated cluster can be started here (None: it can)."""
    if NO_SERVICES:
        return "PGWARDEN_TEST_SERVICES=none: no PostgreSQL cluster is started"
    pg_config = shutil.which("pg_config")
    if pg_config is None:
        return "pg_config is not on PATH (PostgreSQL server binaries missing)"
    bindir = Path(subprocess.run([pg_config, "--bindir"], capture_output=True, text=True).stdout.strip())
    absent = [name for name in NEEDED if not (bindir / name).exists()]
    if absent:
        return f"PostgreSQL binaries missing in {bindir}: {', '.join(absent)}"
    if os.geteuid() == 0:
        try:
            pwd.getpwnam("postgres")
        except KeyError:
            return "running as root and there is no `postgres` OS user to run initdb as"
    return None


@pytest.fixture(scope="module")
def replicated() -> Iterator[ReplicatedCluster]:
    """A primary and replicas r1 (streaming) and r2 (recovery_min_apply_delay APPLY_DELAY_MS), torn down after."""
    reason = missing()
    if reason is not None:
        pytest.skip(reason)
    from tests.replication.cluster import ReplicatedCluster  # imports tests.pgcluster, which runs pg_config

    cluster = ReplicatedCluster(("r1", "r2"), apply_delay_ms={"r2": APPLY_DELAY_MS}).start()
    try:
        yield cluster
    finally:
        cluster.stop()
