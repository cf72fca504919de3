"""The listening backend of a pool: LISTENs for its clients, reference-counted per channel, and fans notifications out."""

from __future__ import annotations

import asyncio
import itertools
import logging
import struct
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Protocol

from proxy.pooling.backend import Backend
from proxy.wire import protocol

log = logging.getLogger("pgwarden.listener")

MSG_NOTIFICATION = ord("A")
_RETRY = (0.1, 0.5, 1.0, 2.0, 5.0)  # seconds between reconnection attempts (the last repeats)


@dataclass(frozen=True, slots=True)
class Notification:
    """One NotificationResponse: the notifying backend's pid, the backend channel, the payload."""

    pid: int
    channel: str
    payload: str


class Subscriber(Protocol):
    """What the listener needs of a client that LISTENs (`proxy.session.notify.Notifications`)."""

    def notification(self, note: Notification) -> None:
        """Deliver (or hold until the client is between statements) one notification."""


def quote(channel: str) -> str:
    """A channel name as a quoted SQL identifier."""
    return '"' + channel.replace('"', '""') + '"'


def decode(msg: bytes) -> Notification:
    """A NotificationResponse message (header included) decoded."""
    (pid,) = struct.unpack_from("!I", msg, 5)
    channel, pos = protocol.read_cstr(msg, 9)
    return Notification(pid, channel, protocol.read_cstr(msg, pos)[0])


class Listener:
    """One backend per pool, outside its lending, that LISTENs on behalf of the pool's clients.

    `subscribers` maps a backend channel to the clients listening on it; the backend LISTENs
    while the set is non-empty. A lost backend is reconnected and every channel LISTENed again;
    notifications sent while it was down are lost (logged). `subscribe` resolves once the
    backend has answered the LISTEN, so a client's LISTEN returns only when PostgreSQL
    would deliver the next notification.
    """

    def __init__(self, name: str, opener: Callable[[], Awaitable[Backend]]) -> None:
        self.name = name
        self.subscribers: dict[str, set[Subscriber]] = {}
        self.backend: Backend | None = None
        self._open = opener
        self._framer = protocol.Framer()
        self._answers: deque[asyncio.Future[bool]] = deque()  # one per statement sent, in order
        self._connecting: asyncio.Task[None] | None = None
        self._closed = False

    # --- what sessions call -------------------------------------------------------------------

    async def subscribe(self, channel: str, subscriber: Subscriber) -> bool:
        """Add a client to `channel`; True once the backend listens (False: it could not)."""
        self.subscribers.setdefault(channel, set()).add(subscriber)
        return await self._send(f"LISTEN {quote(channel)}")

    def unsubscribe(self, channel: str, subscriber: Subscriber) -> None:
        """Remove a client from `channel`; the backend UNLISTENs once nobody listens."""
        listening = self.subscribers.get(channel)
        if listening is None:
            return
        listening.discard(subscriber)
        if not listening:
            del self.subscribers[channel]
            if self.backend is not None and not self.backend.closed:
                self._write(f"UNLISTEN {quote(channel)}")

    def close(self) -> None:
        """The pool is closing: the listening backend goes too."""
        self._closed = True
        if self.backend is not None:
            self.backend.close()

    # --- the backend ------------------------------------------------------------------------

    async def _send(self, sql: str) -> bool:
        if self.backend is None or self.backend.closed:
            await self._connect()
            return self.backend is not None and not self.backend.closed  # (a reconnect LISTENs every channel)
        return await self._write(sql)

    def _write(self, sql: str) -> asyncio.Future[bool]:
        assert self.backend is not None
        answer = asyncio.get_running_loop().create_future()
        self._answers.append(answer)
        self.backend.write(protocol.query(sql))
        return answer

    async def _connect(self) -> None:
        if self._connecting is None:
            self._connecting = asyncio.get_running_loop().create_task(self._reconnect())
        await asyncio.shield(self._connecting)

    async def _reconnect(self) -> None:
        """Open the backend and LISTEN on every channel; retried until it works or nobody listens."""
        try:
            for attempt in itertools.count():
                if self._closed or not self.subscribers:
                    return
                try:
                    backend = await self._open()
                except Exception as exc:  # BackendError, OSError: try again
                    delay = _RETRY[min(attempt, len(_RETRY) - 1)]
                    log.warning("listener %s: cannot open its backend (%s); retrying in %gs", self.name, exc, delay)
                    await asyncio.sleep(delay)
                    continue
                self._framer = protocol.Framer()
                backend.client = self
                self.backend = backend
                if self.subscribers:
                    await self._write("; ".join(f"LISTEN {quote(c)}" for c in self.subscribers))
                log.info(
                    "listener %s: backend pid=%s listens on %d channels", self.name, backend.pid, len(self.subscribers)
                )
                return
        finally:
            self._connecting = None

    def backend_data(self, backend: Backend, data: bytes) -> None:
        self._framer.feed(data)
        for kind, msg in self._framer.messages():
            if kind == MSG_NOTIFICATION:
                note = decode(msg)
                for subscriber in list(self.subscribers.get(note.channel, ())):
                    subscriber.notification(note)
            elif kind == protocol.MSG_ERROR_RESPONSE:
                log.warning("listener %s: backend error: %s", self.name, protocol.decode_fields(msg).get("message"))
                if self._answers and not self._answers[0].done():
                    self._answers[0].set_result(False)
            elif kind == protocol.MSG_READY_FOR_QUERY and self._answers:
                answer = self._answers.popleft()
                if not answer.done():
                    answer.set_result(True)

    def backend_lost(self, backend: Backend) -> None:
        if backend is not self.backend:
            return
        self.backend = None
        while self._answers:
            answer = self._answers.popleft()
            if not answer.done():
                answer.set_result(False)
        if self._closed:
            return
        log.warning(
            "listener %s: its backend pid=%s was lost; reconnecting (notifications sent until it "
            "listens again are lost)",
            self.name,
            backend.pid,
        )
        if self.subscribers:
            asyncio.get_running_loop().create_task(self._connect())

    def backend_pause(self, paused: bool) -> None:
        """(Clients are written to without flow control; nothing to pause.)"""
