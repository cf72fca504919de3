"""Logical replication, sans-IO: pgoutput v1 messages and the streaming protocol's CopyData frames."""

from __future__ import annotations

import struct
from typing import NamedTuple

from proxy.wire.protocol import ProtocolError

PG_EPOCH_UNIX = 946_684_800  # 2000-01-01 00:00:00 UTC: PostgreSQL timestamps count microseconds from it

_I8, _I16, _I32, _I64 = struct.Struct("!B"), struct.Struct("!H"), struct.Struct("!I"), struct.Struct("!Q")
_I32S, _I64S = struct.Struct("!i"), struct.Struct("!q")
_XLOG = struct.Struct("!QQq")
_KEEPALIVE = struct.Struct("!QqB")
_STATUS = struct.Struct("!cQQQqB")


def pg_time_to_unix(micros: int) -> float:
    """A PostgreSQL TimestampTz (microseconds since 2000-01-01 UTC) as seconds since the Unix epoch."""
    return micros / 1e6 + PG_EPOCH_UNIX


def unix_to_pg_time(seconds: float) -> int:
    """Seconds since the Unix epoch as a PostgreSQL TimestampTz (microseconds since 2000-01-01 UTC)."""
    return round((seconds - PG_EPOCH_UNIX) * 1e6)


class _Reader:
    """A cursor over one message body; every short read is a ProtocolError."""

    __slots__ = ("data", "pos", "what")

    def __init__(self, data: bytes, what: str) -> None:
        self.data, self.pos, self.what = data, 0, what

    def take(self, n: int) -> bytes:
        end = self.pos + n
        if n < 0 or end > len(self.data):
            raise ProtocolError(f"{self.what} is truncated")
        out, self.pos = self.data[self.pos : end], end
        return out

    def int(self, st: struct.Struct) -> int:
        (value,) = st.unpack(self.take(st.size))
        return int(value)

    def cstr(self) -> str:
        end = self.data.find(b"\x00", self.pos)
        if end < 0:
            raise ProtocolError(f"a string in {self.what} is not NUL-terminated")
        text = self.data[self.pos : end].decode("utf-8", "surrogateescape")
        self.pos = end + 1
        return text

    def done(self) -> None:
        if self.pos != len(self.data):
            raise ProtocolError(f"{self.what} has {len(self.data) - self.pos} trailing bytes")


# --- the streaming replication protocol: CopyData bodies --------------------------------------


class XLogData(NamedTuple):
    """'w': WAL data (for a logical slot, one pgoutput message) starting at `start_lsn`."""

    start_lsn: int
    end_lsn: int  # the server's WAL end when sent
    send_time: float  # Unix seconds, server clock
    payload: bytes


class Keepalive(NamedTuple):
    """'k': the primary's keepalive; `reply_requested` asks for a standby status update now."""

    end_lsn: int
    send_time: float
    reply_requested: bool


def decode_copy_data(body: bytes) -> XLogData | Keepalive:
    """The body of a CopyData ('d') message sent by a walsender."""
    if body[:1] == b"w":
        if len(body) < 1 + _XLOG.size:
            raise ProtocolError("XLogData is truncated")
        start, end, sent = _XLOG.unpack_from(body, 1)
        return XLogData(start, end, pg_time_to_unix(sent), body[1 + _XLOG.size :])
    if body[:1] == b"k":
        if len(body) != 1 + _KEEPALIVE.size:
            raise ProtocolError(f"primary keepalive of {len(body)} bytes (expected {1 + _KEEPALIVE.size})")
        end, sent, reply = _KEEPALIVE.unpack_from(body, 1)
        if reply > 1:
            raise ProtocolError(f"primary keepalive with reply flag {reply}")
        return Keepalive(end, pg_time_to_unix(sent), reply == 1)
    raise ProtocolError(f"unknown replication CopyData message {body[:1]!r}")


def standby_status_update(write_lsn: int, flush_lsn: int, apply_lsn: int, now: float, reply: bool = False) -> bytes:
    """The body of a Standby status update ('r') CopyData; `now` in Unix seconds."""
    return _STATUS.pack(b"r", write_lsn, flush_lsn, apply_lsn, unix_to_pg_time(now), int(reply))


# --- pgoutput protocol version 1 ----------------------------------------------------------------


class Begin(NamedTuple):
    final_lsn: int
    commit_time: float
    xid: int


class Commit(NamedTuple):
    flags: int
    commit_lsn: int
    end_lsn: int  # the end of the commit record: the position to acknowledge
    commit_time: float


class Origin(NamedTuple):
    commit_lsn: int
    name: str


class Column(NamedTuple):
    is_key: bool
    name: str
    type_oid: int
    type_modifier: int


class Relation(NamedTuple):
    relation_id: int
    schema: str  # PostgreSQL sends "" for pg_catalog
    table: str
    replica_identity: str  # d(efault), n(othing), f(ull), i(ndex)
    columns: tuple[Column, ...]

    @property
    def qualified(self) -> str:
        """schema.table, as in the catalog (unquoted)."""
        return f"{self.schema or 'pg_catalog'}.{self.table}"


class Type(NamedTuple):
    type_oid: int
    schema: str
    name: str


class Datum(NamedTuple):
    """One column of a row: kind n (null), u (unchanged TOAST), t (text) or b (binary); data for t and b."""

    kind: str
    data: bytes = b""


class Insert(NamedTuple):
    relation_id: int
    new: tuple[Datum, ...]


class Update(NamedTuple):
    relation_id: int
    old_kind: str | None  # K: the old key, O: the old row, None: neither was sent
    old: tuple[Datum, ...] | None
    new: tuple[Datum, ...]


class Delete(NamedTuple):
    relation_id: int
    old_kind: str  # K or O
    old: tuple[Datum, ...]


class Truncate(NamedTuple):
    relation_ids: tuple[int, ...]
    cascade: bool
    restart_identity: bool


class Message(NamedTuple):
    """A logical decoding message (pg_logical_emit_message)."""

    transactional: bool
    lsn: int
    prefix: str
    content: bytes


PgoutputMessage = Begin | Commit | Origin | Relation | Type | Insert | Update | Delete | Truncate | Message


def _tuple(r: _Reader) -> tuple[Datum, ...]:
    out: list[Datum] = []
    for _ in range(r.int(_I16)):
        kind = r.take(1).decode("latin-1")
        if kind in ("t", "b"):
            out.append(Datum(kind, r.take(r.int(_I32))))
        elif kind in ("n", "u"):
            out.append(Datum(kind))
        else:
            raise ProtocolError(f"unknown tuple column kind {kind!r}")
    return tuple(out)


def _old_kind(r: _Reader) -> str:
    kind = r.take(1).decode("latin-1")
    if kind not in ("K", "O"):
        raise ProtocolError(f"expected K or O before the old row, got {kind!r}")
    return kind


def _column(r: _Reader) -> Column:
    flags, name, type_oid = r.int(_I8), r.cstr(), r.int(_I32)
    return Column(flags & 1 == 1, name, type_oid, r.int(_I32S))


def _relation(r: _Reader) -> Relation:
    rel_id, schema, table = r.int(_I32), r.cstr(), r.cstr()
    identity = r.take(1).decode("latin-1")
    return Relation(rel_id, schema, table, identity, tuple(_column(r) for _ in range(r.int(_I16))))


def _update(r: _Reader) -> Update:
    rel_id = r.int(_I32)
    tag = r.take(1)
    old_kind: str | None = None
    old: tuple[Datum, ...] | None = None
    if tag in (b"K", b"O"):
        old_kind, old = tag.decode(), _tuple(r)
        tag = r.take(1)
    if tag != b"N":
        raise ProtocolError(f"expected N before the new row of an Update, got {tag!r}")
    return Update(rel_id, old_kind, old, _tuple(r))


def _insert(r: _Reader) -> Insert:
    rel_id = r.int(_I32)
    if r.take(1) != b"N":
        raise ProtocolError("expected N before the row of an Insert")
    return Insert(rel_id, _tuple(r))


def _truncate(r: _Reader) -> Truncate:
    count, options = r.int(_I32), r.int(_I8)
    if count * 4 > len(r.data):
        raise ProtocolError("Truncate is truncated")
    return Truncate(tuple(r.int(_I32) for _ in range(count)), bool(options & 1), bool(options & 2))


def _message(r: _Reader) -> Message:
    flags, lsn, prefix = r.int(_I8), r.int(_I64), r.cstr()
    return Message(bool(flags & 1), lsn, prefix, r.take(r.int(_I32)))


def _decode(kind: bytes, r: _Reader) -> PgoutputMessage:
    if kind == b"B":
        return Begin(r.int(_I64), pg_time_to_unix(r.int(_I64S)), r.int(_I32))
    if kind == b"C":
        return Commit(r.int(_I8), r.int(_I64), r.int(_I64), pg_time_to_unix(r.int(_I64S)))
    if kind == b"O":
        return Origin(r.int(_I64), r.cstr())
    if kind == b"R":
        return _relation(r)
    if kind == b"Y":
        return Type(r.int(_I32), r.cstr(), r.cstr())
    if kind == b"I":
        return _insert(r)
    if kind == b"U":
        return _update(r)
    if kind == b"D":
        rel_id = r.int(_I32)
        old_kind = _old_kind(r)
        return Delete(rel_id, old_kind, _tuple(r))
    if kind == b"T":
        return _truncate(r)
    if kind == b"M":
        return _message(r)
    raise ProtocolError(f"unknown pgoutput message {kind!r}")


def decode_message(payload: bytes) -> PgoutputMessage:
    """One pgoutput v1 message (the payload of an XLogData)."""
    r = _Reader(payload, f"pgoutput message {payload[:1]!r}")
    kind = r.take(1)
    out = _decode(kind, r)
    r.done()
    return out


def changed_relation(payload: bytes) -> int | None:
    """The relation id of an Insert, Update or Delete without decoding its rows; None for other messages."""
    if payload[:1] in (b"I", b"U", b"D"):
        if len(payload) < 5:
            raise ProtocolError(f"pgoutput message {payload[:1]!r} is truncated")
        return int(_I32.unpack_from(payload, 1)[0])
    return None
