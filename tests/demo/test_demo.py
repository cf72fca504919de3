"""`pgwarden demo`: it starts fast, its printed psql lines show isolation and masks, Ctrl-C leaves nothing."""

from __future__ import annotations

import glob
import re
import signal
import subprocess
import sys
import time

import pytest

from tests.harness import ROOT, free_port


def _psql(line: str, sql: str) -> str:
    conninfo = re.search(r'psql "([^"]+)"', line).group(1)
    result = subprocess.run(["psql", conninfo, "-X", "-A", "-t", "-c", sql], capture_output=True,
                            text=True, timeout=20, env={"PGSSLMODE": "disable", "PATH": "/usr/bin:/bin"})
    return result.stdout + result.stderr


def test_demo_isolates_masks_refuses_and_cleans_up():
    before = set(glob.glob("/tmp/pgwarden-demo-*"))
    port, http_port = free_port(), free_port()
    proc = subprocess.Popen([sys.executable, "-m", "proxy", "demo", "--port", str(port),
                             "--http-port", str(http_port)], cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    lines: list[str] = []
    started = time.monotonic()
    try:
        while not any(line.startswith("(ready in") for line in lines):
            line = proc.stdout.readline()
            assert line, "demo exited:\n" + "".join(lines)
            lines.append(line)
        assert time.monotonic() - started < 10, "the demo starts in under 10 seconds"
        psql = {key: next(l for l in lines if l.strip().startswith(key)) for key in
                ("tenant acme", "tenant globex", "analyst", "admin console")}
        acme = _psql(psql["tenant acme"], "select name, ssn from customers order by id")
        globex = _psql(psql["tenant globex"], "select name, ssn from customers order by id")
        assert "Ann Archer|****" in acme and "Gus" not in acme
        assert "Gus Grant|****" in globex and "Ann" not in globex
        analyst = _psql(psql["analyst"], "select email, phone from customers order by id")
        assert "****@acme.io|****0101" in analyst
        assert "refused" in _psql(psql["tenant acme"], "select * from secrets")
    finally:
        proc.send_signal(signal.SIGINT)
        proc.wait(30)
    leftover = set(glob.glob("/tmp/pgwarden-demo-*")) - before
    assert not leftover, f"temp dirs left behind: {leftover}"
    running = subprocess.run(["pgrep", "-f", "pgwarden-demo-"], capture_output=True, text=True)
    assert running.stdout.strip() == "", "a demo PostgreSQL is still running"


def test_a_port_in_use_is_one_clear_line(tmp_path):
    import socket
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        result = subprocess.run([sys.executable, "-m", "proxy", "demo", "--port", str(port)],
                                cwd=ROOT, capture_output=True, text=True, timeout=30)
    assert result.returncode == 1
    assert result.stderr.strip() == f"pgwarden demo: port {port} is in use (another pgwarden or PgBouncer?): use --port"
