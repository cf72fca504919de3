"""A throwaway PostgreSQL cluster for tests that need password auth or TLS (the local one trusts 127.0.0.1)."""

from __future__ import annotations

import os
import pwd
import shutil
import socket
import ssl
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from proxy.wire import protocol
from proxy.wire.auth import BackendAuth
from tests.certs import Certs
from tests.harness import refuse_without_services

BINDIR = Path(subprocess.run(["pg_config", "--bindir"], capture_output=True, text=True, check=True).stdout.strip())
SUPERUSER, SUPERUSER_PASSWORD = "postgres", "cluster-superuser-pw"
OS_USER = "postgres"  # initdb refuses to run as root: as root, run the cluster as this user
RUN_AS = ["runuser", "-u", OS_USER, "--"] if os.geteuid() == 0 else []


class PgCluster:
    """initdb + start a cluster on 127.0.0.1:`port` with `auth` for TCP, trust on its own socket.

    `tmpdir` is created (if missing) and, when we run as root, given to the postgres OS user; its
    parents must let that user through (pytest's tmp_path does not: use tempfile.mkdtemp(), or leave tmpdir None).
    With `ssl_certs`, the server runs with ssl=on and those certificates; `settings` are more
    postgresql.conf lines (`wal_level = logical`, ...); replication connections log in like the others. The role
    "clear_user" (when created) logs in with cleartext password auth, every other role with `auth`.
    `stop()` removes `tmpdir` with everything in it.
    """

    def __init__(
        self,
        tmpdir: Path | None,
        port: int,
        auth: str = "scram-sha-256",
        ssl_certs: Certs | None = None,
        settings: tuple[str, ...] = (),
    ) -> None:
        self.dir = Path(tmpdir or tempfile.mkdtemp(prefix="pgwarden-pg-"))
        self.port = port
        self.auth = auth
        self.ssl_certs = ssl_certs
        self.settings = settings
        self.data = self.dir / "data"
        self.host = "127.0.0.1"
        owner = pwd.getpwnam(OS_USER) if RUN_AS else pwd.getpwuid(os.geteuid())
        self._uid, self._gid = owner.pw_uid, owner.pw_gid

    def _as_postgres(self, *argv: str) -> subprocess.CompletedProcess:
        result = subprocess.run([*RUN_AS, *argv], capture_output=True, text=True, cwd=self.dir)
        if result.returncode != 0:
            raise RuntimeError(
                f"{argv[0]} failed ({result.returncode}):\n{result.stdout}{result.stderr}{self._log_tail()}"
            )
        return result

    def _own(self, path: Path, mode: int) -> None:
        os.chown(path, self._uid, self._gid)
        os.chmod(path, mode)

    def start(self) -> PgCluster:
        refuse_without_services("a PostgreSQL cluster")
        try:
            self._init_and_start()
        except BaseException:
            self.stop()
            raise
        return self

    def _init_and_start(self) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        self._own(self.dir, 0o755)
        pwfile = self.dir / "pwfile"
        pwfile.write_text(SUPERUSER_PASSWORD + "\n")
        self._own(pwfile, 0o600)
        self._as_postgres(
            str(BINDIR / "initdb"),
            "-D",
            str(self.data),
            "-U",
            SUPERUSER,
            f"--pwfile={pwfile}",
            "--auth-local=trust",
            f"--auth-host={self.auth}",
            "--no-sync",
            "--no-instructions",
            "-E",
            "UTF8",
            "--locale=C",
        )
        self._configure()
        self._as_postgres(
            str(BINDIR / "pg_ctl"),
            "-D",
            str(self.data),
            "-l",
            str(self.dir / "postgres.log"),
            "-w",
            "-t",
            "30",
            "start",
        )

    def _configure(self) -> None:
        conf = [
            f"port = {self.port}",
            "listen_addresses = '127.0.0.1'",
            f"unix_socket_directories = '{self.dir}'",
            "fsync = off",
            "synchronous_commit = off",
            "full_page_writes = off",
            "max_connections = 30",
            "shared_buffers = 16MB",
            *self.settings,
        ]
        if self.ssl_certs is not None:
            for name, src in (("server.crt", self.ssl_certs.server_cert), ("server.key", self.ssl_certs.server_key)):
                shutil.copyfile(src, self.data / name)
                self._own(self.data / name, 0o600)
            conf += ["ssl = on", "ssl_cert_file = 'server.crt'", "ssl_key_file = 'server.key'"]
        with open(self.data / "postgresql.conf", "a") as f:
            f.write("\n".join(conf) + "\n")
        hba = [
            "local all all trust",
            "host all clear_user 127.0.0.1/32 password",
            f"host all all 127.0.0.1/32 {self.auth}",
            f"host replication all 127.0.0.1/32 {self.auth}",
        ]
        (self.data / "pg_hba.conf").write_text("\n".join(hba) + "\n")

    def psql(self, sql: str) -> str:
        """Run SQL as the superuser over the cluster's own socket (trusted); return its output."""
        result = subprocess.run(
            [
                str(BINDIR / "psql"),
                "-X",
                "-q",
                "-A",
                "-t",
                "-v",
                "ON_ERROR_STOP=1",
                "-h",
                str(self.dir),
                "-p",
                str(self.port),
                "-U",
                SUPERUSER,
                "-d",
                "postgres",
                "-c",
                sql,
            ],
            capture_output=True,
            text=True,
        )
        if result.returncode != 0:
            raise RuntimeError(f"psql failed: {result.stderr}")
        return result.stdout.strip()

    def create_role(self, name: str, password: str, encryption: str = "scram-sha-256") -> None:
        """A login role whose password is stored as `encryption` (md5 or scram-sha-256)."""
        self.psql(f"SET password_encryption = '{encryption}'; CREATE ROLE \"{name}\" LOGIN PASSWORD '{password}'")

    def stop(self) -> None:
        if (self.data / "postmaster.pid").exists():
            subprocess.run(
                [*RUN_AS, str(BINDIR / "pg_ctl"), "-D", str(self.data), "-m", "immediate", "-w", "stop"],
                capture_output=True,
            )
        shutil.rmtree(self.dir, ignore_errors=True)

    def _log_tail(self) -> str:
        log = self.dir / "postgres.log"
        return "\n" + log.read_text(errors="replace")[-2000:] if log.exists() else ""

    def __enter__(self) -> PgCluster:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


@dataclass
class Login:
    """How a login went: the backend's ErrorResponse fields (empty on success) and the socket's TLS."""

    error: dict[str, str] = field(default_factory=dict)
    tls_version: str | None = None
    auth_requests: list[int] = field(default_factory=list)  # AuthenticationXXX codes seen

    @property
    def ok(self) -> bool:
        return not self.error


def login(
    host: str,
    port: int,
    user: str,
    password: str | None,
    *,
    dbname: str = "postgres",
    tls: ssl.SSLContext | None = None,
    server_hostname: str | None = None,
) -> Login:
    """Startup and authentication over a blocking socket, with BackendAuth answering the backend.

    Raises AuthFailed when BackendAuth refuses; returns at ReadyForQuery or at an ErrorResponse.
    """
    result = Login()
    with socket.create_connection((host, port), timeout=10) as raw:
        sock: socket.socket = raw
        if tls is not None:
            raw.sendall(protocol.ssl_request())
            if raw.recv(1) != b"S":
                raise ssl.SSLError("the backend refused TLS")
            sock = tls.wrap_socket(raw, server_hostname=server_hostname or host)
            result.tls_version = sock.version()
        sock.sendall(protocol.startup_message({"user": user, "database": dbname}))
        auth, framer = BackendAuth(user, password), protocol.Framer()
        while True:
            data = sock.recv(65536)
            if not data:
                raise ConnectionError("the backend closed the connection during startup")
            framer.feed(data)
            for kind, msg in framer.messages():
                if kind == ord("R"):
                    result.auth_requests.append(int.from_bytes(msg[5:9], "big"))
                    sock.sendall(auth.receive(msg))
                elif kind == ord("E"):
                    result.error = protocol.decode_fields(msg)
                    return result
                elif kind == ord("Z"):
                    assert auth.done, "ReadyForQuery before AuthenticationOk"
                    sock.sendall(protocol.TERMINATE)
                    return result
