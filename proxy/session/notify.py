"""A client's LISTENs, multiplexed on its pool's listening backend: answered by pgwarden, notifications delivered between statements."""

from __future__ import annotations

import asyncio
import logging
import re
import struct
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from proxy.pooling.backend import Backend
from proxy.pooling.listener import Listener, Notification
from proxy.session import session_sql
from proxy.session.accounting import AUDIT_FULL, Accounting
from proxy.session.state import Refusal
from proxy.session.txstate import Transaction
from proxy.wire import protocol
from proxy.wire.protocol import (
    MSG_BIND,
    MSG_CLOSE,
    MSG_DESCRIBE,
    MSG_EXECUTE,
    MSG_FLUSH,
    MSG_PARSE,
    MSG_QUERY,
    MSG_SYNC,
    TX_FAILED,
    TX_IDLE,
)
from rewriter.channels import scoped_channel

log = logging.getLogger("pgwarden.session")

_COMMAND = re.compile(r'\s*(listen|unlisten)\s+(\*|"(?:[^"]|"")+"|[^\W\d][\w$]*)\s*;?\s*$', re.I | re.S)
_EXTENDED = frozenset((MSG_PARSE, MSG_BIND, MSG_DESCRIBE, MSG_EXECUTE, MSG_CLOSE))
_NO_PARAMETERS = protocol.message(b"t", b"\x00\x00")  # ParameterDescription: none
_NO_DATA = protocol.message(b"n")
_READY_IDLE = protocol.ready_for_query(b"I")
_PIPELINED = Refusal(
    "0A000",
    "{what} pipelined behind unanswered statements in a transaction block is not supported by "
    "pgwarden: it answers {what} itself, and must know first whether the block has failed",
    "wait for the answers before sending {what} in a transaction block",
)
_IN_SAVEPOINT = Refusal(
    "0A000",
    "{what} inside a savepoint is not supported by pgwarden: it applies the LISTENs and UNLISTENs "
    "of a transaction block at its COMMIT, but cannot undo them at ROLLBACK TO",
    "send {what} before the first SAVEPOINT of the block, or outside the block",
)
_ABORTED = protocol.error_response(
    "25P02", "current transaction is aborted, commands ignored until end of transaction block"
) + protocol.ready_for_query(b"E")
_NO_TENANT = Refusal(
    "42501",
    "LISTEN is refused without a tenant: notification channels are scoped per tenant",
    "SET the tenant first (pgwarden scopes channels to it)",
)
_LOST = Refusal(
    "08006", "pgwarden could not LISTEN on its listening backend", "check the PostgreSQL log, then LISTEN again"
)


@dataclass(frozen=True, slots=True)
class Command:
    """A Query that is exactly one LISTEN or UNLISTEN: the channel as PostgreSQL names it ('*': all)."""

    listen: bool
    channel: str


class Client(Protocol):
    """The client's connection (`connection.Session`): bytes to it, and its transport (to pause reading)."""

    transport: asyncio.Transport | None

    def write(self, data: bytes) -> None: ...


class Relay(Protocol):
    """What is read of the client's relay (`core.SessionCore`): its backend, transaction and answers."""

    backend: Backend | None
    tx: Transaction
    accounting: Accounting

    def reply(self, data: bytes) -> None: ...
    def refuse(self, refusal: Refusal, simple: bool) -> None: ...


def in_block(relay: Relay) -> bool:
    """A transaction block is open (as far as sent) or the backend serving the client is in one."""
    backend = relay.backend
    return relay.tx.in_block or (backend is not None and backend.tracker.status != TX_IDLE)


def block_refusal(relay: Relay, cmd: Command) -> Refusal | None:
    """Why a LISTEN or UNLISTEN in a transaction block is refused; None: pgwarden answers it (with
    the block's status) and applies it if the block commits."""
    backend = relay.backend
    if backend is None or not backend.tracker.idle:
        refusal = _PIPELINED
    elif relay.tx.in_savepoint:
        refusal = _IN_SAVEPOINT
    else:
        return None
    what = "LISTEN" if cmd.listen else "UNLISTEN"
    return Refusal(refusal.sqlstate, refusal.message.format(what=what), (refusal.hint or "").format(what=what))


def between_statements(relay: Relay) -> bool:
    """No request of the client is unanswered and no transaction is open."""
    backend = relay.backend
    return backend is None or (backend.tracker.idle and backend.tracker.status == TX_IDLE and not relay.tx.in_block)


def refuse_query(relay: Relay, msg: bytes, refusal: Refusal) -> None:
    """A simple Query refused, answered in order (timed like any Query when a backend must fail it too)."""
    if relay.backend is not None:
        relay.accounting.started(msg)
    relay.refuse(refusal, simple=True)


DISCARD_ALL = Command(False, "*")  # (unlistens too, and goes to the backend)
_DISCARD_ALL = re.compile(r"\s*discard\s+all\s*;?\s*$", re.I)


def command(msgs: list[tuple[int, bytes]]) -> Command | None:
    """The LISTEN, UNLISTEN or DISCARD ALL the first of `msgs` is, if it is a simple Query of exactly that."""
    kind, msg = msgs[0]
    if kind != MSG_QUERY or not session_sql.may_listen(msg):  # (the hot path: a memo lookup)
        return None
    if b"discard" in msg[5:40].lower() and _DISCARD_ALL.match(protocol.decode_query(msg)):
        return DISCARD_ALL
    return command_text(protocol.decode_query(msg))


def command_text(sql: str) -> Command | None:
    """The LISTEN or UNLISTEN `sql` is exactly, else None."""
    match = _COMMAND.match(sql)
    if match is None:
        return None
    name = match.group(2)
    name = name[1:-1].replace('""', '"') if name.startswith('"') else name.lower()
    return Command(match.group(1).lower() == "listen", _truncated(name))


def command_sql(cmd: Command) -> str:
    """The statement a command prepared through the extended protocol runs, for its audit record.

    >>> command_sql(Command(True, "jobs")), command_sql(DISCARD_ALL)
    ('LISTEN "jobs"', 'UNLISTEN *')
    """
    if cmd.channel == "*":
        return "UNLISTEN *"
    quoted = cmd.channel.replace('"', '""')
    return f'{"LISTEN" if cmd.listen else "UNLISTEN"} "{quoted}"'


def _parses_listen(first: tuple[int, bytes]) -> bool:
    """A cheap first test (the hot path): might this batch open with a Parse of LISTEN/UNLISTEN?"""
    return first[0] == MSG_PARSE and b"isten" in first[1][5:160].lower()


def _truncated(name: str) -> str:
    """As PostgreSQL truncates an identifier: to 63 bytes, whole characters."""
    raw = name.encode()
    return raw[:63].decode("utf-8", "ignore") if len(raw) > 63 else name


def _channel_of(note: bytes) -> str:
    """The channel a NotificationResponse names (after its length and the notifier's pid)."""
    return protocol.read_cstr(note, 9)[0]


def notification_response(pid: int, channel: str, payload: str) -> bytes:
    """A NotificationResponse ('A') message."""
    return protocol.message(b"A", struct.pack("!I", pid) + protocol.cstr(channel) + protocol.cstr(payload))


class Notifications:
    """One client's channels (backend channel -> the name the client used) and the notifications
    held for it while it has a request in flight or a transaction open.

    `scope` gives the tenant of a policed session (None: a bypass session, raw channel names).
    The client is between statements when its relay has nothing unanswered and no transaction
    open, and its reading is not paused (it waits for a backend, the audit trail, or its LISTEN
    to be answered); `resume` relays what it sent after a LISTEN, once that is answered.
    """

    def __init__(
        self,
        listener: Listener,
        relay: Relay,
        client: Client,
        scope: Callable[[], str | None] | None,
        resume: Callable[[list[tuple[int, bytes]]], None],
    ) -> None:
        self.listener, self.relay, self.client = listener, relay, client
        self.channels: dict[str, str] = {}
        self.held: list[bytes] = []
        self.statements: dict[str, Command] = {}  # extended protocol: names of LISTEN statements
        self.portals: dict[str, Command] = {}  # ... and of portals bound to them
        self._scope, self._resume = scope, resume
        self._waiting: list[tuple[int, bytes]] | None = None  # messages sent while a LISTEN waits
        # LISTENs (with their backend channel) and UNLISTENs (None) of the open transaction block, in order
        self.block: list[tuple[Command, str | None]] = []
        self._closed = False

    @property
    def _transport(self) -> asyncio.Transport:
        transport = self.client.transport
        assert transport is not None, "a logged-in client has a transport"
        return transport

    # --- the client's LISTEN and UNLISTEN -------------------------------------------------------

    def take(self, msgs: list[tuple[int, bytes]]) -> bool:
        """Answer a LISTEN/UNLISTEN (a Query at the head of `msgs`, the rest relayed after it, or an
        extended-protocol batch about LISTEN statements only); False if `msgs` is not one."""
        if self._waiting is not None:
            self._waiting += msgs
            return True
        relay = self.relay
        cmd = command(msgs)
        if cmd is DISCARD_ALL:
            if not in_block(relay):  # (PostgreSQL refuses it in a block)
                self.unlisten("*")
            return False
        status = TX_IDLE
        if cmd is not None:
            batch, rest = msgs[:1], msgs[1:]
            if in_block(relay):
                refusal = block_refusal(relay, cmd)
                if refusal is not None:
                    refuse_query(relay, msgs[0][1], refusal)
                    if rest:
                        self._resume(rest)
                    return True
                assert relay.backend is not None
                status = relay.backend.tracker.status
        elif (self.statements or _parses_listen(msgs[0])) and not in_block(relay) and self._extended(msgs):
            batch, rest = msgs, []
        else:
            if self.statements or self.portals:
                self._forget(msgs)
            return False
        self._waiting = rest
        self._transport.pause_reading()
        asyncio.get_running_loop().create_task(self._answer(batch, status))
        return True

    def _extended(self, msgs: list[tuple[int, bytes]]) -> bool:
        """Is this extended-protocol batch about LISTEN/UNLISTEN statements only?"""
        names, portals, ours = set(self.statements), set(self.portals), False
        for kind, msg in msgs:
            if kind == MSG_PARSE:
                parsed = protocol.decode_parse(msg)
                if command_text(parsed.query) is None:
                    return False
                names.add(parsed.name)
            elif kind == MSG_BIND:
                portal, name, _ = protocol.decode_bind_names(msg)
                if name not in names:
                    return False
                portals.add(portal)
            elif kind in (MSG_DESCRIBE, MSG_CLOSE) or kind == MSG_EXECUTE:
                which, name = (
                    protocol.decode_target(msg) if kind != MSG_EXECUTE else ("P", protocol.read_cstr(msg, 5)[0])
                )
                if name not in (names if which == "S" else portals):
                    return False
            elif kind not in (MSG_SYNC, MSG_FLUSH):
                return False
            ours = ours or kind not in (MSG_SYNC, MSG_FLUSH)
        return ours and msgs[0][0] in _EXTENDED

    def _forget(self, msgs: list[tuple[int, bytes]]) -> None:
        """Statement and portal names the client now uses for other statements (sent to the backend)."""
        for kind, msg in msgs:
            if kind == MSG_PARSE:
                self.statements.pop(protocol.decode_parse(msg).name, None)
            elif kind == MSG_BIND:
                self.portals.pop(protocol.decode_bind_names(msg)[0], None)

    async def _answer(self, batch: list[tuple[int, bytes]], status: int) -> None:
        """Answer the batch in order (a LISTEN waits for the listening backend), then relay what came
        after. `status`: the transaction block's, for a Query sent in one (else idle)."""
        out: list[bytes] = []
        failed = False
        refused: tuple[bytes, Refusal] | None = None  # a Query in a block that fails: the block fails too
        for kind, msg in batch:
            if kind == MSG_SYNC:
                failed = False
                out.append(protocol.ready_for_query(b"I"))
            elif not failed:
                error = await self._message(kind, msg, out, status)
                failed = error is not None
                if error is not None and kind == MSG_QUERY and status != TX_IDLE:
                    refused = (msg, error)
                elif error is not None:
                    out.append(protocol.error_response(error.sqlstate, error.message, hint=error.hint))
                    if kind == MSG_QUERY:
                        out.append(protocol.ready_for_query(b"I"))
        if self._closed:
            return
        self.relay.reply(b"".join(out))
        if refused is not None:
            refuse_query(self.relay, *refused)
        msgs, self._waiting = self._waiting or [], None
        if not self._transport.is_closing():
            self._transport.resume_reading()
        self.deliver()
        if msgs:
            self._resume(msgs)

    async def _message(self, kind: int, msg: bytes, out: list[bytes], status: int) -> Refusal | None:
        """One message of the batch answered into `out`; the Refusal when it fails."""
        if kind == MSG_QUERY:
            if status == TX_FAILED:  # (as PostgreSQL answers any statement but the block's end)
                out.append(_ABORTED)
                return None
            sql = protocol.decode_query(msg)
            cmd = command_text(sql)
            assert cmd is not None
            error = await self._audited(cmd, sql, simple=True, in_block=status != TX_IDLE)
            if error is None:
                out.append(protocol.command_complete("LISTEN" if cmd.listen else "UNLISTEN"))
                out.append(protocol.ready_for_query(bytes([status])))
            return error
        if kind == MSG_PARSE:
            parsed = protocol.decode_parse(msg)
            self.statements[parsed.name] = command_text(parsed.query) or DISCARD_ALL
            out.append(protocol.PARSE_COMPLETE)
        elif kind == MSG_BIND:
            portal, name, _ = protocol.decode_bind_names(msg)
            self.portals[portal] = self.statements[name]
            out.append(protocol.BIND_COMPLETE)
        elif kind == MSG_DESCRIBE:
            out.append(_NO_PARAMETERS + _NO_DATA if protocol.decode_target(msg)[0] == "S" else _NO_DATA)
        elif kind == MSG_CLOSE:
            which, name = protocol.decode_target(msg)
            (self.statements if which == "S" else self.portals).pop(name, None)
            out.append(protocol.CLOSE_COMPLETE)
        elif kind == MSG_EXECUTE:
            cmd = self.portals[protocol.read_cstr(msg, 5)[0]]
            error = await self._audited(cmd, command_sql(cmd), simple=False)
            if error is None:
                out.append(protocol.command_complete("LISTEN" if cmd.listen else "UNLISTEN"))
            return error
        return None

    async def _audited(self, cmd: Command, sql: str, simple: bool, in_block: bool = False) -> Refusal | None:
        """`_run`, recorded in the audit trail when there is one (route primary: the listening backend
        is the primary's); refused (58030) when the trail cannot take the record (on_failure: block)."""
        accounting = self.relay.accounting
        if not accounting.auditing:
            return await self._run(cmd, in_block)
        if not accounting.admits():
            return AUDIT_FULL
        started = time.perf_counter()
        error = await self._run(cmd, in_block)
        tenant = self._scope() if self._scope is not None else None
        failed = None if error is None else protocol.error_response(error.sqlstate, error.message)
        accounting.answered_here(sql, simple, None, tenant, time.perf_counter() - started, 0, failed, "primary")
        return error

    async def _run(self, cmd: Command, in_block: bool = False) -> Refusal | None:
        """LISTEN (once the listening backend listens) or UNLISTEN; the Refusal if it cannot. In a
        transaction block it is kept for the block's end (`settled`): a channel LISTENed there is
        subscribed now, but its notifications are dropped until the block commits."""
        if not cmd.listen:
            if in_block:
                self.block.append((cmd, None))
            else:
                self.unlisten(cmd.channel)
            return None
        tenant = self._scope() if self._scope is not None else None
        if self._scope is not None and tenant is None:
            return _NO_TENANT
        channel = scoped_channel(tenant, cmd.channel) if tenant is not None else cmd.channel
        if in_block:
            if channel in self.channels or (await self.listener.subscribe(channel, self) and not self._closed):
                self.block.append((cmd, channel))
                return None
            self.listener.unsubscribe(channel, self)  # (not the client's outside the block: it was not in channels)
            return _LOST
        self.channels[channel] = cmd.channel
        if await self.listener.subscribe(channel, self) and not self._closed:
            return None
        if self.channels.pop(channel, None) is not None or self._closed:
            self.listener.unsubscribe(channel, self)
        return _LOST

    def settled(self, committed: bool | None, status: int) -> None:
        """The end of the transaction block the client LISTENed or UNLISTENed in (`committed`, from
        `Transaction.ended`): what it sent there applied in order if it committed, else undone."""
        if committed:
            block, self.block = self.block, []
            final = dict(self.channels)
            for cmd, channel in block:
                if channel is not None:
                    final[channel] = cmd.channel
                else:  # (UNLISTEN by the client's name, as `unlisten`)
                    final = {c: name for c, name in final.items() if cmd.channel not in ("*", name)}
            given_up = {c for c in self.channels if c not in final}
            given_up.update(c for _, c in block if c is not None and c not in final)
            for channel in given_up:
                self.listener.unsubscribe(channel, self)
            self.channels = final
            if given_up and self.held:  # (held notifications of channels UNLISTENed in the block)
                names = set(final.values())
                self.held = [note for note in self.held if _channel_of(note) in names]
        elif committed is False or status == TX_IDLE:
            self._undo_block()

    def _undo_block(self) -> None:
        """The block's LISTENs never happened: channels subscribed for it alone are given up."""
        block, self.block = self.block, []
        for _, channel in block:
            if channel is not None and channel not in self.channels:
                self.listener.unsubscribe(channel, self)

    def unlisten(self, client_channel: str) -> None:
        """UNLISTEN a channel by the client's name ('*': every channel)."""
        for channel, name in list(self.channels.items()):
            if client_channel in ("*", name):
                del self.channels[channel]
                self.listener.unsubscribe(channel, self)

    def close(self) -> None:
        """The client left: every channel unlistened."""
        self._closed = True
        self._undo_block()
        self.unlisten("*")
        self.held.clear()

    # --- notifications ----------------------------------------------------------------------

    def notification(self, note: Notification) -> None:
        name = self.channels.get(note.channel)
        if name is None or self._closed:
            return
        self.held.append(notification_response(note.pid, name, note.payload))
        self.deliver()

    def ahead_of(self, answer: bytes) -> bytes:
        """An answer that leaves the client between transactions (it ends with ReadyForQuery 'I' and
        nothing else is in flight), with the held notifications before that ReadyForQuery, where
        PostgreSQL sends them: libpq reads them with the answer (psycopg2's `notifies` right after
        `commit()`), not at the client's next read."""
        if not self.held or self._closed or not answer.endswith(_READY_IDLE):
            return answer
        held, self.held = self.held, []
        return answer[: -len(_READY_IDLE)] + b"".join(held) + _READY_IDLE

    def deliver(self) -> None:
        """Write the held notifications if the client is between statements."""
        if self.held and not self._closed and self._transport.is_reading() and between_statements(self.relay):
            held, self.held = self.held, []
            self.client.write(b"".join(held))
