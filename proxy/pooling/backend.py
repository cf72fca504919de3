"""One connection to a PostgreSQL backend: connecting, TLS, startup and auth, then relaying to its client."""

from __future__ import annotations

import asyncio
import logging
import struct
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol, cast

from proxy.pooling.prepared import BackendStatements
from proxy.wire import protocol
from proxy.wire.auth import AuthFailed, BackendAuth
from proxy.wire.tracker import SWALLOW, Tracker

if TYPE_CHECKING:
    import ssl

log = logging.getLogger("pgwarden.backend")


class BackendError(Exception):
    """The backend refused us (at startup or auth): carries its ErrorResponse, to forward to the client."""

    def __init__(self, fields: dict[str, str], raw: bytes | None = None) -> None:
        super().__init__(fields.get("message", "backend error"))
        self.fields = fields
        self.sqlstate = fields.get("sqlstate", "08006")
        self.raw = raw or protocol.error_response(
            self.sqlstate,
            fields.get("message", "backend error"),
            severity="FATAL",
            detail=fields.get("detail"),
            hint=fields.get("hint"),
        )


@dataclass(frozen=True, slots=True)
class Target:
    """Where and how to connect: address, TLS, and the role and database to log in as."""

    host: str
    port: int
    database: str
    user: str
    password: str | None
    tls_mode: str = "disable"
    tls_context: ssl.SSLContext | None = None
    connect_timeout: float = 5.0


@dataclass(slots=True)
class _Question:
    """A query `Backend.ask` sent: its answer read here, not relayed."""

    framer: protocol.Framer
    done: Callable[[str | None], None]
    value: str | None = None
    failed: bool = False


class Linked(Protocol):
    """What a backend needs of the client session it serves."""

    def backend_data(self, backend: Backend, data: bytes) -> None: ...
    def backend_lost(self, backend: Backend) -> None: ...
    def backend_pause(self, paused: bool) -> None: ...


class Backend(asyncio.Protocol):
    """A backend connection. While linked, every byte it receives goes to `client.backend_data`."""

    def __init__(self, statements_cap: int) -> None:
        self.transport: asyncio.Transport | None = None
        self.client: Linked | None = None
        self.tracker = Tracker()
        self.statements = BackendStatements(statements_cap)
        self.settings: dict[str, str] = {}
        self.params: dict[str, str] = {}
        self.pid = self.secret = 0
        self.address: tuple[str, int] = ("", 0)  # the server it is connected to (cancels go there)
        self.created = self.last_used = time.monotonic()
        self.closed = False
        self.needs_discard = False  # holds state beyond a transaction (temp table, lock, ...): DISCARD ALL
        self.cancels = 0  # cancel requests for this backend still on their way
        self.held_for_cancel = False  # released by a client while a cancel was on its way
        self.on_idle_lost: Callable[[Backend], None] | None = None  # set by the pool: called when an idle backend dies
        self._framer: protocol.Framer | None = protocol.Framer()
        self._messages: deque[tuple[int, bytes]] = deque()
        self._raw = bytearray()
        self._want_raw = False
        self._waiter: asyncio.Future | None = None
        self._cleaning: Callable[[bool], None] | None = None  # callback(ok) once a reset sent by `clean` is answered
        self._asking: _Question | None = None  # a one-value query the proxy sent for itself (`ask`)

    # --- asyncio.Protocol -------------------------------------------------------------------

    @property
    def dirty(self) -> bool:
        """`needs_discard`, under the name the admin console's SHOW SERVERS reads."""
        return self.needs_discard

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # (uvloop's transports do not subclass it)

    def data_received(self, data: bytes) -> None:
        client = self.client
        if self._asking is not None:
            self._answer_data(data)
        elif client is not None:
            client.backend_data(self, data)
        elif self._cleaning is not None:
            self._clean_data(data)
        elif self._framer is not None:
            self._startup_data(data)
        elif data[:1] == b"E":  # an idle backend told it is going away (admin shutdown, ...)
            log.info("backend pid=%s sent an error while idle; closing it", self.pid)
            self.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_exception(ConnectionError("backend closed the connection"))
        if self.client is not None:
            self.client.backend_lost(self)
        elif self._cleaning is not None:
            done, self._cleaning = self._cleaning, None
            done(False)
        elif self.on_idle_lost is not None:
            self.on_idle_lost(self)

    def pause_writing(self) -> None:
        if self.client is not None:
            self.client.backend_pause(True)

    def resume_writing(self) -> None:
        if self.client is not None:
            self.client.backend_pause(False)

    # --- relaying ---------------------------------------------------------------------------

    def write(self, data: bytes) -> None:
        transport = self.transport
        assert transport is not None, "write before connection_made"
        transport.write(data)

    def close(self) -> None:
        self.closed = True
        if self.transport is not None and not self.transport.is_closing():
            try:
                self.transport.write(protocol.TERMINATE)
            finally:
                self.transport.close()

    def clean(self, statements: list[str], done: Callable[[bool], None]) -> None:
        """Send reset statements whose answers nobody sees; call done(ok) when the backend is idle."""
        self.client = None
        self._cleaning = done
        for sql in statements:
            self.tracker.request(protocol.MSG_QUERY, SWALLOW)
            self.write(protocol.query(sql))

    def ask(self, sql: str, done: Callable[[str | None], None]) -> None:
        """Send a query for the proxy itself on an idle backend (its client, if any, sees nothing of
        it); call done(first column of its first row) when it is answered (None: no row, an error)."""
        self._asking = _Question(protocol.Framer(), done)
        self.write(protocol.query(sql))

    def _answer_data(self, data: bytes) -> None:
        question = self._asking
        assert question is not None
        question.framer.feed(data)
        try:
            for kind, msg in question.framer.messages():
                if kind == protocol.MSG_DATA_ROW and question.value is None:
                    first = protocol.data_row(msg)[:1]
                    question.value = first[0].decode() if first and first[0] is not None else None
                elif kind == protocol.MSG_ERROR_RESPONSE:
                    question.failed = True
                elif kind == protocol.MSG_READY_FOR_QUERY:
                    self._asking = None
                    question.done(None if question.failed else question.value)
                    return
        except protocol.ProtocolError:
            self._asking = None
            self.close()

    def _clean_data(self, data: bytes) -> None:
        try:
            self.tracker.feed(data)
        except protocol.ProtocolError:
            self.close()
            return
        done = self._cleaning
        if self.tracker.idle and done is not None:
            self._cleaning = None
            done(self.tracker.status == protocol.TX_IDLE)

    # --- startup ----------------------------------------------------------------------------

    def _startup_data(self, data: bytes) -> None:
        if self._want_raw:  # the one-byte answer to SSLRequest
            self._raw += data
        elif self._framer is not None:
            self._framer.feed(data)
            try:
                self._messages.extend(self._framer.messages())
            except protocol.ProtocolError as exc:
                if self._waiter is not None and not self._waiter.done():
                    self._waiter.set_exception(exc)
                return
        self._wake()

    def _wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    async def _next_message(self) -> tuple[int, bytes]:
        while not self._messages:
            self._waiter = asyncio.get_running_loop().create_future()
            await self._waiter
        return self._messages.popleft()

    async def _read_byte(self) -> bytes:
        self._want_raw = True
        while not self._raw:
            self._waiter = asyncio.get_running_loop().create_future()
            await self._waiter
        self._want_raw = False
        byte, rest = bytes(self._raw[:1]), bytes(self._raw[1:])
        self._raw.clear()
        if rest:
            raise protocol.ProtocolError("backend sent data after its answer to SSLRequest")
        return byte

    async def startup(self, target: Target) -> None:
        """TLS negotiation, StartupMessage, authentication, then wait for ReadyForQuery."""
        if target.tls_mode != "disable":
            await self._negotiate_tls(target)
        self.write(protocol.startup_message({"user": target.user, "database": target.database}))
        auth = BackendAuth(target.user, target.password)
        while True:
            kind, msg = await self._next_message()
            if kind == protocol.MSG_AUTHENTICATION:
                reply = auth.receive(msg)
                if reply:
                    self.write(reply)
            elif kind == protocol.MSG_PARAMETER_STATUS:
                name, pos = protocol.read_cstr(msg, 5)
                self.params[name] = protocol.read_cstr(msg, pos)[0]
            elif kind == protocol.MSG_BACKEND_KEY_DATA:
                self.pid, self.secret = struct.unpack_from("!II", msg, 5)
            elif kind == protocol.MSG_ERROR_RESPONSE:
                raise BackendError(protocol.decode_fields(msg), msg)
            elif kind == protocol.MSG_READY_FOR_QUERY:
                break
        self._framer = None
        self._messages.clear()

    async def _negotiate_tls(self, target: Target) -> None:
        self.write(protocol.ssl_request())
        answer = await self._read_byte()
        if answer == b"S":
            loop = asyncio.get_running_loop()
            transport, context = self.transport, target.tls_context
            assert transport is not None and context is not None  # a context exists unless tls.mode is disable
            self.transport = await loop.start_tls(transport, self, context, server_hostname=target.host)
        elif target.tls_mode in ("require", "verify-full"):
            raise BackendError(
                {
                    "sqlstate": "08001",
                    "message": f"backend {target.host}:{target.port} does not support TLS, "
                    f"but primary.tls.mode is {target.tls_mode}",
                }
            )


async def connect(target: Target, statements_cap: int) -> Backend:
    """Open and log in a new backend connection; raise BackendError or OSError on failure."""
    loop = asyncio.get_running_loop()

    async def run() -> Backend:
        _, backend = await loop.create_connection(lambda: Backend(statements_cap), target.host, target.port)
        backend.address = (target.host, target.port)
        try:
            await backend.startup(target)
        except BaseException:
            backend.close()
            raise
        return backend

    try:
        return await asyncio.wait_for(run(), target.connect_timeout)
    except AuthFailed as exc:
        raise BackendError(
            {
                "sqlstate": exc.sqlstate,
                "message": f"pgwarden could not log in to the backend as {target.user!r}: {exc}",
                "hint": getattr(exc, "hint", None) or "check backend_auth in the config",
            }
        ) from exc
    except TimeoutError:
        raise BackendError(
            {
                "sqlstate": "08006",
                "message": f"connecting to backend "
                f"{target.host}:{target.port} timed out after {target.connect_timeout}s",
                "hint": "check that PostgreSQL is running, or raise pool.connect_timeout",
            }
        ) from None
    except OSError as exc:
        raise BackendError(
            {
                "sqlstate": "08006",
                "message": f"cannot connect to backend {target.host}:{target.port}: {exc.strerror or exc}",
                "hint": "check that PostgreSQL is running and `primary` in the config",
            }
        ) from exc
