"""One client connection: startup, TLS and authentication, then relaying its messages to a pooled backend."""

from __future__ import annotations

import asyncio
import logging
import re
import struct
import time
from collections import deque
from typing import TYPE_CHECKING

from proxy.ops.admin import DATABASE as ADMIN_DATABASE
from proxy.ops.admin import PARAMETERS as ADMIN_PARAMETERS
from proxy.ops.admin import AdminConsole
from proxy.pooling.backend import Backend, BackendError
from proxy.pooling.pool import Pool, PoolTimeout
from proxy.pooling.prepared import Statement
from proxy.session import params
from proxy.session.accounting import Accounted
from proxy.session.guard import HIDDEN_DETAIL, Guarded
from proxy.session.pooled import Pooled, names_statement
from proxy.wire import protocol
from proxy.wire.auth import AuthFailed, ClientAuth, Credential
from proxy.wire.tracker import ABORT, SWALLOW

if TYPE_CHECKING:
    from proxy.app.server import Server

log = logging.getLogger("pgwarden.session")

STARTUP, TLS, AUTH, LOGIN, READY, CLOSED = "startup", "tls", "auth", "login", "ready", "closed"
_Q, _P, _B, _D, _E, _C, _S, _F, _H, _X = (ord(c) for c in "QPBDECSFHX")
_I = ord("I")
_ABORT_SQL = "pgwarden refused the statement before this one"  # fails to parse, on purpose
_REQUESTS = frozenset(b"PBDECSF")  # answered by the backend, tracked in order
_PASSED = frozenset(b"dcfH")  # COPY data/done/fail and Flush: no answer of their own
_NAMED = frozenset(b"PBDC")  # may name a prepared statement
_STATEFUL_HEADS = frozenset(
    {
        b"set",
        b"res",
        b"dis",
        b"lis",
        b"pre",
        b"dea",
        b"rol",
        b"abo",
        b"cre",
        b"dec",
        b"sav",
        b"rel",
        b"beg",
        b"sta",
        b"com",
        b"end",
        b"exe",
        b"exp",
    }
)
_DDL = re.compile(rb"(?i)\b(?:create|alter|drop|comment)\b")  # may change what the policy checks


def sends_ddl(msg: bytes) -> bool:
    """Could this Query or Parse change the schema (so the policy's view of it)? A cheap test
    on the text after the message header (the length bytes can look like a letter)."""
    return _DDL.search(msg[5:]) is not None


def _stateful_text(msg: bytes, start: int, stop: int) -> bool:
    """Cheap byte test on msg[start:stop]: could this SQL change session state?

    False for plain SELECT/DML, even with a trailing semicolon; True for SET, RESET,
    DISCARD, LISTEN, PREPARE, EXECUTE, EXPLAIN, DEALLOCATE, BEGIN, COMMIT, ROLLBACK, leading comments,
    multi-statement text, and text that may leave state behind (temp, hold, set_config, advisory locks).
    """
    i = start
    while i < stop and msg[i] in b" \t\r\n":
        i += 1
    if i >= stop:
        return False
    if (
        msg[i : i + 3].lower() in _STATEFUL_HEADS
        or msg[i] in b"/-("
        or params.MAY_LEAVE_STATE_BYTES.search(msg, start, stop) is not None
    ):
        return True
    j = stop - 1
    while j > i and msg[j] in b" \t\r\n;":
        j -= 1
    return msg.find(b";", i, j) >= 0


def _reason_class(reason: str) -> str:
    """A bounded label for a disconnect reason."""
    if "Terminate" in reason:
        return "terminate"
    if "shutting down" in reason or "shutdown" in reason:
        return "shutdown"
    if reason[:5].isalnum() and reason[5:6] == " ":
        return "error"  # "<SQLSTATE> message": pgwarden closed it with a FATAL
    return "network"


class Session(Guarded, Pooled, Accounted, asyncio.Protocol):
    """A client of pgwarden. Its `state` says where it is; `backend` is set while one serves it."""

    def __init__(self, server: Server) -> None:
        self.server = server
        self.config = server.config
        self.transport: asyncio.Transport | None = None
        self.state = STARTUP
        self.peer = "?"
        self.tls = False
        self.user = self.database = ""
        self.pid, self.secret = server.issue_key(self)
        self.pool: Pool | None = None
        self.console: AdminConsole | None = None
        self.since = time.monotonic()
        self.backend: Backend | None = None
        self.tx_mode = True
        self.statements: dict[str, Statement] = {}
        self.unchecked: set[Statement] = set()
        self.settings: dict[str, str] = {}
        self.dirty = False  # session mode: ran anything, so DISCARD ALL on release
        self.pinned = False  # transaction mode: keeps its backend (it holds session state)
        self.skipping = False  # after an error the proxy raised mid-pipeline: skip to Sync
        self._snapshot = None  # state before this transaction's first SET or SAVEPOINT
        self._frames = ()  # savepoints of the open transaction, with the state each restores
        self.reason = ""
        self._startup = protocol.StartupFramer()
        self._framer = protocol.Framer(self.config.listen.max_message_size)
        self._pending: list[tuple[int, bytes]] = []
        self._out: list[bytes] | None = None  # the batch `_forward` is building for the backend
        self._timings: deque[list] = deque()  # [sent at, Query/Parse, audit records] per Query/Sync
        self._last_parse = b""
        self._named_parses: dict[bytes, bytes] = {}  # statement name -> its Parse, for timing
        self._unnamed: bytes | None = None  # the client's last unnamed Parse (transaction mode)
        self._unnamed_here = False  # ... and whether the linked backend has it
        self._acquiring = False
        self._held: list[tuple[int, bytes]] | None = None  # messages waiting for the audit trail
        self._ddl_sent = False  # a bypass role sent DDL: read the schema again when it is over
        self._auth: ClientAuth | None = None
        self._client_params: dict[str, str] = {}
        self._timer: asyncio.TimerHandle | None = None

    # --- connection lifecycle ---------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        peer = transport.get_extra_info("peername")
        self.peer = f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) else str(peer)
        if self.server.client_count() > self.config.pool.max_client_connections:
            self.fatal(
                "53300",
                "sorry, too many clients already: pgwarden accepts at most "
                f"{self.config.pool.max_client_connections} client connections",
                hint="raise pool.max_client_connections or use fewer connections",
            )
            return
        loop = asyncio.get_running_loop()
        self._timer = loop.call_later(self.config.listen.startup_timeout, self._startup_expired)

    def connection_lost(self, exc: Exception | None) -> None:
        if self.state != CLOSED:
            self.reason = self.reason or (f"connection error: {exc}" if exc else "client disconnected")
        self.state = CLOSED
        if self._timer is not None:
            self._timer.cancel()
        log.info(
            "client %s user=%s db=%s disconnected: %s", self.peer, self.user or "-", self.database or "-", self.reason
        )
        self.server.forget(self)
        self.server.metrics.disconnects.labels(_reason_class(self.reason)).inc()
        if self.pool is not None:
            self.audit_unfinished(self._timings)
            self.audit_event("logout", reason=self.reason)
        backend, self.backend = self.backend, None
        if backend is not None:
            self._give_back(backend)

    def close(self, reason: str) -> None:
        if self.state != CLOSED:
            self.reason = self.reason or reason
            self.state = CLOSED
            if self.transport is not None:
                self.transport.close()

    def fatal(self, sqlstate: str, message: str, hint: str | None = None) -> None:
        """Send a FATAL ErrorResponse and close this client only."""
        if self.state != READY and self.state != CLOSED:
            self.server.metrics.logins.labels("refused").inc()
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(protocol.error_response(sqlstate, message, severity="FATAL", hint=hint))
        self.close(f"{sqlstate} {message}")

    def _startup_expired(self) -> None:
        if self.state != READY:
            self.fatal(
                "08P01",
                f"client did not complete startup within "
                f"listen.startup_timeout ({self.config.listen.startup_timeout:g}s)",
            )

    def pause_writing(self) -> None:
        if self.backend is not None and self.backend.transport is not None:
            self.backend.transport.pause_reading()

    def resume_writing(self) -> None:
        if self.backend is not None and self.backend.transport is not None:
            self.backend.transport.resume_reading()

    def backend_pause(self, paused: bool) -> None:
        if self.transport is not None and not self.transport.is_closing():
            (self.transport.pause_reading if paused else self.transport.resume_reading)()

    # --- bytes from the client --------------------------------------------------------------

    def data_received(self, data: bytes) -> None:
        self._safely(self._relay if self.state == READY else self._before_ready, data)

    def _safely(self, handle, arg) -> None:
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
            log.exception("client %s: internal error", self.peer)
            self.fatal("XX000", "internal error in pgwarden; the client connection was closed")

    def _before_ready(self, data: bytes) -> None:
        if self.state == STARTUP:
            self._startup_bytes(data)
        elif self.state == AUTH:
            self._auth_bytes(data)
        elif self.state == LOGIN:
            self._framer.feed(data)

    def _startup_bytes(self, data: bytes) -> None:
        self._startup.feed(data)
        while self.state == STARTUP and (packet := self._startup.next_packet()) is not None:
            if isinstance(packet, protocol.SSLRequest):
                self._answer_ssl()
            elif isinstance(packet, protocol.GSSENCRequest):
                self.transport.write(b"N")
            elif isinstance(packet, protocol.CancelRequest):
                task = self.server.cancel(packet.pid, packet.secret)
                if task is None:
                    self.close("cancel request ignored")
                else:
                    self.state = LOGIN  # nothing more is read from a cancel connection
                    task.add_done_callback(lambda _: self.close("cancel request forwarded"))
            else:
                self._begin_auth(packet)

    def _answer_ssl(self) -> None:
        if self.tls or self.server.tls_context is None:
            self.transport.write(b"N")
            return
        if self._startup.take_rest():
            raise protocol.ProtocolError("client sent data before the TLS handshake")
        self.transport.write(b"S")
        self.state = TLS
        asyncio.get_running_loop().create_task(self._start_tls())

    async def _start_tls(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            self.transport = await loop.start_tls(
                self.transport,
                self,
                self.server.tls_context,
                server_side=True,
                ssl_handshake_timeout=self.config.listen.startup_timeout,
            )
        except Exception as exc:  # a failed handshake closes only this client
            self.server.metrics.tls_handshakes.labels("failed").inc()
            self.close(f"TLS handshake failed: {exc}")
            return
        self.tls = True
        self.server.metrics.tls_handshakes.labels("ok").inc()
        self.state = STARTUP

    def _begin_auth(self, packet: protocol.StartupMessage) -> None:
        config = self.config
        if config.listen.tls.mode == "require" and not self.tls:
            self.fatal(
                "28000",
                "pgwarden requires TLS for every client (listen.tls.mode = require)",
                hint="connect with sslmode=require",
            )
            return
        unsupported = [k for k in packet.params if k.startswith("_pq_.")]
        if packet.version & 0xFFFF or unsupported:
            self.transport.write(protocol.negotiate_protocol_version(protocol.PROTOCOL_3_0, unsupported))
        user = packet.params.get("user", "")
        if not user:
            self.fatal("28000", "no PostgreSQL user name specified in startup packet")
            return
        self.user, self.database = user, packet.params.get("database") or user
        self._client_params = {k: v for k, v in packet.params.items() if not k.startswith("_pq_.")}
        entry = config.auth.users.get(user)
        if config.auth.method == "trust" and config.auth.users and entry is None:
            self.fatal(
                "28000",
                f'role "{user}" is not known to pgwarden',
                hint="add the user under auth.users in the pgwarden config",
            )
            return
        credential = Credential(entry.secret(), entry.scram_verifier) if entry else None
        self._auth = ClientAuth(config.auth.method, user, credential)
        self.transport.write(self._auth.start())
        self._framer.feed(self._startup.take_rest())
        self.state = AUTH
        if self._auth.done:
            self._login()

    def _auth_bytes(self, data: bytes) -> None:
        self._framer.feed(data)
        for kind, msg in self._framer.messages():
            if kind != ord("p"):
                raise protocol.ProtocolError(f"expected a password message, got {chr(kind)!r}")
            reply = self._auth.receive(msg)  # type: ignore[union-attr]
            if reply:
                self.transport.write(reply)
            if self._auth.done:  # type: ignore[union-attr]
                self._login()
                return

    def _login(self) -> None:
        if self.database == ADMIN_DATABASE:
            self._admin_login()
            return
        self.state = LOGIN
        asyncio.get_running_loop().create_task(self._login_async())

    async def _login_async(self) -> None:
        try:
            router = self.server.router  # policed sessions get backends of their own role
            policed = router is not None and not router.identity(self.user).bypass
            pool = self.server.pool_for(self.database, self.user, policed)
            server_params = await pool.login_params()
        except BackendError as exc:
            self._forward_fatal(exc)
            return
        except PoolTimeout as exc:
            self.fatal("53300", str(exc), hint="raise pool.size or pool.query_wait_timeout")
            return
        if self.state == CLOSED:
            return
        self.pool = pool
        self.tx_mode = self.config.pool.mode == "transaction"
        self.settings = params.startup_settings(self._client_params)
        if (
            not self.guard_login()
            or not await self.server.ensure_schema(self, self.database)
            or not self.guard_version(server_params)
        ):
            return
        shown = {**server_params, **{k: v for k, v in self._client_params.items() if k in server_params}}
        out = [protocol.parameter_status(k, v) for k, v in shown.items()]
        out.append(protocol.backend_key_data(self.pid, self.secret))
        out.append(protocol.ready_for_query(b"I"))
        self.transport.write(b"".join(out))
        self.state = READY
        if self._timer is not None:
            self._timer.cancel()
        self.server.metrics.logins.labels("ok").inc()
        self.audit_event(
            "login", roles=sorted(self.ident.roles) if self.ident else [], tenant=self.tenant(), tls=self.tls
        )
        log.info(
            "client %s logged in as user=%s db=%s (%s pooling)",
            self.peer,
            self.user,
            self.database,
            self.config.pool.mode,
        )
        if self._framer.pending():
            self._relay(b"")

    def _admin_login(self) -> None:
        if self.user not in self.config.admin.users:
            self.fatal(
                "42501",
                f'user "{self.user}" may not use the admin console',
                hint="list the user under admin.users in the pgwarden config",
            )
            return
        self.console = AdminConsole(self.server)
        out = [protocol.parameter_status(k, v) for k, v in ADMIN_PARAMETERS.items()]
        self.transport.write(
            b"".join(out) + protocol.backend_key_data(self.pid, self.secret) + protocol.ready_for_query(b"I")
        )
        self.state = READY
        if self._timer is not None:
            self._timer.cancel()
        log.info("client %s opened the admin console as %s", self.peer, self.user)

    def _admin(self, msgs: list[tuple[int, bytes]]) -> None:
        for kind, msg in msgs:
            if kind == _Q:
                self.transport.write(self.console.handle(protocol.decode_query(msg)))
            elif kind == _X:
                self.close("client sent Terminate")
                return
            else:
                self.fatal("0A000", "the admin console answers simple queries only")
                return

    def _forward_fatal(self, exc: BackendError) -> None:
        fields = exc.fields
        self.fatal(exc.sqlstate, fields.get("message", "backend error"), hint=fields.get("hint"))

    # --- relaying (the hot path) ------------------------------------------------------------

    def _relay(self, data: bytes) -> None:
        msgs = self._framer.split(data)
        if not msgs:
            return
        if self.console is not None:
            self._admin(msgs)
            return
        audit = self.server.audit
        if self._held is not None or (
            audit is not None and not audit.accepting() and audit.config.on_failure == "block"
        ):
            self._hold(msgs)
            return
        self._dispatch(msgs)

    def _dispatch(self, msgs: list[tuple[int, bytes]]) -> None:
        if self.backend is None:
            if self._acquiring:
                self._pending += msgs
                return
            if msgs[0][0] == _X:
                self.close("client sent Terminate")
                return
            if self.tx_mode and self.ident is None and self._answer_without_backend(msgs):
                return
            backend = self.pool.take_idle()  # type: ignore[union-attr]
            if backend is None:
                self._pending = msgs
                self._acquire()
                return
            self._link(backend)
        self._forward(msgs)

    def _hold(self, msgs: list[tuple[int, bytes]]) -> None:
        """The audit trail cannot take records (on_failure: block): hold the client's messages,
        reading paused, until it can or block_timeout passes; a statement it still cannot take
        is then refused (58030)."""
        if self._held is None:
            self._held = []
            self.transport.pause_reading()
            asyncio.get_running_loop().create_task(self._release_held())
        self._held += msgs

    async def _release_held(self) -> None:
        audit = self.server.audit
        await audit.room(audit.config.block_timeout)  # type: ignore[union-attr]
        msgs, self._held = self._held or [], None
        if self.state == CLOSED:
            return
        self._safely(self._dispatch, msgs)
        if self.state != CLOSED and not self._acquiring:
            self.transport.resume_reading()

    def _acquire(self) -> None:
        self._acquiring = True
        self.transport.pause_reading()
        asyncio.get_running_loop().create_task(self._acquire_async())

    async def _acquire_async(self) -> None:
        try:
            backend = await self.pool.acquire()  # type: ignore[union-attr]
        except (PoolTimeout, BackendError) as exc:
            self._acquiring = False
            self._refuse_pending(getattr(exc, "sqlstate", "53300"), str(exc), getattr(exc, "fields", {}).get("hint"))
            return
        self._acquiring = False
        if self.state == CLOSED:
            self.pool.release(backend)  # type: ignore[union-attr]
            return
        self._link(backend)
        msgs, self._pending = self._pending, []
        self._safely(self._forward, msgs)
        if self.state != CLOSED:
            self.transport.resume_reading()

    def _refuse_pending(self, sqlstate: str, message: str, hint: str | None = None) -> None:
        """No backend came: answer the waiting requests with an error, or close if we cannot."""
        msgs, self._pending = self._pending, []
        syncs = sum(1 for kind, _ in msgs if kind in (_Q, _S, _F))
        if not syncs:
            self.fatal(sqlstate, message, hint)
            return
        out = [
            protocol.error_response(
                sqlstate,
                message,
                hint=hint or "raise pool.size or pool.query_wait_timeout, or hold transactions shorter",
            )
        ]
        out += [protocol.ready_for_query(b"I")] * syncs
        self.transport.write(b"".join(out))
        self.transport.resume_reading()

    def _link(self, backend: Backend) -> None:
        backend.client = self
        self._unnamed_here = False
        backend.tracker.scrub = HIDDEN_DETAIL if self.ident is not None else None
        self.backend = backend
        if self.settings == backend.settings:
            return
        sql = params.replay(self.settings, backend.settings)
        if sql:
            backend.tracker.request(_Q, SWALLOW)
            backend.write(protocol.query(sql))
            backend.settings = dict(self.settings)

    def _forward(self, msgs: list[tuple[int, bytes]]) -> None:
        backend = self.backend
        tracker = backend.tracker  # type: ignore[union-attr]
        tx_mode = self.tx_mode
        out: list[bytes] = []
        self._out = out
        for kind, msg in msgs:
            if self.skipping:  # after a refusal, as PostgreSQL after an error: up to Sync
                if kind == _S:
                    self.skipping = False
                    self._timings.append([time.perf_counter(), b"", self._take_cycle()])
                    tracker.request(_S, tag=self._watch())  # its ReadyForQuery ends the pipeline
                    out.append(msg)
                continue
            if kind == _Q:
                self._query(msg, out)
            elif kind in _REQUESTS:
                if kind == _F and self.ident is not None:
                    self._timings.append([time.perf_counter(), b"", None])  # its ReadyForQuery
                    self.refuse(
                        "42501",
                        "FunctionCall messages are refused: they call functions "
                        "by OID, outside any statement the policy can check",
                        "call the function in a SELECT",
                        simple=True,
                    )
                    continue
                if kind in (_P, _B):
                    self._note_statement(kind, msg)
                if self.ident is not None and kind in _NAMED:
                    msg = self._guard_extended(kind, msg, out)  # type: ignore[assignment]
                    if msg is None:
                        continue
                elif kind == _P:
                    if self.server.router is not None and sends_ddl(msg):
                        self._ddl_sent = True
                    if self.server.audit is not None:
                        parsed = protocol.decode_parse(msg)
                        self.audited(parsed.query, False, None, parsed.name)
                if kind == _B and self.server.audit is not None and not self.audit_bind(msg):
                    continue
                if tx_mode and kind in _NAMED and names_statement(kind, msg):
                    self._extended_tx(kind, msg, out)
                    continue
                if (
                    tx_mode and (kind == _B or (kind == _D and msg[5] == 83)) and not self._unnamed_here
                ):  # the unnamed statement, not a portal
                    if self._unnamed is None:  # the backend's unnamed statement is not this client's
                        self.refuse(
                            "26000",
                            "unnamed prepared statement does not exist",
                            "send a Parse before the Bind on this connection",
                            simple=False,
                        )
                        continue
                    self._restore_unnamed(out)
                if kind == _P:
                    self.dirty = True
                    if (tx_mode or self.ident is not None) and _stateful_text(msg, 6, msg.find(b"\x00", 6)):
                        msg = self._stateful_parse(msg, out)  # type: ignore[assignment]
                        if msg is None:
                            continue
                    if tx_mode:
                        self._unnamed, self._unnamed_here = msg, True
                if kind in (_S, _F):
                    self._timings.append([time.perf_counter(), self._last_parse, self._take_cycle()])
                tracker.request(kind, tag=self._watch() if kind == _S else None)
                out.append(msg)
            elif kind in _PASSED:
                out.append(msg)
            elif kind == _X:
                self._out = None
                if out:
                    backend.write(b"".join(out))  # type: ignore[union-attr]
                self.close("client sent Terminate")
                return
            else:
                self._out = None
                self.fatal("08P01", f"invalid frontend message type {chr(kind)!r}")
                return
        self._out = None
        if out:
            backend.write(b"".join(out))  # type: ignore[union-attr]
        self._maybe_release()

    def reply(self, data: bytes) -> None:
        """Send the client an answer the proxy made itself, in order with the backend's answers."""
        now = self.backend.tracker.synthetic(data) if self.backend is not None else data
        if now:
            self.transport.write(now)

    def refuse(self, sqlstate: str, message: str, hint: str | None, simple: bool) -> None:
        """An ErrorResponse for one statement; the connection stays usable.

        The backend is made to fail too (a statement that cannot parse, its error hidden), so
        an open transaction or extended-protocol pipeline is aborted exactly as PostgreSQL
        aborts it on an error: nothing sent before the refusal commits behind the client's back.
        """
        self.reply(protocol.error_response(sqlstate, message, hint=hint))
        backend = self.backend
        if backend is None:
            if simple:
                self.reply(protocol.ready_for_query(b"I"))
            else:
                self.skipping = True
            return
        if simple:
            backend.tracker.request(_Q, ABORT)
            self._send(protocol.query(_ABORT_SQL))
        else:
            backend.tracker.request(_P, ABORT)
            self._send(protocol.parse("", _ABORT_SQL))
            self.skipping = True

    def _send(self, msg: bytes) -> None:
        """To the backend, in order with the batch `_forward` is building."""
        if self._out is not None:
            self._out.append(msg)
        else:
            self.backend.write(msg)  # type: ignore[union-attr]

    # --- statements that touch session state --------------------------------------------------

    def _query(self, msg: bytes, out: list[bytes]) -> None:
        self._timings.append([time.perf_counter(), msg, self._take_cycle()])  # Binds before it too
        if self.ident is not None:
            guarded = self.guard_text(protocol.decode_query(msg), simple=True)
            if guarded is None:
                return
            if guarded[1].sql is not None:
                msg = protocol.query(guarded[0])
        else:
            if self.server.router is not None and sends_ddl(msg):
                self._ddl_sent = True
            if self.server.audit is not None and not self.audited(protocol.decode_query(msg), True):
                return
        self.dirty = True
        if (
            (self.tx_mode or self.ident is not None)
            and _stateful_text(msg, 5, len(msg) - 1)
            and not self._session_statement(protocol.decode_query(msg), True)
        ):
            return
        self.backend.tracker.request(_Q, tag=self._watch())  # type: ignore[union-attr]
        out.append(msg)

    # --- bytes from the backend -------------------------------------------------------------

    def backend_data(self, backend: Backend, data: bytes) -> None:
        tracker = backend.tracker
        try:
            out = tracker.feed(data)
        except protocol.ProtocolError as exc:
            log.warning("backend pid=%s sent invalid data: %s", backend.pid, exc)
            backend.close()
            return
        if out:
            self.transport.write(out)
        if tracker.failed:
            for stmt in tracker.failed:
                backend.statements.doubt(stmt.name)  # type: ignore[attr-defined]
            tracker.failed.clear()
        if tracker.done:
            for stmt in tracker.done:
                stmt.verified = True  # type: ignore[attr-defined]
            tracker.done.clear()
        if tracker.rows:
            self._timed(tracker.rows)
            tracker.rows.clear()
        if tracker.reported:
            self._reported(backend, tracker.reported)
        if tracker.errors:
            self._backend_errors(backend, tracker.errors)
        if tracker.ends:
            for tag, failed, status in tracker.ends:
                self._cycle_ended(tag, failed, status)
            tracker.ends.clear()
        if self._ddl_sent and tracker.status == _I:  # a bypass role's DDL committed (or not)
            self._ddl_sent = False
            self.server.refresh_schemas(self.database)
        if tracker.idle:
            self._maybe_release()

    def _maybe_release(self) -> None:
        backend = self.backend
        if backend is None or not backend.tracker.idle or backend.tracker.status != _I:
            return
        if self.tx_mode and not self.pinned:
            self.backend = None
            if backend.dirty:
                self._reset(backend, [])
            else:
                self.pool.release(backend)  # type: ignore[union-attr]
        if self.server.draining:
            self.fatal("57P01", "terminating connection: pgwarden is shutting down")

    def backend_lost(self, backend: Backend) -> None:
        self.backend = None
        self.pool.release(backend, reusable=False)  # type: ignore[union-attr]
        self.fatal(
            "08006",
            "the backend connection was lost (PostgreSQL closed it)",
            hint="check the PostgreSQL log; reconnect to get a new backend",
        )

    def _give_back(self, backend: Backend) -> None:
        """The client left: return its backend clean, or close it when it cannot be made clean."""
        pool = self.pool
        if backend.closed or not backend.tracker.idle or pool is None:
            log.info("closing backend pid=%s: client left with a request in flight", backend.pid)
            if pool is not None:
                pool.release(backend, reusable=False)
            else:
                backend.close()
            return
        reset = ["ROLLBACK"] if backend.tracker.status != _I else []
        if not reset and not backend.dirty and (self.tx_mode or not self.dirty):
            pool.release(backend)
            return
        self._reset(backend, reset)

    def _reset(self, backend: Backend, first: list[str]) -> None:
        """Return a backend through `first` statements and DISCARD ALL when it holds session state."""
        pool = self.pool
        discard = backend.dirty or not self.tx_mode
        statements = first + (["DISCARD ALL"] if discard else [])

        def done(ok: bool) -> None:
            if discard:
                backend.settings.clear()
                backend.statements.clear()
                backend.dirty = False
            pool.release(backend, reusable=ok)  # type: ignore[union-attr]

        backend.clean(statements, done)
