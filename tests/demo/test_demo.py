"""`pgwarden demo`: it starts fast, its psql lines show isolation and masks, SIGINT/SIGTERM leave nothing."""

from __future__ import annotations

import glob
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.harness import PG_HOST, PG_PORT, ROOT, free_port


def _psql(line: str, sql: str) -> str:
    conninfo = re.search(r'psql "([^"]+)"', line).group(1)
    result = subprocess.run(
        ["psql", conninfo, "-X", "-A", "-t", "-c", sql],
        capture_output=True,
        text=True,
        timeout=20,
        env={"PGSSLMODE": "disable", "PATH": "/usr/bin:/bin"},
    )
    return result.stdout + result.stderr


def _demo_processes() -> list[str]:
    """Command lines of running processes of a demo (its cluster lives in /tmp/pgwarden-demo-*)."""
    found = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            text = cmdline.read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        if "pgwarden-demo-" in text:
            found.append(text)
    return found


def _start(*flags: str) -> tuple[subprocess.Popen, list[str]]:
    port, http_port = free_port(), free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "proxy.app.demo", "--port", str(port), "--http-port", str(http_port), *flags],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    lines: list[str] = []
    while not any(line.startswith("(ready in") for line in lines):
        line = proc.stdout.readline()
        if not line:
            proc.wait(10)
            pytest.fail("demo exited:\n" + "".join(lines))
        lines.append(line)
    return proc, lines


def _lines(lines: list[str]) -> dict[str, str]:
    return {
        key: next(l for l in lines if l.strip().startswith(key))
        for key in ("tenant acme", "tenant globex", "analyst", "admin (bypass)")
    }


@pytest.mark.parametrize("stop", [signal.SIGINT, signal.SIGTERM])
def test_demo_isolates_masks_refuses_and_cleans_up(stop):
    before = set(glob.glob("/tmp/pgwarden-demo-*"))
    started = time.monotonic()
    proc, lines = _start()
    try:
        assert time.monotonic() - started < 10, "the demo starts in under 10 seconds"
        psql = _lines(lines)
        acme = _psql(psql["tenant acme"], "select name, ssn from customers order by id")
        globex = _psql(psql["tenant globex"], "select name, ssn from customers order by id")
        assert acme.count("\n") == 10 and "Ann Archer|****" in acme and "Gus" not in acme
        assert globex.count("\n") == 10 and "Gus Grant|****" in globex and "Ann" not in globex
        analyst = _psql(psql["analyst"], "select email, phone, born from customers order by id")
        assert analyst.splitlines()[0] == "****@acme.io|****0101|1962-01-01"
        assert _psql(psql["admin (bypass)"], "select count(*) from customers").strip() == "20"
        refused = _psql(psql["tenant acme"], "select * from secrets")
        assert "refused" in refused and "HINT:" in refused
        who = "select current_user, current_setting('is_superuser')"
        for user in ("tenant acme", "tenant globex", "analyst"):  # policed: the least-privilege role
            assert _psql(psql[user], who).strip() == "pgwarden_demo_policed|off"
        assert _psql(psql["admin (bypass)"], who).strip() == "postgres|on"
    finally:
        proc.send_signal(stop)
        assert proc.wait(30) in (0, 130)
    assert not set(glob.glob("/tmp/pgwarden-demo-*")) - before, "a temp dir was left behind"
    assert not _demo_processes(), "a demo PostgreSQL is still running"


def test_demo_on_a_given_database_url_drops_its_database():
    url = f"postgresql://postgres@{PG_HOST}:{PG_PORT}/postgres"
    proc, lines = _start("--database-url", url)
    try:
        assert "dbname=pgwarden_demo" in lines[3]
        acme = _psql(_lines(lines)["tenant acme"], "select count(*) from customers")
        assert acme.strip() == "10"
        who = _psql(_lines(lines)["tenant acme"], "select current_user, current_setting('is_superuser')")
        assert who.strip() == "pgwarden_demo_policed|off"
    finally:
        proc.send_signal(signal.SIGINT)
        proc.wait(30)
    left = subprocess.run(
        [
            "psql",
            "-X",
            "-A",
            "-t",
            "-h",
            PG_HOST,
            "-p",
            str(PG_PORT),
            "-U",
            "postgres",
            "-c",
            "select (select count(*) from pg_database where datname = 'pgwarden_demo')"
            " + (select count(*) from pg_roles where rolname = 'pgwarden_demo_policed')",
        ],
        capture_output=True,
        text=True,
    )
    assert left.stdout.strip() == "0"


def test_a_port_in_use_is_one_clear_line():
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        result = subprocess.run(
            [sys.executable, "-m", "proxy.app.demo", "--port", str(port)],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=30,
        )
    assert result.returncode == 1
    assert result.stderr.strip() == (
        f"pgwarden demo: port {port} is in use (another pgwarden or PgBouncer?): use --port"
    )


def test_a_bad_database_url_is_one_clear_line():
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "proxy.app.demo",
            "--port",
            str(free_port()),
            "--http-port",
            str(free_port()),
            "--database-url",
            "postgresql://nobody@127.0.0.1:1/x",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 1
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert "check the server, user and password" in result.stderr
