"""Backend pools, one per (database, backend user): idle backends, waiting clients, limits and lifetimes."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import random
import time
from collections import deque
from collections.abc import Callable, Coroutine
from typing import Any

from proxy.config import model as cfg
from proxy.pooling.backend import Backend, BackendError, Target, connect
from proxy.pooling.backend_role import HINT, refusal, superuser_reason
from proxy.pooling.listener import Listener
from proxy.wire import protocol

log = logging.getLogger("pgwarden.pool")


class PoolTimeout(Exception):
    """A client waited longer than pool.query_wait_timeout for a backend (SQLSTATE 53300)."""

    sqlstate = "53300"


class Pool:
    """Backends for one (database, backend user).

    A backend is in exactly one place: `idle` (a deque, used LIFO so warm
    connections are reused), `active` (lent to a client) or being connected
    (counted in `connecting`). Waiting clients queue in `waiters`, first come
    first served, and are handed a backend directly on release.
    """

    def __init__(
        self,
        name: str,
        target: Target,
        settings: cfg.Pool,
        policed: bool = False,
        retries: int = 0,
        writable: bool = False,
    ) -> None:
        self.name = name
        self.policed = policed  # serves policed sessions: a backend reporting superuser is refused
        self.retries = retries  # connect attempts after a failed one (backoff with jitter)
        self.writable = writable  # the primary's pool under read routing: a host in recovery is refused
        self.target = target
        self.address = (target.host, target.port)
        self.settings = settings
        self.idle: deque[Backend] = deque()
        self.active: set[Backend] = set()
        self.connecting = 0
        self.waiters: deque[asyncio.Future[Backend]] = deque()
        self.server_params: dict[str, str] | None = None
        self.wait_count = 0
        self.wait_time = 0.0
        self.now = time.monotonic()  # a coarse clock, advanced by maintain() every second
        self.paused = False  # PAUSE from the admin console: no backend is lent
        self.renewed = 0.0  # RECONNECT: backends connected before then are closed when they come back
        self._resumed = asyncio.Event()
        self._listener: Listener | None = None

    def listener(self) -> Listener:
        """The backend that LISTENs for this pool's clients (made on first use, connected on first LISTEN)."""
        if self._listener is None:
            self._listener = Listener(self.name, self._open)
        return self._listener

    @property
    def total(self) -> int:
        return len(self.idle) + len(self.active) + self.connecting

    # --- lending ------------------------------------------------------------------------------

    def take_idle(self) -> Backend | None:
        """An idle backend, right now, or None (the hot path: no await, no task)."""
        while self.idle and not self.paused:
            backend = self.idle.pop()
            if backend.closed or self._expired(backend):
                backend.close()
                continue
            self.active.add(backend)
            return backend
        return None

    async def acquire(self) -> Backend:
        """A backend: idle, newly connected, or handed over by a releasing client within the wait limit."""
        while self.paused:
            self._resumed.clear()
            await self._resumed.wait()
        backend = self.take_idle()
        if backend is not None:
            return backend
        if self.total < self.settings.size and not self.waiters:
            return await self._connect_for_client()
        return await self._wait()

    async def _wait(self) -> Backend:
        fut = asyncio.get_running_loop().create_future()
        self.waiters.append(fut)
        started = time.monotonic()
        self.wait_count += 1
        try:
            return await asyncio.wait_for(asyncio.shield(fut), self.settings.query_wait_timeout)
        except TimeoutError:
            if fut.done() and not fut.cancelled() and fut.exception() is None:
                self.release(fut.result())  # handed over just as we gave up
            fut.cancel()
            raise PoolTimeout(
                f"pool {self.name!r} is exhausted: waited {self.settings.query_wait_timeout:g}s "
                f"for one of its {self.settings.size} backends"
            ) from None
        finally:
            self.wait_time += time.monotonic() - started
            if fut in self.waiters:
                self.waiters.remove(fut)

    async def _connect_for_client(self) -> Backend:
        self.connecting += 1
        try:
            backend = await self._open()
        finally:
            self.connecting -= 1
        self._adopt(backend)
        self.active.add(backend)
        return backend

    def retarget(self, host: str, port: int) -> None:
        """The primary moved (a failover): new backends connect to `host`:`port`; idle ones to the
        old host close now, lent ones when they are given back."""
        self.target = dataclasses.replace(self.target, host=host, port=port)
        self.address = (host, port)
        for backend in self.idle:
            backend.close()
        self.idle.clear()
        if self._listener is not None:
            self._listener.close()
            self._listener = None

    async def _open(self) -> Backend:
        """A new backend, retrying a failed connect `retries` times (exponential backoff from 50 ms,
        with jitter); for a policed pool never one whose role is a superuser, for a writable pool
        never a host in recovery."""
        for attempt in range(self.retries + 1):
            try:
                backend = await connect(self.target, self.settings.prepared_statements_per_backend)
                break
            except BackendError as exc:
                if attempt == self.retries or exc.sqlstate != "08006":
                    raise
                await asyncio.sleep(0.05 * 2**attempt * random.uniform(0.5, 1.5))
        if self.writable and backend.params.get("in_hot_standby") == "on":
            backend.close()
            host, port = self.address
            raise BackendError(
                {
                    "sqlstate": "08006",
                    "message": f"{host}:{port} is in recovery, not the primary",
                    "hint": "list the hosts that may be promoted under primary.hosts, so pgwarden finds the writable one",
                }
            )
        reason = superuser_reason(self.target.user, backend.params) if self.policed else None
        if reason is not None:
            backend.close()
            log.error("pool %s: %s; policed sessions are refused", self.name, reason)
            raise BackendError({"sqlstate": "42501", "message": refusal(reason), "hint": HINT})
        return backend

    def _adopt(self, backend: Backend) -> None:
        backend.on_idle_lost = self._idle_lost
        if self.server_params is None:
            self.server_params = dict(backend.params)

    def resume(self) -> None:
        """RESUME: lend backends again, first to the clients that waited."""
        self.paused = False
        self._resumed.set()

    def release(self, backend: Backend, reusable: bool = True) -> None:
        """Give a backend back: to the first waiting client, to the idle list, or closed."""
        backend.client = None
        if backend.cancels and reusable and not backend.closed:
            backend.held_for_cancel = True  # lent again only once the cancel has landed
            return
        self.active.discard(backend)
        backend.last_used = self.now
        if not reusable or backend.closed or self._expired(backend) or backend.address != self.address:
            backend.close()
            self._replace_for_waiter()
            return
        while self.waiters:
            fut = self.waiters.popleft()
            if not fut.done():
                self.active.add(backend)
                fut.set_result(backend)
                return
        self.idle.append(backend)

    async def cancel(self, backend: Backend) -> None:
        """Send a CancelRequest for `backend` and wait until PostgreSQL has acted on it (it then
        closes the socket). Until then the backend is not lent to another client, so a late
        cancel can never stop another client's query (PgBouncer leaves that race open)."""
        host, port = backend.address
        timeout = self.target.connect_timeout
        try:
            reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port), timeout)
            writer.write(protocol.cancel_request(backend.pid, backend.secret))
            await writer.drain()
            await asyncio.wait_for(reader.read(), timeout)
            writer.close()
        except (TimeoutError, OSError) as exc:
            log.warning("could not forward a cancel request to %s:%s: %s", host, port, exc)
        finally:
            backend.cancels -= 1
            if not backend.cancels and backend.held_for_cancel:
                backend.held_for_cancel = False
                self.release(backend)

    def _replace_for_waiter(self) -> None:
        if self.waiters and self.total < self.settings.size:
            asyncio.get_running_loop().create_task(self._connect_for_waiter())

    async def _connect_for_waiter(self) -> None:
        try:
            backend = await self._connect_for_client()
        except BackendError as exc:
            log.warning("pool %s: cannot open a backend: %s", self.name, exc)
            while self.waiters:  # fail the waiters now rather than at their timeout
                fut = self.waiters.popleft()
                if not fut.done():
                    fut.set_exception(exc)
            return
        self.release(backend)

    def _idle_lost(self, backend: Backend) -> None:
        if backend in self.idle:
            self.idle.remove(backend)

    def _expired(self, backend: Backend) -> bool:
        return self.now - backend.created > self.settings.max_lifetime or backend.created <= self.renewed

    def reconnect(self) -> int:
        """RECONNECT: every backend connected until now is replaced, the idle ones closed now (how
        many is returned), the lent ones when they come back."""
        self.renewed = time.monotonic()
        closed = len(self.idle)
        for backend in self.idle:
            backend.close()
        self.idle.clear()
        return closed

    # --- login and maintenance --------------------------------------------------------------

    async def login_params(self) -> dict[str, str]:
        """The backend's ParameterStatus values for a client's login (connecting once if needed)."""
        if self.server_params is None:
            backend = await self.acquire()
            self.release(backend)
        assert self.server_params is not None
        return self.server_params

    def maintain(self, now: float, spawn: Callable[[Coroutine[Any, Any, None]], object]) -> None:
        """Close idle backends past idle_timeout or max_lifetime; open new ones up to min_idle."""
        self.now = now
        keep: deque[Backend] = deque()
        for backend in self.idle:
            too_old = now - backend.created > self.settings.max_lifetime
            too_idle = now - backend.last_used > self.settings.idle_timeout and len(keep) >= self.settings.min_idle
            if backend.closed or too_old or too_idle:
                backend.close()
            else:
                keep.append(backend)
        self.idle = keep
        missing = min(self.settings.min_idle - len(self.idle) - self.connecting, self.settings.size - self.total)
        for _ in range(max(0, missing)):
            spawn(self._open_idle())

    async def _open_idle(self) -> None:
        self.connecting += 1
        try:
            backend = await self._open()
        except BackendError as exc:
            log.warning("pool %s: cannot open an idle backend: %s", self.name, exc)
            return
        finally:
            self.connecting -= 1
        self._adopt(backend)
        self.release(backend)

    def close_all(self) -> None:
        for backend in list(self.idle) + list(self.active):
            backend.close()
        self.idle.clear()
        if self._listener is not None:  # (its clients go too; a later LISTEN gets a new one)
            self._listener.close()
            self._listener = None
