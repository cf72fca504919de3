"""A client's LISTENs, multiplexed on its pool's listening backend: answered by pgwarden, notifications delivered between statements."""

from __future__ import annotations

import asyncio
import logging
import re
import struct
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from proxy.pooling.backend import Backend
from proxy.pooling.listener import Listener, Notification
from proxy.session.accounting import Accounting
from proxy.session.state import Refusal
from proxy.session.txstate import Transaction
from proxy.wire import protocol
from proxy.wire.protocol import MSG_QUERY, TX_IDLE
from rewriter.channels import scoped_channel

log = logging.getLogger("pgwarden.session")

_COMMAND = re.compile(r'\s*(listen|unlisten)\s+(\*|"(?:[^"]|"")+"|[^\W\d][\w$]*)\s*;?\s*$', re.I | re.S)
_IN_BLOCK = Refusal(
    "0A000",
    "{what} inside a transaction block is not supported by pgwarden: PostgreSQL applies it at "
    "COMMIT, and pgwarden listens for its clients on a backend of its own",
    "send LISTEN and UNLISTEN outside BEGIN ... COMMIT (in autocommit mode)",
)
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
    if kind != MSG_QUERY:
        return None
    head = msg[5:40].lower()
    if b"discard" in head and _DISCARD_ALL.match(protocol.decode_query(msg)):
        return DISCARD_ALL
    if b"isten" not in head:
        return None
    match = _COMMAND.match(protocol.decode_query(msg))
    if match is None:
        return None
    name = match.group(2)
    name = name[1:-1].replace('""', '"') if name.startswith('"') else name.lower()
    return Command(match.group(1).lower() == "listen", _truncated(name))


def _truncated(name: str) -> str:
    """As PostgreSQL truncates an identifier: to 63 bytes, whole characters."""
    raw = name.encode()
    return raw[:63].decode("utf-8", "ignore") if len(raw) > 63 else name


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
        self._scope, self._resume = scope, resume
        self._waiting: list[tuple[int, bytes]] | None = None  # messages sent while a LISTEN waits
        self._closed = False

    @property
    def _transport(self) -> asyncio.Transport:
        transport = self.client.transport
        assert transport is not None, "a logged-in client has a transport"
        return transport

    # --- the client's LISTEN and UNLISTEN -------------------------------------------------------

    def take(self, msgs: list[tuple[int, bytes]]) -> bool:
        """Answer a LISTEN/UNLISTEN at the head of `msgs` (the rest relayed after it); False if none."""
        if self._waiting is not None:
            self._waiting += msgs
            return True
        cmd = command(msgs)
        if cmd is None:
            return False
        if cmd is DISCARD_ALL:
            if not in_block(self.relay):  # (PostgreSQL refuses it in a block)
                self.unlisten("*")
            return False
        msg, rest, relay = msgs[0][1], msgs[1:], self.relay
        what = "LISTEN" if cmd.listen else "UNLISTEN"
        tenant = self._scope() if self._scope is not None else None
        if in_block(relay):
            refuse_query(relay, msg, Refusal(_IN_BLOCK.sqlstate, _IN_BLOCK.message.format(what=what), _IN_BLOCK.hint))
        elif cmd.listen and self._scope is not None and tenant is None:
            refuse_query(relay, msg, _NO_TENANT)
        elif not cmd.listen:
            self.unlisten(cmd.channel)
            relay.reply(protocol.command_complete("UNLISTEN") + protocol.ready_for_query(b"I"))
        else:
            channel = scoped_channel(tenant, cmd.channel) if tenant is not None else cmd.channel
            self.channels[channel] = cmd.channel
            self._waiting = rest
            self._transport.pause_reading()
            asyncio.get_running_loop().create_task(self._listen(channel, msg))
            return True
        if rest:
            self._resume(rest)
        return True

    async def _listen(self, channel: str, msg: bytes) -> None:
        ok = await self.listener.subscribe(channel, self)
        if self._closed:
            self.listener.unsubscribe(channel, self)
            return
        relay = self.relay
        if ok:
            relay.reply(protocol.command_complete("LISTEN") + protocol.ready_for_query(b"I"))
        else:
            del self.channels[channel]
            self.listener.unsubscribe(channel, self)
            refuse_query(relay, msg, _LOST)
        msgs, self._waiting = self._waiting or [], None
        if not self._transport.is_closing():
            self._transport.resume_reading()
        self.deliver()
        if msgs:
            self._resume(msgs)

    def unlisten(self, client_channel: str) -> None:
        """UNLISTEN a channel by the client's name ('*': every channel)."""
        for channel, name in list(self.channels.items()):
            if client_channel in ("*", name):
                del self.channels[channel]
                self.listener.unsubscribe(channel, self)

    def close(self) -> None:
        """The client left: every channel unlistened."""
        self._closed = True
        self.unlisten("*")
        self.held.clear()

    # --- notifications ----------------------------------------------------------------------

    def notification(self, note: Notification) -> None:
        name = self.channels.get(note.channel)
        if name is None or self._closed:
            return
        self.held.append(notification_response(note.pid, name, note.payload))
        self.deliver()

    def deliver(self) -> None:
        """Write the held notifications if the client is between statements."""
        if self.held and not self._closed and self._transport.is_reading() and between_statements(self.relay):
            held, self.held = self.held, []
            self.client.write(b"".join(held))
