"""The supervisor of `workers: N`: starts the worker processes, restarts a dead one, relays signals to all."""

from __future__ import annotations

import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from proxy.app.workers import socket_path
from proxy.config.model import Config

log = logging.getLogger("pgwarden.supervisor")
RELAYED = (signal.SIGHUP, signal.SIGUSR1, signal.SIGUSR2)  # reload, pause, resume
STARTUP_TIMEOUT = 30.0  # seconds every worker has to listen at startup


@dataclass
class Worker:
    """One worker process and when it was (re)started."""

    index: int
    proc: subprocess.Popen
    started: float = field(default_factory=time.monotonic)
    failures: int = 0  # quick deaths in a row: the restart waits longer each time
    due: float | None = None  # once dead: when it is started again

    def died_quickly(self, now: float) -> bool:
        return now - self.started < 5


class Supervisor:
    """Runs `count` workers of one config file until SIGTERM/SIGINT, then until they have all exited."""

    def __init__(self, config: Config) -> None:
        assert config.source is not None
        self.config = config
        self.count = config.worker_count()
        self.rundir = Path(tempfile.mkdtemp(prefix="pgwarden-"))
        self.workers: dict[int, Worker] = {}
        self.stopping = False
        self.pending: list[int] = []  # signals received, handled by the main loop

    def spawn(self, index: int, failures: int = 0) -> None:
        argv = [sys.executable, "-m", "proxy", "worker", "--config", str(self.config.source)]
        argv += ["--index", str(index), "--count", str(self.count), "--rundir", str(self.rundir)]
        argv += ["--supervisor", str(os.getpid())]
        self.workers[index] = Worker(index, subprocess.Popen(argv), failures=failures)

    def signal_all(self, sig: int) -> None:
        for worker in self.workers.values():
            if worker.proc.poll() is None:
                worker.proc.send_signal(sig)

    def run(self) -> int:
        for sig in (*RELAYED, signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda number, _frame: self.pending.append(number))
        try:
            taken = port_taken(self.config.listen.host, self.config.listen.port)
            if taken is not None:
                listen = self.config.listen
                print(f"pgwarden: cannot listen on {listen.host}:{listen.port}: {taken}", file=sys.stderr)
                return 1
            for index in range(self.count):
                self.spawn(index)
            if not self._started():
                self.stopping = True
                self.signal_all(signal.SIGTERM)
                self._wait_all()
                return 1
            log.info("pgwarden supervisor: %d workers on port %d", self.count, self.config.listen.port)
            self._loop()
            return 0
        finally:
            shutil.rmtree(self.rundir, ignore_errors=True)

    def _started(self) -> bool:
        """Wait until every worker listens (its control socket exists); False if one exits first."""
        deadline = time.monotonic() + STARTUP_TIMEOUT
        while time.monotonic() < deadline:
            if any(w.proc.poll() is not None for w in self.workers.values()):
                log.error("a worker exited at startup; stopping the others")
                return False
            if all(socket_path(self.rundir, i).exists() for i in self.workers):
                return True
            if self.pending:
                return False
            time.sleep(0.05)
        log.error("the workers did not start within %gs", STARTUP_TIMEOUT)
        return False

    def _wait_all(self) -> None:
        """Wait for every worker to exit (killed after shutdown_timeout and 5 s more)."""
        deadline = time.monotonic() + self.config.shutdown_timeout + 5
        for worker in self.workers.values():
            try:
                worker.proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                worker.proc.kill()
                worker.proc.wait()

    def _loop(self) -> None:
        while self.workers:
            while self.pending:
                self._on_signal(self.pending.pop(0))
            for index, worker in list(self.workers.items()):
                code = worker.proc.poll()
                if code is None:
                    continue
                if self.stopping:
                    del self.workers[index]
                    continue
                self._restart(worker, code)
            time.sleep(0.05)

    def _on_signal(self, number: int) -> None:
        if number in (signal.SIGTERM, signal.SIGINT):
            if not self.stopping:
                log.info("pgwarden supervisor: stopping %d workers", len(self.workers))
            self.stopping = True
            self.signal_all(signal.SIGTERM)
        else:
            self.signal_all(number)

    def _restart(self, worker: Worker, code: int) -> None:
        """Start a dead worker again; one that keeps dying within 5 s of its start waits longer each time."""
        now = time.monotonic()
        if worker.due is None:
            quick = worker.died_quickly(now)
            worker.failures = worker.failures + 1 if quick else 0
            delay = min(10.0, 0.25 * 2**worker.failures) if quick else 0.0
            worker.due = now + delay
            log.error("worker %d exited with status %s; starting it again in %gs", worker.index, code, delay)
        if now >= worker.due:
            self.spawn(worker.index, worker.failures)


def port_taken(host: str, port: int) -> str | None:
    """Why the listen port is taken (None if free). Workers bind it with SO_REUSEPORT, which would
    let them join another pgwarden's listener there: a probe without it fails as one process would."""
    try:
        addresses = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except OSError:
        return None  # the workers say what is wrong with the address
    for family, kind, proto, _, address in addresses:
        with socket.socket(family, kind, proto) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6:
                probe.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            try:
                probe.bind(address)
            except OSError as exc:
                return f"{exc.strerror or exc} (is another pgwarden or PgBouncer running there? change listen.port)"
    return None


def supervise(config: Config) -> int:
    """Run `config` as its `workers` processes; the exit status (1 if they could not start)."""
    return Supervisor(config).run()
