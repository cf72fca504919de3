"""The control plane of read routing: checks every backend, follows the primary through a failover, measures lag."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
import time
from collections.abc import Callable, Iterator

import asyncpg

from proxy.config.model import Config
from proxy.routing.check import Reading, read_health
from proxy.routing.election import Writable, choose_primary
from proxy.routing.health import DOWN, FENCED, PRIMARY, PRIMARY_CANDIDATE, REPLICA, STANDBY, Breaker, ServerState
from proxy.wire.tls import backend_tls

log = logging.getLogger("pgwarden.routing")

APPLICATION_NAME = "pgwarden-monitor"
FAST_CHECKS = 10  # while no primary is known, candidates are checked this many times per failover.detect_s


def build_servers(config: Config) -> list[ServerState]:
    """One ServerState per primary candidate (primary.host, then primary.hosts) and per `replicas:` entry.

    An address that is both a candidate and a replica gets two states (one of each kind) sharing
    one Breaker, and the Monitor checks it once for both.
    """
    routing = config.routing
    breakers: dict[str, Breaker] = {}
    candidates = [(config.primary.host, config.primary.port)]
    candidates += [(h.host, h.port) for h in config.primary.hosts]
    servers: list[ServerState] = []

    def state(host: str, port: int, kind: str, weight: float, lag_bytes: int, lag_ms: int) -> ServerState:
        name = f"{host}:{port}"
        breaker = breakers.setdefault(name, Breaker(routing.breaker_failures, routing.breaker_open))
        return ServerState(name, host, port, kind, "unknown", weight, lag_bytes, lag_ms, breaker)

    for host, port in dict.fromkeys(candidates):
        servers.append(state(host, port, PRIMARY_CANDIDATE, 1.0, routing.max_lag_bytes, routing.max_lag_ms))
    seen: set[str] = set()
    for r in config.replicas:
        if f"{r.host}:{r.port}" in seen:
            continue
        seen.add(f"{r.host}:{r.port}")
        lag_bytes = routing.max_lag_bytes if r.max_lag_bytes is None else r.max_lag_bytes
        lag_ms = routing.max_lag_ms if r.max_lag_ms is None else r.max_lag_ms
        servers.append(state(r.host, r.port, REPLICA, r.weight, lag_bytes, lag_ms))
    return servers


class Monitor:
    """Checks each backend every `routing.check_interval` (one query, under `routing.check_timeout`).

    Keeps one asyncpg connection per backend address between checks; a check that fails or times
    out closes it, marks the backend down and counts a failure on its breaker (an open breaker
    skips checks until it half-opens). After every check the primary is chosen again
    (election.choose_primary) and `on_primary` is called when it changes.
    """

    def __init__(self, config: Config, on_primary: Callable[[ServerState], None]) -> None:
        self.config = config
        self.servers = build_servers(config)
        self.replicas = [s for s in self.servers if s.kind == REPLICA]
        self.primary: ServerState | None = None
        self.failovers = 0
        self._on_primary = on_primary
        self._by_name: dict[str, list[ServerState]] = {}
        for s in self.servers:
            self._by_name.setdefault(s.name, []).append(s)
        self._conns: dict[str, asyncpg.Connection] = {}
        self._wake = {name: asyncio.Event() for name in self._by_name}
        self._poked = 0.0  # when poke() last woke the checks
        self._poke_gap = min(config.routing.check_interval / 4, 0.05)  # at most this often
        self._have_primary = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._stopping = False
        self._elected = False  # no election before every backend was checked once (start())
        self._last_primary: str | None = None  # the last primary chosen (it wins ties)
        self._floor = 0  # the highest timeline ever chosen: an older primary never takes writes back
        self._primary_lsn: int | None = None  # the last WAL position read on a primary
        self._tls: ssl.SSLContext | None = backend_tls(config.primary.tls)

    async def start(self) -> None:
        """Check every backend once (so the primary is known when one answers), then keep checking."""
        self._stopping = False
        await asyncio.gather(*(self._check(name) for name in self._by_name))
        self._elected = True
        self._elect()
        self._tasks = [asyncio.create_task(self._watch(name), name=f"monitor {name}") for name in self._by_name]

    async def stop(self) -> None:
        self._stopping = True  # asyncio.wait_for (3.11) may swallow a cancel that races a finished check
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks = []
        for name in list(self._conns):
            self._drop(name)

    def poke(self) -> None:
        """Check every backend now (a commit watermark is ahead of every replay known); at most
        once per a quarter of check_interval (50 ms at most), however many reads ask."""
        now = time.monotonic()
        if now - self._poked < self._poke_gap:
            return
        self._poked = now
        for event in self._wake.values():
            event.set()

    def connect_failed(self, server: ServerState, error: str) -> None:
        """A pool could not connect to `server`: down at once, one failure on its breaker."""
        server.breaker.failure(time.monotonic())
        for s in self._by_name.get(server.name, [server]):
            self._mark_down(s, error)
        self._after_check()

    def connect_ok(self, server: ServerState) -> None:
        """A pool connected to `server`: its breaker closes; a backend marked down is checked now."""
        server.breaker.success(time.monotonic())
        if not server.up and server.name in self._wake:
            self._wake[server.name].set()

    async def wait_primary(self, timeout: float) -> ServerState | None:
        """The primary, as soon as one is known (None after `timeout` seconds without one)."""
        deadline = time.monotonic() + timeout
        while self.primary is None:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return None
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._have_primary.wait(), remaining)
        return self.primary

    def states(self, name: str) -> Iterator[ServerState]:
        """The states of the backend at address `name` ("host:port"): one per kind it is configured as."""
        return iter(self._by_name.get(name, []))

    # -- checking ----------------------------------------------------------------------------------------

    async def _watch(self, name: str) -> None:
        wake = self._wake[name]
        while not self._stopping:
            wake.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self._interval(name)):
                    await wake.wait()
            if not self._stopping:
                await self._check(name)

    def _interval(self, name: str) -> float:
        interval = self.config.routing.check_interval
        if self.primary is None and any(s.kind == PRIMARY_CANDIDATE for s in self._by_name[name]):
            return min(interval, self.config.failover.detect_s / FAST_CHECKS)
        return interval

    async def _check(self, name: str) -> None:
        states = self._by_name[name]
        if not states[0].breaker.allow(time.monotonic()):
            return  # open: the backend stays down until the breaker lets a probe through
        timeout = self.config.routing.check_timeout
        try:
            found = await asyncio.wait_for(self._read(states[0]), timeout)
        except Exception as exc:
            error = f"check timed out after {timeout}s" if isinstance(exc, TimeoutError) else _describe(exc)
            self._drop(name)
            states[0].breaker.failure(time.monotonic())
            for s in states:
                self._mark_down(s, error)
            if states[0].breaker.state != "closed":
                log.warning("backend %s is down: %s (breaker %s)", name, error, states[0].breaker.state)
        else:
            states[0].breaker.success(time.monotonic())
            for s in states:
                _apply(s, found)
        self._after_check()

    async def _read(self, server: ServerState) -> Reading:
        conn = self._conns.get(server.name)
        if conn is None or conn.is_closed():
            auth = self.config.backend_auth
            conn = await asyncpg.connect(
                host=server.host,
                port=server.port,
                user=auth.user or "postgres",
                password=auth.secret(),
                database="postgres",
                ssl=self._tls or False,
                timeout=self.config.routing.check_timeout,
                server_settings={"application_name": APPLICATION_NAME},
            )
            self._conns[server.name] = conn
        return await read_health(conn)

    def _drop(self, name: str) -> None:
        conn = self._conns.pop(name, None)
        if conn is not None and not conn.is_closed():
            conn.terminate()  # no goodbye to a backend that may hang

    def _mark_down(self, s: ServerState, error: str) -> None:
        s.up, s.role, s.in_recovery, s.last_error = False, DOWN, None, error
        s.lag_bytes = s.lag_ms = None
        s.checked_at = time.monotonic()

    # -- the primary and lag -----------------------------------------------------------------------------

    def _after_check(self) -> None:
        if self._elected:
            self._elect()
        self._measure_lag()

    def _elect(self) -> None:
        writable = [
            Writable(s.name, s.timeline)
            for s in self.servers
            if s.kind == PRIMARY_CANDIDATE and s.up and s.in_recovery is False
        ]
        choice = choose_primary(writable, self._last_primary, self._floor)
        for s in self.servers:
            if s.up and s.in_recovery is False:
                s.role = PRIMARY if s.name == choice.primary else FENCED
        new = next((s for s in self.servers if s.kind == PRIMARY_CANDIDATE and s.name == choice.primary), None)
        self.primary = new
        if new is None:
            self._have_primary.clear()
            return
        self._have_primary.set()
        self._floor = max(self._floor, choice.timeline)
        if new.name != self._last_primary:
            if self._last_primary is not None:
                self.failovers += 1
                log.warning("primary is now %s (was %s), timeline %d", new.name, self._last_primary, new.timeline)
            self._last_primary = new.name
            try:
                self._on_primary(new)
            except Exception:
                log.exception("on_primary(%s) failed", new.name)  # the checks go on

    def _measure_lag(self) -> None:
        if self.primary is not None:
            self._primary_lsn = self.primary.lsn
        for s in self.servers:
            if s.role == PRIMARY:
                s.lag_bytes, s.lag_ms = 0, 0.0
            elif s.role == STANDBY:
                s.lag_bytes = None if self._primary_lsn is None else max(0, self._primary_lsn - s.lsn)
            elif s.role == FENCED:
                s.lag_bytes = s.lag_ms = None


def _apply(s: ServerState, found: Reading) -> None:
    s.up, s.in_recovery, s.lsn, s.timeline, s.last_error = True, found.in_recovery, found.lsn, found.timeline, None
    s.checked_at = time.monotonic()
    if found.in_recovery:
        s.role, s.lag_ms = STANDBY, found.delay_ms
    # a writable one is PRIMARY or FENCED: the election decides


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
