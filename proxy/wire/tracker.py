"""Tracks requests in flight on a backend and the responses the proxy answers or hides itself (sans-IO)."""

from __future__ import annotations

import struct
from collections import deque
from typing import NamedTuple

from proxy.wire.protocol import (
    MSG_BIND,
    MSG_CLOSE,
    MSG_COMMAND_COMPLETE,
    MSG_DATA_ROW,
    MSG_DESCRIBE,
    MSG_ERROR_RESPONSE,
    MSG_EXECUTE,
    MSG_FUNCTION_CALL,
    MSG_PARAMETER_STATUS,
    MSG_PARSE,
    MSG_QUERY,
    MSG_READY_FOR_QUERY,
    MSG_SYNC,
    TX_IDLE,
    ProtocolError,
    decode_fields,
    replace_detail,
)

FORWARD, SWALLOW, SYNTH, ABORT = 0, 1, 2, 3  # ABORT: hide its answers but ReadyForQuery
_SYNC_LIKE = frozenset((MSG_SYNC, MSG_QUERY, MSG_FUNCTION_CALL))  # requests answered by ReadyForQuery


class Ready(NamedTuple):
    """A client's Query, Sync or FunctionCall was answered by ReadyForQuery."""

    tag: object  # the tag it was sent with
    rows: int  # rows returned or changed (CommandComplete) since the ReadyForQuery before
    error: bytes | None  # its first ErrorResponse (b"": a hidden one, a pgwarden refusal's abort)
    status: int  # the transaction status ReadyForQuery reports


class Settled(NamedTuple):
    """A request sent with a tag was answered: `ok` False when it was skipped after an error."""

    tag: object
    ok: bool


class ParameterChanged(NamedTuple):
    """A ParameterStatus message: a setting changed (SET, set_config(), ROLLBACK...); `hidden`
    when it answers a request the proxy made itself (the client did not get it)."""

    message: bytes
    hidden: bool = False


class ErrorSeen(NamedTuple):
    """An ErrorResponse message from the backend (hidden or not)."""

    message: bytes


Event = Ready | Settled | ParameterChanged | ErrorSeen
_record = tuple.__new__  # builds a NamedTuple without its Python-level __new__ (once per ReadyForQuery)
_DONE = {  # which backend message completes a request, by the request's type byte
    MSG_PARSE: frozenset(b"1"),  # ParseComplete
    MSG_BIND: frozenset(b"2"),  # BindComplete
    MSG_DESCRIBE: frozenset(b"Tn"),  # RowDescription, NoData
    MSG_EXECUTE: frozenset(b"CIs"),  # CommandComplete, EmptyQueryResponse, PortalSuspended
    MSG_CLOSE: frozenset(b"3"),  # CloseComplete
    MSG_SYNC: frozenset(b"Z"),
    MSG_QUERY: frozenset(b"Z"),
    MSG_FUNCTION_CALL: frozenset(b"Z"),
}
_unpack = struct.Struct("!I").unpack_from
_SUSPENDED = b"s\0\0\0\x04"  # PortalSuspended
_WHOLE = frozenset((MSG_PARAMETER_STATUS, MSG_ERROR_RESPONSE, MSG_COMMAND_COMPLETE))  # read before passing on


def _tag_rows(data: bytes, start: int, end: int) -> int:
    """The row count at the end of a CommandComplete tag (`SELECT 5`, `INSERT 0 1`), else 0.

    >>> _tag_rows(b"C\\0\\0\\0\\x0dINSERT 0 12\\0", 5, 16)
    12
    """
    space = data.rfind(b" ", start, end)
    digits = data[space + 1 : end]
    return int(digits) if space >= 0 and digits.isdigit() else 0


def answer_rows(answer: bytes) -> int:
    """The row count of an answer that ends with its CommandComplete (as a cached answer does; 0 for
    one that ends with PortalSuspended), read from the end: the same cost however many rows it holds.

    >>> answer_rows(b"D\\0\\0\\0\\x06\\0\\0" + b"C\\0\\0\\0\\x0dSELECT 1\\0"), answer_rows(_SUSPENDED)
    (1, 0)
    """
    end = len(answer)
    if answer.endswith(_SUSPENDED):  # (a row limit reached: no tag, as for a forwarded statement)
        return 0
    for start in range(end - 6, max(end - 70, -1), -1):  # (a tag is short; its own bytes never match)
        if answer[start] == MSG_COMMAND_COMPLETE and _unpack(answer, start + 1)[0] == end - start - 1:
            return _tag_rows(answer, start + 5, end - 1)
    return 0


class Tracker:
    """The ordered requests sent to one backend, and how each response must reach the client.

    Each backend message is matched against the oldest request in flight, so the
    queue is exact even when a client sends Flush instead of Sync. `feed` returns the
    bytes for the client and the events the chunk brought (`Ready`, `Settled`,
    `ParameterChanged`, `ErrorSeen`), in order. The chunk is returned untouched (no copy)
    unless a response must be hidden (the proxy injected its request), inserted (the proxy
    answered a request itself) or scrubbed.

    >>> t = Tracker()
    >>> t.request(ord("P"), SWALLOW); t.request(ord("B")); t.request(ord("S"))
    >>> out, events = t.feed(b"1\\0\\0\\0\\x04" + b"2\\0\\0\\0\\x04" + b"Z\\0\\0\\0\\x05I")
    >>> out, events
    (b'2\\x00\\x00\\x00\\x04Z\\x00\\x00\\x00\\x05I', [Ready(tag=None, rows=0, error=None, status=73)])
    >>> t.idle, chr(t.status)
    (True, 'I')
    """

    __slots__ = (
        "_dropping",
        "_error",
        "_events",
        "_head",
        "_rows",
        "_skip",
        "fixups",
        "queue",
        "scrub",
        "skipping",
        "status",
        "synced",
    )

    def __init__(self) -> None:
        self.queue: deque[tuple[int, int, object]] = deque()
        self.fixups = 0  # entries in the queue that need per-message attention
        self.status = TX_IDLE  # transaction status of the last ReadyForQuery
        self.synced = True  # no extended-protocol message sent since the last ReadyForQuery
        self._rows = 0  # rows counted since the last ReadyForQuery
        self._error: bytes | None = None  # the first ErrorResponse since then
        self._events: list[Event] | None = None  # what the chunk being fed brought so far
        self.scrub: str | None = None  # when set, every ErrorResponse DETAIL is replaced by it
        self._skip = 0  # bytes of the current message still to come
        self._head = b""  # an incomplete header kept for the next chunk
        self._dropping = False  # whether the current (split) message is being hidden
        # After an extended-protocol error with no Sync in flight: the error. The backend skips every
        # request up to the next Sync (a Query and a FunctionCall too); `request` settles them as skipped.
        self.skipping: bytes | None = None

    @property
    def idle(self) -> bool:
        """Every request sent has been answered, the last by ReadyForQuery.

        Between an extended-protocol message and the ReadyForQuery of its Sync the
        backend is not idle even when every answer has arrived (a Flush): it may hold
        an implicit transaction, or be skipping messages after an error.
        """
        return not self.queue and self.synced

    def request(self, code: int, action: int = FORWARD, tag: object = None) -> None:
        """A request was sent to the backend; with a `tag`, its answer brings a `Settled` event
        (a Query or Sync: its `Ready` event carries the tag)."""
        if self.skipping is not None:
            if code != MSG_SYNC:
                self._skipped(code, action, tag, self.skipping)  # (told at the next `feed`)
                return
            self.skipping = None
        self.queue.append((code, action, tag))
        if code not in _SYNC_LIKE:
            self.synced = False
        if action != FORWARD or tag is not None:
            self.fixups += 1

    def synthetic(self, response: bytes) -> bytes:
        """The proxy answers a request itself: bytes to send the client now, or b'' if queued (or
        dropped: the backend skips every request up to the next Sync, and so does the proxy's answer)."""
        if self.skipping is not None:
            return b""
        if not self.queue:
            return response
        self.queue.append((SYNTH, SYNTH, response))
        self.fixups += 1
        return b""

    def reset(self) -> None:
        self.queue.clear()
        self.fixups = 0
        self._events = None
        self._rows, self._error = 0, None
        self.synced, self.skipping = True, None
        self._skip, self._head, self._dropping = 0, b"", False

    def _event(self, event: Event) -> None:
        if self._events is None:
            self._events = [event]
        else:
            self._events.append(event)

    def feed(self, data: bytes) -> tuple[bytes, list[Event] | tuple[()]]:
        """Take a chunk from the backend: what the client must receive, in order, and the events
        it brought (an empty tuple when none)."""
        if self._head:
            data, self._head = self._head + data, b""
        n, pos, mark = len(data), 0, 0
        out: list[bytes] | None = None
        if self._skip:
            pos, mark, out = self._rest_of_message(data)
        if out is None and not self.fixups and self.scrub is None:  # nothing to hide, insert or scrub
            n = self._walk(data, pos, n)
            pos = n
        while pos < n:
            kind = data[pos]
            if n - pos < 5 or (kind == MSG_READY_FOR_QUERY and n - pos < 6):
                self._head = data[pos:]
                n = pos
                break
            (length,) = _unpack(data, pos + 1)
            if length < 4:
                raise ProtocolError(f"backend sent an invalid message length {length}")
            end = pos + 1 + length
            if end > n and kind in _WHOLE:
                self._head = data[pos:]  # hold it until it is whole, to read or scrub it
                n = pos
                break
            if kind == MSG_COMMAND_COMPLETE:
                self._rows += _tag_rows(data, pos + 5, end - 1)
            elif kind == MSG_PARAMETER_STATUS:
                head = self.queue[0] if self.queue else None
                hidden = head is not None and head[0] in _SYNC_LIKE and head[1] != FORWARD
                self._event(ParameterChanged(data[pos:end], hidden))
            elif kind == MSG_ERROR_RESPONSE:
                self._event(ErrorSeen(data[pos:end]))
            drop = self._attend(kind, data, pos)
            if kind == MSG_ERROR_RESPONSE and self._error is None:
                self._error = b"" if drop else data[pos:end]  # hidden: a pgwarden refusal's abort
            if drop:
                out = out if out is not None else []
                out.append(data[mark:pos])
                mark = min(end, n)
            elif kind == MSG_ERROR_RESPONSE and self.scrub is not None:
                out = out if out is not None else []
                out += (data[mark:pos], scrub_detail(data[pos:end], self.scrub))
                mark = end
            if end > n:
                self._skip, self._dropping = end - n, drop
                break
            pos = end
            if self.fixups and self.queue and self.queue[0][0] == SYNTH:
                out = out if out is not None else []
                out.append(data[mark:pos])
                mark = pos
                self._emit(out)
        if out is None:
            result = data if n == len(data) else data[:n]
        else:
            out.append(data[mark:n])
            result = b"".join(out)
        events = self._events
        if events is None:
            return result, ()
        self._events = None
        return result, events

    def _walk(self, data: bytes, pos: int, n: int) -> int:
        """`feed`'s loop when every request in flight is forwarded untagged (no fixups) and nothing
        is scrubbed: the chunk goes to the client as it is, so only headers are read. Returns
        where the client's share ends (before an incomplete header or a split message to read)."""
        queue = self.queue
        while pos < n:
            kind = data[pos]
            if n - pos < 6 and (n - pos < 5 or kind == MSG_READY_FOR_QUERY):
                self._head = data[pos:]
                return pos
            (length,) = _unpack(data, pos + 1)
            if length < 4:
                raise ProtocolError(f"backend sent an invalid message length {length}")
            end = pos + 1 + length
            if kind != MSG_DATA_ROW:  # (a row matches no request: nothing to do)
                if end > n and kind in _WHOLE:
                    self._head = data[pos:]  # hold it until it is whole, to read it
                    return pos
                if kind == MSG_READY_FOR_QUERY:
                    self._ready(data[pos + 5])
                elif kind == MSG_COMMAND_COMPLETE:
                    self._rows += _tag_rows(data, pos + 5, end - 1)
                    if queue and queue[0][0] == MSG_EXECUTE:
                        queue.popleft()
                elif kind == MSG_ERROR_RESPONSE:
                    self._event(ErrorSeen(data[pos:end]))
                    if self._error is None:
                        self._error = data[pos:end]
                    if queue and queue[0][0] not in _SYNC_LIKE:
                        self._fail_until_sync(data[pos:end])
                elif kind == MSG_PARAMETER_STATUS:
                    self._event(ParameterChanged(data[pos:end]))
                elif queue and kind in _DONE.get(queue[0][0], ()):
                    queue.popleft()
            if end > n:
                self._skip, self._dropping = end - n, False
                return n
            pos = end
        return n

    def _rest_of_message(self, data: bytes) -> tuple[int, int, list[bytes] | None]:
        """The chunk opens with the rest of a message split across chunks: where the next one
        starts, where the client's share resumes, and the pieces kept so far (None: all of it)."""
        pos = min(self._skip, len(data))
        self._skip -= pos
        mark = 0
        out: list[bytes] | None = None
        if self._dropping:
            out, mark = [], pos
        if not self._skip and self.fixups and self.queue and self.queue[0][0] == SYNTH:
            out = out if out is not None else []
            out.append(data[mark:pos])
            mark = pos
            self._emit(out)
        return pos, mark, out

    def _ready(self, status: int) -> bool:
        """ReadyForQuery: answers the oldest sync-like request; True if that one is hidden."""
        self.status = status
        queue = self.queue
        hidden = False
        while queue:
            code, action, tag = queue.popleft()
            if action != FORWARD or tag is not None:
                self.fixups -= 1
            if code in _SYNC_LIKE:
                hidden = action == SWALLOW
                if not hidden or tag is not None:  # a hidden request with a tag: its caller wants to know
                    self._event(_record(Ready, (tag, self._rows, self._error, status)))
                break
        self._rows, self._error = 0, None
        if not queue or not any(code not in _SYNC_LIKE and code != SYNTH for code, _, _ in queue):
            self.synced = True
        return hidden

    def _attend(self, kind: int, data: bytes, pos: int) -> bool:
        """Match one backend message against the queue; True if the client must not see it."""
        queue = self.queue
        if kind == MSG_READY_FOR_QUERY:
            return self._ready(data[pos + 5])
        if not queue:
            return False
        code, action, tag = queue[0]
        if code in _SYNC_LIKE:  # inside a simple query (or before a Sync): only Z ends it
            return action != FORWARD
        if kind == MSG_ERROR_RESPONSE:
            self._fail_until_sync(data[pos : pos + 1 + _unpack(data, pos + 1)[0]])
            return action == ABORT
        if kind in _DONE.get(code, ()):
            queue.popleft()
            if action != FORWARD or tag is not None:
                self.fixups -= 1
            if tag is not None:
                self._event(Settled(tag, True))
            return action == SWALLOW
        return False

    def _fail_until_sync(self, error: bytes) -> None:
        """An extended-protocol error: the backend skips every request up to the next Sync, a Query or
        FunctionCall too (they get no ReadyForQuery: pairing the Sync's with one would settle every later
        request one behind, and a failed cycle's skipped Parse or Close as done). With no Sync in flight,
        the requests sent until one are skipped as they come (`skipping`)."""
        queue = self.queue
        while queue and queue[0][0] != MSG_SYNC:
            code, action, tag = queue.popleft()
            if action != FORWARD or tag is not None:
                self.fixups -= 1
            if action != SYNTH:
                self._skipped(code, action, tag, error)
        if not queue:
            self.skipping = error

    def _skipped(self, code: int, action: int, tag: object, error: bytes) -> None:
        """A request the backend skipped after `error`: a tagged one settled as failed; a Query or
        FunctionCall answered as failed, with no rows, as its ReadyForQuery would have been."""
        if code in _SYNC_LIKE:
            if action != SWALLOW or tag is not None:
                self._event(_record(Ready, (tag, 0, error, self.status)))
        elif tag is not None:
            self._event(Settled(tag, False))

    def _emit(self, out: list[bytes]) -> list[bytes]:
        """Append the proxy's own answers now at the head of the queue."""
        queue = self.queue
        while queue and queue[0][0] == SYNTH:
            response = queue.popleft()[2]
            assert isinstance(response, bytes)
            out.append(response)
            self.fixups -= 1
        return out


def scrub_detail(msg: bytes, text: str) -> bytes:
    """An ErrorResponse whose DETAIL (which can echo other tenants' values) is replaced by `text`.

    >>> from proxy.wire.protocol import error_response
    >>> e = error_response("23505", "duplicate key", detail="Key (email)=(bob@x.io) exists.")
    >>> decode_fields(scrub_detail(e, "hidden"))["detail"]
    'hidden'
    """
    if "detail" not in decode_fields(msg):
        return msg
    return replace_detail(msg, text)
