"""A throwaway primary with streaming replicas (pg_basebackup -R) on free ports, for replication tests."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from proxy.routing.lsn import parse_lsn
from tests.harness import free_port, refuse_without_services
from tests.pgcluster import BINDIR, RUN_AS, SUPERUSER, PgCluster

PRIMARY = "primary"


@dataclass
class Server:
    """One server of the cluster: where it listens and where its files are."""

    name: str
    host: str
    port: int
    dir: Path  # its socket directory and log; the data directory is dir / "data"

    @property
    def data(self) -> Path:
        return self.dir / "data"

    @property
    def log(self) -> Path:
        return self.dir / "postgres.log"


class _Primary(PgCluster):
    """PgCluster with trust for TCP plus streaming replication (and synchronous_commit back on)."""

    def _configure(self) -> None:
        super()._configure()
        conf = [
            "wal_level = replica",
            "max_wal_senders = 10",
            "wal_keep_size = '64MB'",
            "full_page_writes = on",
            "synchronous_commit = on",
            "hot_standby = on",
            "hot_standby_feedback = off",
            "wal_receiver_status_interval = 1",
            "checkpoint_timeout = '30min'",
        ]
        with open(self.data / "postgresql.conf", "a") as f:
            f.write("\n".join(conf) + "\n")
        with open(self.data / "pg_hba.conf", "a") as f:
            f.write("local replication all trust\nhost replication all 127.0.0.1/32 trust\n")


class ReplicatedCluster:
    """A primary ("primary") and one streaming replica per name in `replicas`, all on 127.0.0.1, trust auth.

    `apply_delay_ms` gives replicas a recovery_min_apply_delay. `stop()` stops everything and
    removes every file; `start()` cleans up after itself when it fails.
    """

    def __init__(self, replicas: Sequence[str] = ("r1", "r2"), apply_delay_ms: Mapping[str, int] | None = None) -> None:
        self.root = Path(tempfile.mkdtemp(prefix="pgwarden-repl-"))
        os.chmod(self.root, 0o755)  # the postgres OS user goes through to its directories
        self._primary = _Primary(self.root / PRIMARY, free_port(), auth="trust")
        self.servers: dict[str, Server] = {PRIMARY: Server(PRIMARY, "127.0.0.1", self._primary.port, self._primary.dir)}
        for name in replicas:
            self.servers[name] = Server(name, "127.0.0.1", free_port(), self.root / name)
        self.apply_delay_ms = dict(apply_delay_ms or {})
        self.primary_name = PRIMARY  # the writable one (changes with promote)

    def start(self) -> ReplicatedCluster:
        refuse_without_services("a replicated PostgreSQL cluster")
        try:
            self._primary.start()
            for name in self.servers:
                if name != PRIMARY:
                    self._make_replica(self.servers[name])
            for name in self.servers:
                if name != PRIMARY:
                    self.start_server(name)
            lsn = self.primary_lsn()
            for name in self.servers:
                if name != PRIMARY and name not in self.apply_delay_ms:
                    self.wait_replayed(name, lsn, 30)
        except BaseException:
            self.stop()
            raise
        return self

    def _make_replica(self, server: Server) -> None:
        server.dir.mkdir()
        owner = self._primary.dir.stat()  # the postgres OS user when we run as root
        os.chown(server.dir, owner.st_uid, owner.st_gid)
        primary = self.servers[PRIMARY]
        self._run(
            str(BINDIR / "pg_basebackup"),
            *("-h", primary.host, "-p", str(primary.port), "-U", SUPERUSER),
            *("-D", str(server.data), "-R", "-c", "fast", "-X", "stream", "--no-sync"),
        )
        conf = [
            f"port = {server.port}",
            f"unix_socket_directories = '{server.dir}'",
            "hot_standby_feedback = off",
            f"recovery_min_apply_delay = {self.apply_delay_ms.get(server.name, 0)}",
        ]
        with open(server.data / "postgresql.conf", "a") as f:
            f.write("\n".join(conf) + "\n")

    def stop(self) -> None:
        """Stop every server (fast) and remove every file."""
        for server in self.servers.values():
            if (server.data / "postmaster.pid").exists():
                subprocess.run(
                    [*RUN_AS, str(BINDIR / "pg_ctl"), "-D", str(server.data), "-m", "immediate", "-w", "stop"],
                    capture_output=True,
                )
        shutil.rmtree(self.root, ignore_errors=True)

    def stop_server(self, name: str) -> None:
        """Stop one server (fast shutdown: a primary sends its WAL to the replicas first)."""
        self._pg_ctl(self.servers[name], "-m", "fast", "-w", "stop")

    def start_server(self, name: str) -> None:
        server = self.servers[name]
        self._pg_ctl(server, "-l", str(server.log), "-w", "-t", "30", "start")

    def promote(self, name: str, timeout: float = 30.0) -> None:
        """Promote a replica and wait until it takes writes; it is then `primary_name`."""
        self._pg_ctl(self.servers[name], "-w", "-t", str(int(timeout)), "promote")
        deadline = time.monotonic() + timeout
        while self.psql(name, "select pg_is_in_recovery()") != "f":
            if time.monotonic() > deadline:
                raise TimeoutError(f"{name} still in recovery {timeout}s after promote")
            time.sleep(0.05)
        self.primary_name = name

    def primary_lsn(self) -> int:
        return parse_lsn(self.psql(self.primary_name, "select pg_current_wal_lsn()"))

    def replay_lsn(self, name: str) -> int:
        text = self.psql(name, "select pg_last_wal_replay_lsn()")
        return parse_lsn(text) if text else 0

    def wait_replayed(self, name: str, lsn: int, timeout: float) -> None:
        """Wait until replica `name` has replayed up to `lsn`."""
        deadline = time.monotonic() + timeout
        while self.replay_lsn(name) < lsn:
            if time.monotonic() > deadline:
                raise TimeoutError(f"{name} has not replayed {lsn:X} after {timeout}s:\n{self.log_tail(name)}")
            time.sleep(0.05)

    def psql(self, name: str, sql: str) -> str:
        """Run SQL as the superuser over server `name`'s socket; its output (unaligned, tuples only)."""
        server = self.servers[name]
        argv = [str(BINDIR / "psql"), "-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1"]
        argv += ["-h", str(server.dir), "-p", str(server.port), "-U", SUPERUSER, "-d", "postgres", "-c", sql]
        result = subprocess.run(argv, capture_output=True, text=True)
        if result.returncode != 0:
            raise RuntimeError(f"psql on {name} failed: {result.stderr}")
        return result.stdout.strip()

    def log_tail(self, name: str) -> str:
        log = self.servers[name].log
        return log.read_text(errors="replace")[-2000:] if log.exists() else ""

    def _pg_ctl(self, server: Server, *args: str) -> None:
        self._run(str(BINDIR / "pg_ctl"), "-D", str(server.data), *args, what=server.name)

    def _run(self, *argv: str, what: str = "") -> None:
        result = subprocess.run([*RUN_AS, *argv], capture_output=True, text=True, cwd=self.root)
        if result.returncode != 0:
            tail = self.log_tail(what) if what else ""
            raise RuntimeError(
                f"{Path(argv[0]).name} failed ({result.returncode}):\n{result.stdout}{result.stderr}{tail}"
            )

    def __enter__(self) -> ReplicatedCluster:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
