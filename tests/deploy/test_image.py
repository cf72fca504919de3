"""The image's own config (deploy/docker/pgwarden.yaml): every interface, no primary, the rest from PGWARDEN__* variables."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import psycopg
import pytest

from proxy.config.model import ConfigError, load_config
from tests.harness import PG_HOST, PG_PORT, free_port, wait_for_port

ROOT = Path(__file__).resolve().parents[2]
IMAGE_CONFIG = ROOT / "deploy/docker/pgwarden.yaml"
DOCKERFILE = (ROOT / "Dockerfile").read_text()
# 127.0.0.2 is loopback too, but a listener bound to 127.0.0.1 does not accept it: only 0.0.0.0 does.
OTHER_ADDRESS = "127.0.0.2"


def _clean_env(**variables: str) -> dict[str, str]:
    """This process's environment without PGWARDEN__* variables, plus `variables`."""
    env = {k: v for k, v in os.environ.items() if not k.upper().startswith("PGWARDEN__")}
    return {**env, **variables}


def test_the_dockerfile_copies_this_config_to_where_the_entrypoint_reads_it():
    assert "COPY deploy/docker/pgwarden.yaml /etc/pgwarden/pgwarden.yaml" in DOCKERFILE
    assert 'CMD ["--config", "/etc/pgwarden/pgwarden.yaml"]' in DOCKERFILE


def test_the_image_config_listens_everywhere_and_names_no_primary(monkeypatch):
    for name in [n for n in os.environ if n.upper().startswith("PGWARDEN__")]:
        monkeypatch.delenv(name)
    with pytest.raises(ConfigError) as info:
        load_config(IMAGE_CONFIG)
    (line,) = info.value.errors
    assert "no primary PostgreSQL is given" in line
    monkeypatch.setenv("PGWARDEN__PRIMARY__HOST", "db")
    monkeypatch.setenv("PGWARDEN__PRIMARY__PORT", "6543")
    config = load_config(IMAGE_CONFIG)
    assert (config.primary.host, config.primary.port) == ("db", 6543)
    assert config.listen.host == "0.0.0.0" and config.http.host == "0.0.0.0"
    assert (config.listen.port, config.http.port) == (6432, 9187)  # the ports the Dockerfile EXPOSEs
    assert "EXPOSE 6432 9187" in DOCKERFILE


def test_run_without_a_primary_exits_1_with_one_line_saying_how_to_give_it():
    result = subprocess.run(
        [sys.executable, "-m", "proxy", "run", "--config", str(IMAGE_CONFIG)],
        cwd=ROOT,
        env=_clean_env(),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 1
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    (line,) = lines
    assert line.startswith("pgwarden: ") and "no primary PostgreSQL is given" in line
    assert f"in {IMAGE_CONFIG}" in line and "PGWARDEN__PRIMARY__HOST" in line


def test_a_bad_variable_stops_run_with_one_line_naming_it():
    result = subprocess.run(
        [sys.executable, "-m", "proxy", "run", "--config", str(IMAGE_CONFIG)],
        cwd=ROOT,
        env=_clean_env(PGWARDEN__PRIMARY__HOST="db", PGWARDEN__PRIMARY__PROT="1"),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 1
    assert result.stderr.splitlines() == [
        (
            "pgwarden: environment variable PGWARDEN__PRIMARY__PROT: primary.prot: unknown key `prot` "
            "(did you mean `port`?)"
        )
    ]


def test_run_from_the_image_config_and_variables_alone_serves_on_every_interface(tmp_path):
    port, http_port = free_port(), free_port()
    env = _clean_env(
        PGWARDEN__PRIMARY__HOST=PG_HOST,
        PGWARDEN__PRIMARY__PORT=str(PG_PORT),
        PGWARDEN__LISTEN__PORT=str(port),
        PGWARDEN__HTTP__PORT=str(http_port),
        PGWARDEN__AUTH__USERS__APP__PASSWORD_ENV="APP_PASSWORD",
        APP_PASSWORD="s3cret-app",
        PGWARDEN__BACKEND_AUTH__USER="postgres",
    )
    with open(tmp_path / "pgwarden.log", "wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "proxy", "run", "--config", str(IMAGE_CONFIG)],
            cwd=ROOT,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        try:
            _serves(port, http_port, proc)
        finally:
            proc.terminate()
            proc.wait(20)
    first = json.loads((tmp_path / "pgwarden.log").read_text().splitlines()[0])  # the image logs JSON
    assert f"listening on 0.0.0.0:{port}" in first["message"] and f"backend {PG_HOST}:{PG_PORT}" in first["message"]


def _serves(port: int, http_port: int, proc: subprocess.Popen) -> None:
    """psycopg and /readyz answer through 127.0.0.2, so pgwarden listens on every interface."""
    wait_for_port(OTHER_ADDRESS, port, 20, proc)
    dsn = f"host={OTHER_ADDRESS} port={port} user=app password=s3cret-app dbname=postgres sslmode=disable"
    with psycopg.connect(dsn, connect_timeout=10) as conn:
        assert conn.execute("select current_user, 41 + 1").fetchone() == ("postgres", 42)
    with pytest.raises(psycopg.OperationalError):
        psycopg.connect(dsn.replace("s3cret-app", "wrong"), connect_timeout=10).close()
    wait_for_port(OTHER_ADDRESS, http_port, 20, proc)  # (worker 0 serves HTTP; another may open the port first)
    with urllib.request.urlopen(f"http://{OTHER_ADDRESS}:{http_port}/readyz", timeout=5) as response:
        assert response.status == 200
        assert json.loads(response.read())["checks"]["primary_reachable"] is True


def test_variables_still_win_after_a_reload_rereads_the_file(tmp_path):
    """SIGHUP re-reads the file and sets the same PGWARDEN__* variables over it again."""
    from tests.harness import ProxyProcess, base_config

    dead = free_port()  # nothing listens there
    config = base_config(primary={"host": PG_HOST, "port": dead}, pool={"mode": "transaction", "size": 4})
    env = {"PGWARDEN__PRIMARY__PORT": str(PG_PORT)}
    with ProxyProcess(config, tmp_path, env=env) as proxy:
        with psycopg.connect(proxy.dsn(), connect_timeout=10) as conn:
            assert conn.execute("select 1").fetchone() == (1,)
        proxy.write_config({**config, "pool": {"mode": "transaction", "size": 3}})
        proxy.reload()
        deadline = time.monotonic() + 10
        while "reloaded" not in proxy.logs() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert "reloaded" in proxy.logs(), proxy.logs()
        # a database no pool has yet: its backends are opened at the reloaded config's primary
        with psycopg.connect(proxy.dsn(dbname="template1"), connect_timeout=10) as conn:
            assert conn.execute("show port").fetchone() == (str(PG_PORT),)
