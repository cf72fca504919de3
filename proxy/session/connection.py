"""One client connection (the asyncio shell): startup, TLS and authentication, pool acquire and release around the core."""

from __future__ import annotations

import asyncio
import logging
import struct
from collections.abc import Callable
from functools import partial
from typing import Any, cast

from proxy.ops.admin import DATABASE as ADMIN_DATABASE
from proxy.ops.admin import PARAMETERS as ADMIN_PARAMETERS
from proxy.ops.admin import AdminConsole
from proxy.pooling.backend import Backend, BackendError
from proxy.pooling.pool import Pool, PoolTimeout
from proxy.session import params, reported
from proxy.session.accounting import Accounting
from proxy.session.caching import SessionCache
from proxy.session.console import console_across, console_messages
from proxy.session.context import SessionContext
from proxy.session.core import SessionCore
from proxy.session.guard import login_refusal, version_refusal
from proxy.session.limited import SessionLimits
from proxy.session.notify import Notifications
from proxy.session.policed import current_tenant
from proxy.session.relay import Relay
from proxy.session.replicas import SessionRoute
from proxy.session.startup import REQUIRE_TLS, user_refusal
from proxy.session.state import AUTH, CLOSED, LOGIN, READY, STARTUP, TLS, SessionState, reason_class
from proxy.wire import protocol
from proxy.wire.auth import AuthFailed, ClientAuth, Credential
from proxy.wire.protocol import MSG_PASSWORD

log = logging.getLogger("pgwarden.session")

__all__ = ["CLOSED", "READY", "Session"]


class Session(asyncio.Protocol):
    """A client of pgwarden: transport callbacks, login, and a pooled backend lent to its `core`.

    Its fields are declared in `record` (a `SessionState`); once logged in, `core` relays.
    """

    def __init__(self, ctx: SessionContext) -> None:
        self.ctx = ctx
        self.config = ctx.config
        pid, secret = ctx.issue_key(self)
        self.record = SessionState(pid, secret)
        self.transport: asyncio.Transport | None = None
        self.pool: Pool | None = None
        self.console: AdminConsole | None = None
        self.core: SessionCore | None = None
        self._startup = protocol.StartupFramer()
        self._framer = protocol.Framer(self.config.listen.max_message_size)
        self.relay: Relay | None = None  # lends the core its backends once logged in
        self._auth: ClientAuth | None = None
        self._timer: asyncio.TimerHandle | None = None

    # --- what the server, the admin console and the metrics read ----------------------------

    pid = property(lambda self: self.record.pid)
    secret = property(lambda self: self.record.secret)
    peer = property(lambda self: self.record.peer)
    user = property(lambda self: self.record.user)
    database = property(lambda self: self.record.database)
    tls = property(lambda self: self.record.tls)
    since = property(lambda self: self.record.since)
    ident = property(lambda self: self.record.ident)

    @property
    def backend(self) -> Backend | None:
        """The backend serving this client now (None between transactions, or before login)."""
        return self.core.backend if self.core is not None else None

    @property
    def lent(self) -> Pool | None:
        """The pool of the backend serving it now (a replica's under read routing), else its own."""
        return self.relay.lent if self.relay is not None else self.pool

    @property
    def state(self) -> str:
        """Where it is: startup, tls, auth, login, ready or closed (`record.phase`)."""
        return self.record.phase

    def tenant(self) -> str | None:
        """The tenant its statements run for now (as the admin console's SHOW CLIENTS tells)."""
        return current_tenant(self.record, self.ctx.router())

    # --- connection lifecycle ---------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # (uvloop's transports do not subclass it)
        peer = transport.get_extra_info("peername")
        self.record.peer = f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) else str(peer)
        limit = self.config.pool.max_client_connections
        if self.ctx.client_count() > limit:
            self.fatal(
                "53300",
                f"sorry, too many clients already: pgwarden accepts at most {limit} client connections",
                hint="raise pool.max_client_connections or use fewer connections",
            )
            return
        loop = asyncio.get_running_loop()
        self._timer = loop.call_later(self.config.listen.startup_timeout, self._startup_expired)

    def connection_lost(self, exc: Exception | None) -> None:
        state = self.record
        if state.phase != CLOSED:
            state.reason = state.reason or (f"connection error: {exc}" if exc else "client disconnected")
        state.phase = CLOSED
        if self._timer is not None:
            self._timer.cancel()
        who = f"client {state.peer} user={state.user or '-'} db={state.database or '-'}"
        log.info("%s disconnected: %s", who, state.reason)
        self.ctx.forget(self)
        self.ctx.metrics.disconnects.labels(reason_class(state.reason)).inc()
        core = self.core
        if self.pool is not None:  # (also when refused after its pool was chosen)
            ctx = self.ctx
            accounting = core.accounting if core else Accounting(state, ctx.stats, ctx.slowlog, ctx.audit)
            accounting.unfinished()
            accounting.event("logout", reason=state.reason)
        if core is not None and core.notes is not None:
            core.notes.close()
        if self.relay is not None:
            self.relay.left()

    def close(self, reason: str) -> None:
        state = self.record
        if state.phase != CLOSED:
            state.reason = state.reason or reason
            state.phase = CLOSED
            if self.transport is not None:
                self.transport.close()

    def fatal(self, sqlstate: str, message: str, hint: str | None = None) -> None:
        """Send a FATAL ErrorResponse and close this client only."""
        if self.record.phase != READY and self.record.phase != CLOSED:
            self.ctx.metrics.logins.labels("refused").inc()
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(protocol.error_response(sqlstate, message, severity="FATAL", hint=hint))
        self.close(f"{sqlstate} {message}")

    def write(self, data: bytes) -> None:
        """Bytes to the client (the core's answers and the backend's)."""
        assert self.transport is not None
        self.transport.write(data)

    def _startup_expired(self) -> None:
        if self.record.phase != READY:
            self.fatal(
                "08P01",
                f"client did not complete startup within "
                f"listen.startup_timeout ({self.config.listen.startup_timeout:g}s)",
            )

    def pause_writing(self) -> None:  # (the client reads slowly: so does its backend)
        backend = self.backend
        if backend is not None and backend.transport is not None:
            backend.transport.pause_reading()

    def resume_writing(self) -> None:
        backend = self.backend
        if backend is not None and backend.transport is not None:
            backend.transport.resume_reading()

    # --- bytes from the client --------------------------------------------------------------

    def data_received(self, data: bytes) -> None:
        self.safely(self._relay if self.record.phase == READY else self._before_ready, data)

    def safely(self, handle: Callable[[Any], None], arg: Any) -> None:
        """Run a handler of client input; bad input or a bug costs this client, never the proxy."""
        try:
            handle(arg)
        except protocol.ProtocolError as exc:
            self.fatal(exc.sqlstate, str(exc))
        except AuthFailed as exc:
            self.fatal(exc.sqlstate, exc.message, hint=getattr(exc, "hint", None))
        except (IndexError, ValueError, struct.error) as exc:  # a malformed message's fields
            self.fatal("08P01", f"invalid message from client: {exc}")
        except Exception:  # a bug must cost one client, never the proxy
            log.exception("client %s: internal error", self.record.peer)
            self.fatal("XX000", "internal error in pgwarden; the client connection was closed")

    def _before_ready(self, data: bytes) -> None:
        phase = self.record.phase
        if phase == STARTUP:
            self._startup_bytes(data)
        elif phase == AUTH:
            self._auth_bytes(data)
        elif phase == LOGIN:
            self._framer.feed(data)

    def _startup_bytes(self, data: bytes) -> None:
        self._startup.feed(data)
        while self.record.phase == STARTUP and (packet := self._startup.next_packet()) is not None:
            if isinstance(packet, protocol.SSLRequest):
                self._answer_ssl()
            elif isinstance(packet, protocol.GSSENCRequest):
                self.write(b"N")
            elif isinstance(packet, protocol.CancelRequest):
                task = self.ctx.cancel(packet.pid, packet.secret)
                if task is None:
                    self.close("cancel request ignored")
                else:
                    self.record.phase = LOGIN  # nothing more is read from a cancel connection
                    task.add_done_callback(lambda _: self.close("cancel request forwarded"))
            else:
                self._begin_auth(packet)

    def _answer_ssl(self) -> None:
        if self.record.tls or self.ctx.tls_context() is None:
            self.write(b"N")
            return
        if self._startup.take_rest():
            raise protocol.ProtocolError("client sent data before the TLS handshake")
        self.write(b"S")
        self.record.phase = TLS
        asyncio.get_running_loop().create_task(self._start_tls())

    async def _start_tls(self) -> None:
        loop = asyncio.get_running_loop()
        transport, context = self.transport, self.ctx.tls_context()
        assert transport is not None and context is not None
        try:
            tls_transport = await loop.start_tls(
                transport, self, context, server_side=True, ssl_handshake_timeout=self.config.listen.startup_timeout
            )
        except Exception as exc:  # a failed handshake closes only this client
            self.ctx.metrics.tls_handshakes.labels("failed").inc()
            self.close(f"TLS handshake failed: {exc}")
            return
        self.transport = tls_transport
        self.record.tls = True
        self.ctx.metrics.tls_handshakes.labels("ok").inc()
        self.record.phase = STARTUP

    def _begin_auth(self, packet: protocol.StartupMessage) -> None:
        config, state = self.config, self.record
        refused = REQUIRE_TLS if config.listen.tls.mode == "require" and not state.tls else None
        if refused is None:
            unsupported = [k for k in packet.params if k.startswith("_pq_.")]
            if packet.version & 0xFFFF or unsupported:
                self.write(protocol.negotiate_protocol_version(protocol.PROTOCOL_3_0, unsupported))
            user = state.user = packet.params.get("user", "")
            state.database = packet.params.get("database") or user
            state.client_params = {k: v for k, v in packet.params.items() if not k.startswith("_pq_.")}
            entry = config.auth.users.get(user)
            refused = user_refusal(user, config.auth.method, bool(config.auth.users), entry is not None)
        if refused is not None:
            self.fatal(*refused)
            return
        credential = Credential(entry.secret(), entry.scram_verifier) if entry else None
        self._auth = auth = ClientAuth(config.auth.method, user, credential)
        self.write(auth.start())
        self._framer.feed(self._startup.take_rest())
        state.phase = AUTH
        if auth.done:
            self._login()

    def _auth_bytes(self, data: bytes) -> None:
        auth = self._auth
        assert auth is not None
        self._framer.feed(data)
        for kind, msg in self._framer.messages():
            if kind != MSG_PASSWORD:
                raise protocol.ProtocolError(f"expected a password message, got {chr(kind)!r}")
            reply = auth.receive(msg)
            if reply:
                self.write(reply)
            if auth.done:
                self._login()
                return

    # --- login ------------------------------------------------------------------------------

    def _login(self) -> None:
        if self.record.database == ADMIN_DATABASE:
            self._admin_login()
            return
        self.record.phase = LOGIN
        asyncio.get_running_loop().create_task(self._login_async())

    async def _login_async(self) -> None:
        state, ctx = self.record, self.ctx
        try:
            router = ctx.router()  # policed sessions get backends of their own role
            policed = router is not None and not router.identity(state.user).bypass
            pool = ctx.pool_for(state.database, state.user, policed)
            server_params = await pool.login_params()
        except BackendError as exc:
            self.fatal(exc.sqlstate, exc.fields.get("message", "backend error"), hint=exc.fields.get("hint"))
            return
        except PoolTimeout as exc:
            self.fatal("53300", str(exc), hint="raise pool.size or pool.query_wait_timeout")
            return
        if state.phase == CLOSED:
            return
        self.pool = pool
        state.tx_mode = self.config.pool.mode == "transaction"
        state.settings = params.startup_settings(state.client_params)
        if not self._guard_login() or not await ctx.ensure_schema(self, state.database):
            return
        problem = version_refusal(ctx.router(), state.ident, state.database, server_params)
        if problem is not None:
            self.fatal(*problem)
            return
        if state.tx_mode and ctx.read_routing is not None:
            await ctx.read_routing.ready(state.database)
        cached = ctx.caching is not None and await ctx.caching.ready(state.database)
        if state.phase == CLOSED:
            return
        limits = SessionLimits(ctx.limits, state, self.tenant) if ctx.limits is not None else None
        refused = limits.login(state) if limits is not None else None  # (the connection quota, statement_timeout)
        if refused is not None:
            self.fatal(*refused)
            return
        self.core = core = SessionCore(state, ctx, self)
        self.relay = relay = Relay(self, ctx, core, pool)
        relay.limits = limits
        if state.tx_mode and ctx.read_routing is not None:  # reads to replicas (replicas.py)
            relay.route = SessionRoute(ctx.read_routing, state, core.names, pool, self.tenant, policed)
            if self.config.routing.read_your_writes:  # the commit watermark, taken after each write
                core.hold = relay.hold
        if cached and ctx.caching is not None:  # the result cache (caching.py): a write's answer waits for the WAL
            relay.cache = SessionCache(ctx.caching, state, core.names, core.guard)
            core.hold = relay.hold
        if state.tx_mode or state.ident is not None:  # LISTEN multiplexed on the pool's listener (notify.py)
            scope = self.tenant if state.ident is not None else None
            core.notes = Notifications(pool.listener(), core, self, scope, partial(self.safely, relay.dispatch))
        self._ready(server_params)
        core.accounting.event(
            "login",
            roles=sorted(state.ident.roles) if state.ident else [],
            tenant=self.tenant(),
            tls=state.tls,
        )
        log.info(
            "client %s logged in as user=%s db=%s (%s pooling)",
            state.peer,
            state.user,
            state.database,
            self.config.pool.mode,
        )
        if self._framer.pending():
            self._relay(b"")

    def _guard_login(self) -> bool:
        """Bind the session to its identity; False (and the client closed) when it may not log in."""
        router, state = self.ctx.router(), self.record
        if router is None:
            return True
        ident = router.identity(state.user)
        refused = login_refusal(router, ident, state.database, state.client_params, state.settings)
        if refused is not None:
            self.fatal(*refused)
            return False
        state.ident = None if ident.bypass else ident
        return True

    def _ready(self, server_params: dict[str, str]) -> None:
        """Logged in: the parameters, the key and ReadyForQuery go to the client."""
        state = self.record
        out = [protocol.parameter_status(k, v) for k, v in reported.at_login(state, server_params).items()]
        out.append(protocol.backend_key_data(state.pid, state.secret))
        out.append(protocol.ready_for_query(b"I"))
        self.write(b"".join(out))
        state.phase = READY
        if self._timer is not None:
            self._timer.cancel()
        self.ctx.metrics.logins.labels("ok").inc()

    def _admin_login(self) -> None:
        state = self.record
        if state.user not in self.config.admin.users:
            self.fatal(
                "42501",
                f'user "{state.user}" may not use the admin console',
                hint="list the user under admin.users in the pgwarden config",
            )
            return
        self.console = self.ctx.admin_console()
        out = [protocol.parameter_status(k, v) for k, v in ADMIN_PARAMETERS.items()]
        self.write(b"".join(out) + protocol.backend_key_data(state.pid, state.secret) + protocol.ready_for_query(b"I"))
        state.phase = READY
        if self._timer is not None:
            self._timer.cancel()
        log.info("client %s opened the admin console as %s", state.peer, state.user)

    # --- relaying: a backend for the core (relay.py) -----------------------------------------

    def _relay(self, data: bytes) -> None:
        msgs = self._framer.split(data)
        if not msgs:
            return
        if self.console is not None and self.console.cluster is not None:  # several workers: they all answer
            assert self.transport is not None
            self.transport.pause_reading()
            asyncio.get_running_loop().create_task(self._console_across(msgs))
        elif self.console is not None:
            console_messages(self.console, msgs, self)
        elif self.relay is not None:
            self.relay.received(msgs)

    async def _console_across(self, msgs: list[tuple[int, bytes]]) -> None:
        assert self.console is not None and self.transport is not None
        await console_across(self.console, msgs, self)
        if self.record.phase != CLOSED:
            self.transport.resume_reading()

    def detach(self, backend: Backend) -> None:
        """Between transactions (transaction pooling): the backend goes back, reset if it must be."""
        assert self.relay is not None
        self.relay.detach(backend)
