"""A logged-in session's backends: which pool lends each transaction one, messages waiting meanwhile, and the backend's callbacks."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from functools import partial
from typing import Any, Protocol

from proxy.cache.results import Miss
from proxy.pooling.backend import Backend, BackendError
from proxy.pooling.pool import Pool, PoolTimeout
from proxy.routing.lsn import parse_lsn
from proxy.session import lending, limited, routes
from proxy.session.caching import SessionCache
from proxy.session.context import SessionContext
from proxy.session.core import SessionCore
from proxy.session.probe import Probe
from proxy.session.replicas import Choice, SessionRoute
from proxy.session.state import CLOSED, SessionState
from proxy.wire.protocol import MSG_BIND, MSG_TERMINATE, TX_IDLE

log = logging.getLogger("pgwarden.session")

_FAILED = object()  # an asynchronous decision that raised, or whose client left meanwhile

# After a write: where the WAL ends (the replicas' watermark), and what the WAL consumer must have read: what
# is flushed, which holds the commit (the walsender sends flushed WAL only), or the end with synchronous_commit off.
_LSN_SQL = (
    "select pg_current_wal_insert_lsn()::text || ' ' || case current_setting('synchronous_commit') "
    "when 'off' then pg_current_wal_insert_lsn() else pg_current_wal_flush_lsn() end::text"
)


def _no_replica(refused: str) -> dict[str, str]:
    """The refusal of a read when no replica is usable and the primary may not take it."""
    return {
        "sqlstate": "08006",
        "message": f"{refused} and routing.reads_on_primary is false",
        "hint": "retry later, or set routing.reads_on_primary: true to let the primary take reads",
    }


class Client(Protocol):
    """What the relay asks of the client connection around it."""

    record: SessionState
    transport: asyncio.Transport | None

    def write(self, data: bytes) -> None: ...
    def fatal(self, sqlstate: str, message: str, hint: str | None = None) -> None: ...
    def close(self, reason: str) -> None: ...
    def safely(self, handle: Callable[[Any], None], arg: Any) -> None: ...


class Relay:
    """Lends `core` a backend for each transaction (or the whole session) and relays its bytes.

    `pool` is the session's primary pool; `lent` the pool the linked backend came from (a
    replica's under read routing, `route`). Messages that arrive while a backend is being
    acquired, or while an answer waits for its commit watermark, queue in `pending` with the
    client's reading paused. The backend's callbacks (`backend_data`, `backend_lost`,
    `backend_pause`) come here: the relay is the backend's `client`.
    """

    def __init__(self, client: Client, ctx: SessionContext, core: SessionCore, pool: Pool) -> None:
        self.client, self.ctx, self.core, self.pool = client, ctx, core, pool
        self.lent = pool
        self.unrouted = Choice(pool, None)  # (no read routing: every transaction's choice)
        self.route: SessionRoute | None = None
        self.pending: list[tuple[int, bytes]] = []
        self.waiting = False  # acquiring a backend, or an answer waits for its watermark
        self.after_release = False  # `pending` waits for the replica backend to be released
        self.retry: list[tuple[int, bytes]] | None = None  # a read sent to a replica, until its first answer byte
        self.held: list[tuple[int, bytes]] | None = None  # messages waiting for the audit trail
        self.limits: limited.SessionLimits | None = None  # `limits:` (set by the connection)
        self.cache: SessionCache | None = None  # `cache:` (set by the connection)
        self.miss: Miss | None = None  # the batch being routed was looked up in the cache: its answer is stored

    # --- the client's batches -----------------------------------------------------------------

    def received(self, msgs: list[tuple[int, bytes]]) -> None:
        if self.held is not None or self._blocked():
            self._hold(msgs)
            return
        self.dispatch(msgs)

    def _blocked(self) -> bool:
        """Does the audit trail take no record now, under `audit.on_failure: block`?"""
        audit = self.ctx.audit
        return audit is not None and not audit.accepting() and audit.config.on_failure == "block"

    def dispatch(self, msgs: list[tuple[int, bytes]]) -> None:
        core = self.core
        if core.notes is not None and core.notes.take(msgs):  # LISTEN and UNLISTEN answered there
            return
        if self.waiting:
            self.pending += msgs
            return
        limits = self.limits
        if limits is not None:  # statements over a limit marked, refused in order (limited.py)
            checked = limits.admit(msgs)
            if isinstance(checked, limited.Ask):  # Redis decides: the client waits meanwhile
                self._pause()
                asyncio.get_running_loop().create_task(self._decide(limits, checked))
                return
            self._route(checked)
            if not self.waiting:
                limited.after(limits, core.backend)
            return
        self._route(msgs)

    def _route(self, msgs: list[tuple[int, bytes]], probed: bool = False) -> None:
        """The cache's answer, or a backend for the batch (lent, or waited for), then the batch to the core."""
        core, cache = self.core, self.cache
        if cache is not None and not probed and self._cached(cache, msgs):
            return
        if core.backend is None:
            if self.limits is not None and limited.answer_alone(msgs, self.client.write):
                return
            if msgs[0][0] == MSG_TERMINATE:
                self.client.close("client sent Terminate")
                return
            if core.answer_without_backend(msgs):
                return
            choice = self.unrouted if self.route is None else self.route.choose(msgs)
            if choice is not None and choice.refused is not None:
                self.pending = msgs
                self._refuse_pending(**_no_replica(choice.refused))
                return
            backend = None if choice is None else choice.pool.take_idle()
            if backend is None:
                self.pending = msgs
                self._acquire(choice)
                return
            assert choice is not None
            self._link(choice, backend)
            if choice.server is not None:
                self.retry = msgs
        elif self.route is not None and not self.route.fits(msgs):  # a write behind a read on a replica
            self.pending, self.after_release = msgs, True
            self._pause()
            return
        self._forward(msgs)

    def _forward(self, msgs: list[tuple[int, bytes]]) -> None:
        """The batch to the linked backend; a looked-up batch's answer captured for the cache."""
        core, cache = self.core, self.cache
        if cache is None:
            core.forward(msgs)
            return
        miss, self.miss = self.miss, None
        core.tap = None  # (a capture still running would take this batch's answer too: it ends unstored)
        route = self.route
        cache.note(msgs, None if route is None else self.core.state.wrote)
        core.forward(msgs)
        if miss is not None and core.backend is not None:
            core.tap = cache.capture(miss, route is not None and route.server is not None, core.backend.tracker.status)

    def _cached(self, cache: SessionCache, msgs: list[tuple[int, bytes]]) -> bool:
        """Answer the batch from the cache if it can (True); else it goes on to a backend, its answer
        to be stored (`miss`). With cache.redis the lookup is one round trip: the client waits. Not
        looked up while the audit trail blocks (the backend's path refuses it: 58030)."""
        self.miss = None
        probe = cache.probe(msgs, self.core.backend)
        if probe is None or self._blocked():
            return False
        if cache.shared:
            self._pause()
            asyncio.get_running_loop().create_task(self._lookup(cache, probe, msgs))
            return True
        found = cache.lookup_local(probe)
        if isinstance(found, bytes):
            return self._hit(cache, found, probe, msgs, 0.0)
        self.miss = found
        return False

    def _hit(
        self, cache: SessionCache, answer: bytes, probe: Probe, msgs: list[tuple[int, bytes]], seconds: float
    ) -> bool:
        """An answer from the cache (counted in SHOW QUERIES' cache_hits, rows not decoded), recorded in
        the audit trail; False, not answered (it goes on to a backend), when the trail cannot take it."""
        accounting = self.core.accounting
        if accounting.auditing and not cache.recorded(accounting, answer, probe, msgs, seconds):
            return False
        self.client.write(answer + probe.ready)
        cache.answered(msgs, probe)
        kind, first = msgs[0]  # (counted under the client's Query or Parse, as its round trip would be)
        self.ctx.stats.observe(probe.text if kind == MSG_BIND else first, seconds, 0, True)
        return True

    async def _lookup(self, cache: SessionCache, probe: Probe, msgs: list[tuple[int, bytes]]) -> None:
        """A batch looked up in Redis (`cache.redis`): answered, or routed with its Miss to store."""
        started = time.perf_counter()
        found = await self._asked(cache.lookup(probe), "in a cache lookup")
        if found is _FAILED:
            return
        if isinstance(found, bytes):
            seconds = time.perf_counter() - started
            self._decided(lambda: None if self._hit(cache, found, probe, msgs, seconds) else self._route(msgs, True))
        else:
            self.miss = found if isinstance(found, Miss) else None
            self._decided(partial(self._route, msgs, True))

    async def _decide(self, limits: limited.SessionLimits, ask: limited.Ask) -> None:
        """A batch's rate decided in Redis (`limits.redis`); then routed as `dispatch` does."""
        msgs = await self._asked(limits.decide(ask), "while deciding a rate limit")
        if msgs is not _FAILED:
            self._decided(partial(self._route, msgs))

    async def _asked(self, question: Awaitable[Any], what: str) -> Any:
        """The answer of an asynchronous decision; _FAILED when it raised (the client is closed: a bug
        costs this client, never a hang) or the client left meanwhile."""
        try:
            answer = await question
        except Exception:
            log.exception("client %s: internal error %s", self.client.record.peer, what)
            self.client.fatal("XX000", "internal error in pgwarden; the client connection was closed")
            return _FAILED
        return _FAILED if self.client.record.phase == CLOSED else answer

    def _decided(self, go: Callable[[], None]) -> None:
        """After an asynchronous decision: `go`, then the messages that arrived meanwhile (checked in
        turn), then the client is read again."""
        self.waiting = False
        later, self.pending = self.pending, []
        self.client.safely(lambda _: go(), None)
        if self.limits is not None and not self.waiting:
            limited.after(self.limits, self.core.backend)
        if later:
            self.client.safely(self.dispatch, later)
        if not self.waiting and self.client.record.phase != CLOSED and self.client.transport is not None:
            self.client.transport.resume_reading()

    def _pause(self) -> None:
        self.waiting = True
        if self.client.transport is not None:
            self.client.transport.pause_reading()

    def _resume(self) -> None:
        """Take the queued messages, then read from the client again."""
        self.waiting = False
        msgs, self.pending = self.pending, []
        if msgs and self.client.record.phase != CLOSED:
            self.client.safely(self.dispatch, msgs)
        transport = self.client.transport
        if not self.waiting and self.client.record.phase != CLOSED and transport is not None:
            transport.resume_reading()

    def _hold(self, msgs: list[tuple[int, bytes]]) -> None:
        """The audit trail cannot take records (on_failure: block): hold the client's messages,
        reading paused, until it can or block_timeout passes; a statement it still cannot take
        is then refused (58030)."""
        if self.held is None:
            self.held = []
            assert self.client.transport is not None
            self.client.transport.pause_reading()
            asyncio.get_running_loop().create_task(self._release_held())
        self.held += msgs

    async def _release_held(self) -> None:
        audit = self.ctx.audit
        assert audit is not None and self.client.transport is not None
        await audit.room(audit.config.block_timeout)
        msgs, self.held = self.held or [], None
        if self.client.record.phase == CLOSED:
            return
        self.client.safely(self.dispatch, msgs)
        if self.client.record.phase != CLOSED and not self.waiting:
            self.client.transport.resume_reading()

    # --- a backend for the batch ----------------------------------------------------------------

    def _acquire(self, choice: Choice | None) -> None:
        self._pause()
        asyncio.get_running_loop().create_task(self._acquire_async(choice))

    async def _acquire_async(self, choice: Choice | None) -> None:
        try:
            choice, backend = await self._lend(choice)
        except (PoolTimeout, BackendError) as exc:
            self.waiting = False
            hint = exc.fields.get("hint") if isinstance(exc, BackendError) else None
            self._refuse_pending(getattr(exc, "sqlstate", "53300"), str(exc), hint)
            return
        except Exception:  # a bug costs this client, never a hang
            log.exception("client %s: internal error while lending a backend", self.client.record.peer)
            self.client.fatal("XX000", "internal error in pgwarden; the client connection was closed")
            return
        if self.client.record.phase == CLOSED:
            choice.pool.release(backend)
            return
        self._link(choice, backend)
        self.waiting = False
        msgs, self.pending = self.pending, []
        if choice.server is not None:
            self.retry = msgs
        self.client.safely(self._forward, msgs)
        if not self.waiting and self.client.record.phase != CLOSED and self.client.transport is not None:
            self.client.transport.resume_reading()

    async def _lend(self, choice: Choice | None) -> tuple[Choice, Backend]:
        """A backend from the chosen pool; a replica that cannot give one is taken out and the
        batch is routed again (to another replica or the primary)."""
        route = self.route
        while True:
            if choice is None:
                assert route is not None
                choice = await route.choose_async(self.pending)
            if choice.refused is not None:
                raise BackendError(_no_replica(choice.refused))
            if choice.server is None or route is None:
                return choice, await self._primary(choice)
            try:
                return choice, await choice.pool.acquire()
            except BackendError as exc:
                route.routing.monitor.connect_failed(choice.server, str(exc))
                choice = None

    async def _primary(self, choice: Choice) -> Backend:
        """A primary backend; with several primary hosts, a failed connect waits (up to
        failover.wait_s) for the monitor to find the writable one (the pool follows it)."""
        route, failover = self.route, self.ctx.config.failover
        if route is None or not self.ctx.config.primary.hosts:
            return await choice.pool.acquire()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + failover.wait_s
        while True:
            try:
                return await choice.pool.acquire()
            except BackendError as exc:
                left = deadline - loop.time()
                if left <= 0:
                    raise BackendError(
                        {
                            "sqlstate": "08006",
                            "message": f"no writable primary within failover.wait_s ({failover.wait_s:g}s): {exc}",
                            "hint": "the statement was not run; retry it, or check the primary hosts",
                        }
                    ) from None
                route.routing.monitor.poke()
                await route.routing.monitor.wait_primary(min(left, 0.25))
                await asyncio.sleep(min(left, 0.05))

    def _refuse_pending(self, sqlstate: str, message: str, hint: str | None = None) -> None:
        """No backend came: answer the waiting requests with an error, or close if we cannot."""
        msgs, self.pending = self.pending, []
        self.miss = None
        if self.limits is not None:  # nothing went to a backend: no statement in flight
            limited.after(self.limits, self.core.backend)
        answer = lending.refused_requests(msgs, sqlstate, message, hint)
        if answer is None:
            self.client.fatal(sqlstate, message, hint)
            return
        self.client.write(answer)
        if self.client.transport is not None:
            self.client.transport.resume_reading()

    def _link(self, choice: Choice, backend: Backend) -> None:
        backend.client = self
        self.lent = choice.pool
        if self.route is not None:
            self.route.linked(choice)
        self.core.accounting.route = "primary" if choice.server is None else "replica"
        self.core.link(backend)

    # --- the backend's side -----------------------------------------------------------------

    def backend_data(self, backend: Backend, data: bytes) -> None:
        core = self.core
        if self.retry is not None:
            retry, self.retry = self.retry, None
            refusal = routes.replica_refusal(data)
            if refusal is not None and self.route is not None:
                self._elsewhere(backend, retry, refusal)
                return
        core.backend_data(backend, data)
        if self.limits is not None:
            limited.after(self.limits, core.backend)
        if core.notes is not None and core.notes.held:  # notifications held while it was busy
            core.notes.deliver()

    def backend_lost(self, backend: Backend) -> None:
        retry, self.retry = self.retry, None
        if retry is not None and self.route is not None and self.route.server is not None:
            self._elsewhere(backend, retry, routes.GOING_AWAY)  # a replica died before answering a read
            return
        self.core.backend = None
        if self.route is not None:
            self.route.released()
        self.lent.release(backend, reusable=False)
        self.client.fatal(
            "08006",
            "the backend connection was lost (PostgreSQL closed it)",
            hint="check the PostgreSQL log; reconnect to get a new backend",
        )

    def _elsewhere(self, backend: Backend, msgs: list[tuple[int, bytes]], refusal: str) -> None:
        """A replica could not answer a read and nothing reached the client: it refused it as a
        standby refuses a write (its catalog changed since pgwarden read it, a serializable
        default), so it runs on the primary; or it is going away (shutting down, the connection
        lost), so it is taken out and the read runs elsewhere. Once: the server is out after that."""
        route = self.route
        assert route is not None
        server = route.server
        log.info("replica %s could not answer a read (%s); it runs elsewhere", server.name if server else "?", refusal)
        self.core.backend = None
        route.released()
        self.lent.release(backend, reusable=False)  # (mid-answer or lost: closed, not reused)
        if refusal == routes.STANDBY:
            route.force_primary = True
        elif server is not None:
            route.routing.monitor.connect_failed(server, refusal)
        self.dispatch(msgs)

    def backend_pause(self, paused: bool) -> None:
        transport = self.client.transport
        if transport is not None and not transport.is_closing():
            (transport.pause_reading if paused else transport.resume_reading)()

    def detach(self, backend: Backend) -> None:
        """Between transactions (transaction pooling): the backend goes back, reset if it must be."""
        lending.between_transactions(self.lent, backend)
        if self.route is not None:
            self.route.released()
            if self.after_release:  # a write waited for the replica to be done
                self.after_release = False
                asyncio.get_running_loop().call_soon(self._resume)

    def deliver(self, answer: bytes) -> None:
        """The answer held for the commit watermark goes to the client; the backend is released."""
        if answer and self.client.record.phase != CLOSED:
            self.client.write(answer)
        self.core.maybe_release()
        self._resume()

    def hold(self, backend: Backend, answer: bytes) -> bool:
        """The backend answered all it was sent. Held (True; then `deliver`): the end of a transaction
        that may have written, until its WAL position is the watermark (read routing) and the WAL
        consumer has bumped what it changed (the cache); the start of a READ ONLY block, until the
        cache knows its isolation (`SHOW` takes no snapshot)."""
        status, state = backend.tracker.status, self.core.state
        if self.cache is not None and self.cache.block_began(status, state.wrote):
            self._pause()
            backend.ask("SHOW transaction_isolation", partial(self._isolation, answer))
            return True
        if not state.wrote or status != TX_IDLE:
            return False
        state.wrote = False
        self._pause()
        backend.ask(_LSN_SQL, partial(self._committed, answer))
        return True

    def _isolation(self, answer: bytes, value: str | None) -> None:
        assert self.cache is not None
        self.cache.isolation(value)
        self.deliver(answer)

    def _committed(self, answer: bytes, value: str | None) -> None:
        if value is None:  # (an aborted transaction cannot read it; nothing it wrote committed)
            self.deliver(answer)
            return
        insert, flush = (parse_lsn(v) for v in value.split())
        shared = self.route.taken(insert) if self.route is not None else None
        if shared is None and self.cache is None:
            self.deliver(answer)
            return
        asyncio.get_running_loop().create_task(self._after_commit(answer, shared, flush))

    async def _after_commit(self, answer: bytes, shared: Any, lsn: int) -> None:
        try:
            if shared is not None:
                await shared
            if self.cache is not None:
                await self.cache.committed(lsn)
        except Exception:  # (a bug: the answer still goes out; the cache of the database is dropped)
            log.exception("client %s: internal error after a commit", self.client.record.peer)
            if self.cache is not None:
                await self.cache.caching.invalidate(self.client.record.database, "error")
        self.deliver(answer)

    def left(self) -> None:
        """The client is gone: its backend back clean (or closed)."""
        core, state = self.core, self.client.record
        if self.limits is not None:
            self.limits.close()
        backend, core.backend = core.backend, None
        if backend is not None:
            if self.route is not None:
                self.route.released()
            lending.client_left(self.lent, backend, state.tx_mode, state.ran_statements)
