"""One plain asyncio connection to PostgreSQL for the consumer: startup, auth, simple queries, CopyBoth."""

from __future__ import annotations

import asyncio
from collections import deque

from proxy.wire import protocol
from proxy.wire.auth import BackendAuth
from proxy.wire.protocol import Framer


class QueryFailed(Exception):
    """PostgreSQL answered with an ErrorResponse; `sqlstate` says which."""

    def __init__(self, sqlstate: str, message: str, fatal: bool = False) -> None:
        super().__init__(f"{message} (SQLSTATE {sqlstate})")
        self.sqlstate = sqlstate
        self.fatal = fatal  # FATAL or PANIC: the connection is over


def quote_ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def quote_literal(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


class PgLink:
    """A connection that speaks the simple query protocol, then (for a walsender) CopyBoth."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._reader, self._writer = reader, writer
        self._framer = Framer()
        self._pending: deque[tuple[int, bytes]] = deque()
        self.pid = 0

    @classmethod
    async def open(cls, host: str, port: int, params: dict[str, str], password: str | None, timeout_s: float) -> PgLink:
        """Connect and log in with `params` (user, database, replication, ...) within `timeout_s`."""
        reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port), timeout_s)
        link = cls(reader, writer)
        try:
            await asyncio.wait_for(link._login(params, password), timeout_s)
        except BaseException:
            link.close()
            raise
        return link

    async def _login(self, params: dict[str, str], password: str | None) -> None:
        self._writer.write(protocol.startup_message(params))
        auth = BackendAuth(params["user"], password)
        while True:
            kind, msg = await self.read()
            if kind == protocol.MSG_AUTHENTICATION:
                answer = auth.receive(msg)
                if answer:
                    self._writer.write(answer)
            elif kind == protocol.MSG_BACKEND_KEY_DATA:
                self.pid = int.from_bytes(msg[5:9], "big")
            elif kind == protocol.MSG_READY_FOR_QUERY:
                return
            else:
                self.check_error(kind, msg)

    async def read(self) -> tuple[int, bytes]:
        """The next whole message (type byte, bytes with header); EOF is a ConnectionError."""
        while not self._pending:
            data = await self._reader.read(1 << 16)
            if not data:
                raise ConnectionError("PostgreSQL closed the connection")
            self._pending.extend(self._framer.split(data))
        return self._pending.popleft()

    def buffered(self) -> bool:
        """Are whole messages waiting to be read without I/O?"""
        return bool(self._pending)

    @staticmethod
    def check_error(kind: int, msg: bytes) -> None:
        """Raise on an ErrorResponse; let notices and parameter reports pass."""
        if kind == protocol.MSG_ERROR_RESPONSE:
            fields = protocol.decode_fields(msg)
            severity = fields.get("severity_nl", fields.get("severity", ""))
            fatal = severity in ("FATAL", "PANIC")
            raise QueryFailed(fields.get("sqlstate", "XX000"), fields.get("message", "unknown error"), fatal)

    async def query(self, sql: str) -> list[tuple[str | None, ...]]:
        """Run `sql` (one statement) and return its rows as text; an error raises QueryFailed."""
        self._writer.write(protocol.query(sql))
        rows: list[tuple[str | None, ...]] = []
        failed: QueryFailed | None = None
        while True:
            kind, msg = await self.read()
            if kind == protocol.MSG_DATA_ROW:
                rows.append(
                    tuple(None if v is None else v.decode("utf-8", "surrogateescape") for v in protocol.data_row(msg))
                )
            elif kind == protocol.MSG_READY_FOR_QUERY:
                if failed is not None:
                    raise failed
                return rows
            else:
                try:
                    self.check_error(kind, msg)
                except QueryFailed as exc:
                    if exc.fatal:
                        raise
                    failed = exc

    async def start_copy(self, sql: str) -> None:
        """Send a command that enters CopyBoth mode (START_REPLICATION) and wait for CopyBothResponse."""
        self._writer.write(protocol.query(sql))
        while True:
            kind, msg = await self.read()
            if kind == ord("W"):
                return
            self.check_error(kind, msg)

    def write(self, data: bytes) -> None:
        self._writer.write(data)

    def close(self) -> None:
        if not self._writer.is_closing():
            try:
                self._writer.write(protocol.TERMINATE)
            except (OSError, RuntimeError):
                pass
            self._writer.close()
