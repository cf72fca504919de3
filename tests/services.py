"""PostgreSQL and Redis for `make test`: the machine's own when they answer, else throwaway ones on free ports.

`python -m tests.services run -- CMD...` checks for a PostgreSQL that lets `postgres` in
without a password on 127.0.0.1 (port `PGWARDEN_TEST_PG_PORT`, default 5432) and a Redis
(`PGWARDEN_TEST_REDIS_URL`, default redis://127.0.0.1:6379/0). What does not answer is
started in a temporary folder on a free port (initdb/pg_ctl from `pg_config --bindir` or
PATH, run as the `postgres` OS user when we are root; redis-server), CMD runs with both
variables set, and whatever was started is stopped and removed afterwards.
"""

from __future__ import annotations

import os
import pwd
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

PG_DEFAULT_PORT, REDIS_DEFAULT = 5432, "redis://127.0.0.1:6379/0"


class Missing(Exception):
    """A server is needed and its binary is not on this machine: the message says what to install."""


@dataclass
class Started:
    """A throwaway server this run started, and how to stop it."""

    what: str
    stop_argv: list[str]
    folder: Path


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def pg_answers(port: int) -> bool:
    """Does 127.0.0.1:`port` let the superuser `postgres` in without a password?"""
    psql = shutil.which("psql")
    if psql is None:
        return _connects(port)
    env = {**os.environ, "PGCONNECT_TIMEOUT": "3", "PGPASSWORD": ""}
    result = subprocess.run(
        [
            psql,
            "-h",
            "127.0.0.1",
            "-p",
            str(port),
            "-U",
            "postgres",
            "-d",
            "postgres",
            "-w",
            "-tAc",
            "select rolsuper from pg_roles where rolname = current_user",
        ],
        capture_output=True,
        text=True,
        env=env,
    )
    return result.returncode == 0 and result.stdout.strip() == "t"


def redis_answers(url: str) -> bool:
    import redis  # a test dependency; imported here so `--help` works without it

    try:
        return bool(redis.Redis.from_url(url, socket_timeout=2).ping())
    except (redis.RedisError, OSError):
        return False


def _connects(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=2):
            return True
    except OSError:
        return False


def _pg_bindir() -> Path:
    candidates = []
    if shutil.which("pg_config"):
        out = subprocess.run(["pg_config", "--bindir"], capture_output=True, text=True).stdout.strip()
        candidates.append(Path(out))
    if shutil.which("initdb"):
        candidates.append(Path(shutil.which("initdb") or "").parent)
    candidates += sorted(Path("/usr/lib/postgresql").glob("*/bin"), reverse=True)
    for path in candidates:
        if (path / "initdb").exists() and (path / "pg_ctl").exists():
            return path
    raise Missing(
        "PostgreSQL does not answer on 127.0.0.1 with trust auth for `postgres`, and no "
        "server binaries (initdb, pg_ctl) were found to start a throwaway one: install "
        "PostgreSQL's server package (apt-get install postgresql) or put its bin folder on PATH"
    )


def start_postgres() -> tuple[int, Started]:
    bindir = _pg_bindir()
    folder = Path(tempfile.mkdtemp(prefix="pgwarden-test-pg-"))
    run_as: list[str] = []
    if os.geteuid() == 0:  # initdb refuses root
        try:
            owner = pwd.getpwnam("postgres")
        except KeyError:
            raise Missing(
                "running as root needs a `postgres` OS user to own the throwaway cluster "
                "(useradd postgres), or run make test as another user"
            ) from None
        os.chown(folder, owner.pw_uid, owner.pw_gid)
        run_as = ["runuser", "-u", "postgres", "--"]
    port, data = _free_port(), folder / "data"
    subprocess.run(
        [*run_as, str(bindir / "initdb"), "-D", str(data), "-A", "trust", "-U", "postgres"],
        check=True,
        capture_output=True,
    )
    options = f"-p {port} -k {folder} -c listen_addresses=127.0.0.1 -c max_connections=300 -c fsync=off"
    subprocess.run(
        [*run_as, str(bindir / "pg_ctl"), "-D", str(data), "-o", options, "-l", str(folder / "log"), "-w", "start"],
        check=True,
        capture_output=True,
    )
    stop = [*run_as, str(bindir / "pg_ctl"), "-D", str(data), "-m", "immediate", "stop"]
    return port, Started(f"PostgreSQL on 127.0.0.1:{port}", stop, folder)


def start_redis() -> tuple[str, Started]:
    binary = shutil.which("redis-server")
    if binary is None:
        raise Missing(
            "Redis does not answer and redis-server is not installed: "
            "apt-get install redis-server (the audit trail's Redis sink is tested against it)"
        )
    folder, port = Path(tempfile.mkdtemp(prefix="pgwarden-test-redis-")), _free_port()
    subprocess.run(
        [
            binary,
            "--daemonize",
            "yes",
            "--bind",
            "127.0.0.1",
            "--port",
            str(port),
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            str(folder),
            "--pidfile",
            str(folder / "pid"),
            "--logfile",
            str(folder / "log"),
        ],
        check=True,
        capture_output=True,
    )
    url = f"redis://127.0.0.1:{port}/0"
    for _ in range(50):
        if redis_answers(url):
            break
        time.sleep(0.1)
    cli = shutil.which("redis-cli")
    stop = [cli, "-p", str(port), "shutdown", "nosave"] if cli else ["pkill", "-F", str(folder / "pid")]
    return url, Started(f"Redis on 127.0.0.1:{port}", stop, folder)


def ensure() -> tuple[dict[str, str], list[Started]]:
    """The environment the tests need, and the servers started to provide it."""
    env, started = {}, []
    pg_port = int(os.environ.get("PGWARDEN_TEST_PG_PORT", PG_DEFAULT_PORT))
    if not pg_answers(pg_port):
        pg_port, server = start_postgres()
        started.append(server)
    env["PGWARDEN_TEST_PG_PORT"] = str(pg_port)
    redis_url = os.environ.get("PGWARDEN_TEST_REDIS_URL", REDIS_DEFAULT)
    if not redis_answers(redis_url):
        redis_url, server = start_redis()
        started.append(server)
    env["PGWARDEN_TEST_REDIS_URL"] = redis_url
    return env, started


def stop(started: list[Started]) -> None:
    for server in started:
        subprocess.run(server.stop_argv, capture_output=True)
        shutil.rmtree(server.folder, ignore_errors=True)


def main(argv: list[str]) -> int:
    if len(argv) < 3 or argv[:2] != ["run", "--"]:
        print(__doc__)
        return 2
    try:
        env, started = ensure()
    except Missing as missing:
        print(f"make test: {missing}", file=sys.stderr)
        return 1
    for server in started:
        print(f"tests: started a throwaway {server.what}", file=sys.stderr)
    try:
        return subprocess.call(argv[2:], env={**os.environ, **env})
    finally:
        stop(started)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
