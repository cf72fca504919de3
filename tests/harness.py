"""Runs a real pgwarden process on free ports for the tests, with a config given as a dict."""

from __future__ import annotations

import copy
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
# `make unit` sets PGWARDEN_TEST_SERVICES=none: PostgreSQL and Redis are then a closed port, and
# starting a pgwarden process or a cluster raises, so a `unit` test that needs a service fails loudly.
NO_SERVICES = os.environ.get("PGWARDEN_TEST_SERVICES") == "none"
CLOSED_PORT = 1
PG_HOST = "127.0.0.1"
PG_PORT = CLOSED_PORT if NO_SERVICES else int(os.environ.get("PGWARDEN_TEST_PG_PORT", "5432"))
REDIS_URL = (
    f"redis://127.0.0.1:{CLOSED_PORT}/0"
    if NO_SERVICES
    else os.environ.get("PGWARDEN_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
)


def refuse_without_services(what: str) -> None:
    """Raise when the tests run without services (`make unit`) and `what` would need one."""
    if NO_SERVICES:
        raise RuntimeError(f"{what} needs services, which `make unit` does not start: this test is not a unit test")


# Ports come from below the kernel's ephemeral range (32768-60999 here), so no
# outgoing connection to PostgreSQL or Redis can take one between the moment a
# test picks it and the moment pgwarden binds it; a port is never handed out
# twice in one run, and the start is random per process so runs do not collide.
_PORTS = iter(range(20000 + (os.getpid() * 7919) % 9000, 32000))


def free_port() -> int:
    for port in _PORTS:
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError("no free test port left below the ephemeral range")


def base_config(**overrides) -> dict:
    """A config for the local PostgreSQL: trust auth, transaction pooling, free ports, one process
    (`workers` defaults to the machine's cores; a test that wants several asks for them)."""
    config = {
        "workers": 1,
        "listen": {"host": "127.0.0.1", "port": free_port()},
        "http": {"host": "127.0.0.1", "port": free_port()},
        "primary": {"host": PG_HOST, "port": PG_PORT},
        "auth": {"method": "trust"},
        "backend_auth": {"user": "postgres"},
        "pool": {"mode": "transaction", "size": 10},
    }
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(config.get(key), dict):
            config[key] = {**config[key], **value}
        else:
            config[key] = value
    return config


def wait_for_port(host: str, port: int, timeout: float, proc: subprocess.Popen | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"process exited with {proc.returncode} before listening")
        try:
            with socket.create_connection((host, port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"nothing listens on {host}:{port} after {timeout}s")


def redis_server(port: int) -> subprocess.Popen:
    """A throwaway redis-server on `port` (nothing saved), answering when this returns."""
    proc = subprocess.Popen(
        ["redis-server", "--port", str(port), "--save", "", "--appendonly", "no"], stdout=subprocess.DEVNULL
    )
    wait_for_port("127.0.0.1", port, 5.0, proc)
    return proc


class ProxyProcess:
    """One `pgwarden run --config FILE` process; use as a context manager."""

    def __init__(self, config: dict, workdir: Path, env: dict | None = None) -> None:
        self.config = copy.deepcopy(config)
        self.workdir = Path(workdir)
        self.config_path = self.workdir / "pgwarden.yaml"
        self.log_path = self.workdir / "pgwarden.log"
        self.env = {**os.environ, **(env or {})}
        self.proc: subprocess.Popen | None = None

    @property
    def host(self) -> str:
        return self.config["listen"]["host"]

    @property
    def port(self) -> int:
        return self.config["listen"]["port"]

    @property
    def http_port(self) -> int:
        return self.config["http"]["port"]

    def dsn(self, user: str = "postgres", dbname: str = "postgres", **extra) -> str:
        parts = {"host": self.host, "port": self.port, "user": user, "dbname": dbname, "sslmode": "disable", **extra}
        return " ".join(f"{k}={v}" for k, v in parts.items())

    def url(
        self, user: str = "postgres", dbname: str = "postgres", password: str = "", scheme: str = "postgresql"
    ) -> str:
        auth = f"{user}:{password}" if password else user
        return f"{scheme}://{auth}@{self.host}:{self.port}/{dbname}"

    def write_config(self, config: dict | None = None) -> None:
        if config is not None:
            self.config = copy.deepcopy(config)
        self.config_path.write_text(yaml.safe_dump(self.config, sort_keys=False))

    def start(self, timeout: float = 20.0) -> ProxyProcess:
        refuse_without_services("a pgwarden process")
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.write_config()
        self._log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "proxy", "run", "--config", str(self.config_path)],
            cwd=ROOT,
            env=self.env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )
        try:
            wait_for_port(self.host, self.port, timeout, self.proc)
            if (self.config.get("http") or {}).get("port"):  # opened just after the listener
                wait_for_port(self.config["http"].get("host", self.host), self.http_port, timeout, self.proc)
        except Exception:
            self.stop()
            raise RuntimeError(f"pgwarden did not start:\n{self.logs()}")
        return self

    def send_signal(self, sig: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)

    def reload(self) -> None:
        self.send_signal(signal.SIGHUP)

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 15.0) -> int | None:
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()
        code, self.proc = self.proc.returncode, None
        return code

    def logs(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def __enter__(self) -> ProxyProcess:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def scrape(proxy: ProxyProcess) -> dict[tuple[str, tuple], float]:
    """Every sample of a running pgwarden's /metrics, by (name, sorted labels)."""
    import urllib.request

    from prometheus_client.parser import text_string_to_metric_families

    with urllib.request.urlopen(f"http://127.0.0.1:{proxy.http_port}/metrics", timeout=5) as resp:
        text = resp.read().decode()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }
