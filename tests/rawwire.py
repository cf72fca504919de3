"""A minimal PostgreSQL wire client (trust auth) for tests that need exact control of the extended protocol."""

from __future__ import annotations

import socket
import struct
from typing import NamedTuple


class Reply(NamedTuple):
    """What came back up to a ReadyForQuery: each message as (type, detail), and the errors' SQLSTATEs."""

    messages: list[tuple[str, object]]

    @property
    def errors(self) -> list[str]:
        return [detail[0] for kind, detail in self.messages if kind == "E"]  # type: ignore[index]

    @property
    def rows(self) -> list[list[str | None]]:
        return [detail for kind, detail in self.messages if kind == "D"]  # type: ignore[misc]


def _msg(kind: bytes, body: bytes) -> bytes:
    return kind + struct.pack("!I", len(body) + 4) + body


def _cstr(text: str) -> bytes:
    return text.encode() + b"\0"


def parse(name: str, query: str, types: tuple[int, ...] = ()) -> bytes:
    return _msg(
        b"P", _cstr(name) + _cstr(query) + struct.pack("!h", len(types)) + b"".join(struct.pack("!I", t) for t in types)
    )


def bind(statement: str, values: list[bytes | None], portal: str = "", formats: tuple[int, ...] = ()) -> bytes:
    """A Bind; `formats`: its parameter format codes (none: all text)."""
    body = _cstr(portal) + _cstr(statement) + struct.pack(f"!h{len(formats)}h", len(formats), *formats)
    body += struct.pack("!h", len(values))
    for value in values:
        body += struct.pack("!i", -1) if value is None else struct.pack("!i", len(value)) + value
    return _msg(b"B", body + struct.pack("!h", 0))


def execute(portal: str = "") -> bytes:
    return _msg(b"E", _cstr(portal) + struct.pack("!i", 0))


FLUSH = _msg(b"H", b"")


def close_statement(name: str) -> bytes:
    return _msg(b"C", b"S" + _cstr(name))


def query(sql: str) -> bytes:
    return _msg(b"Q", _cstr(sql))


SYNC = _msg(b"S", b"")


class Wire:
    """One connection; `send` writes messages and reads up to as many ReadyForQuery as it sent syncs."""

    def __init__(self, host: str, port: int, user: str, database: str) -> None:
        self.sock = socket.create_connection((host, port), timeout=10)
        body = struct.pack("!I", 196608) + _cstr("user") + _cstr(user) + _cstr("database") + _cstr(database) + b"\0"
        self.sock.sendall(struct.pack("!I", len(body) + 4) + body)
        self.buf = b""
        self.replies(1)

    def close(self) -> None:
        self.sock.sendall(_msg(b"X", b""))
        self.sock.close()

    def send(self, *messages: bytes) -> Reply:
        """Send the messages at once; the replies to all of them as one Reply."""
        self.sock.sendall(b"".join(messages))
        syncs = sum(1 for m in messages if m[:1] in (b"S", b"Q"))
        return self.replies(syncs)

    def replies(self, syncs: int) -> Reply:
        out: list[tuple[str, object]] = []
        while syncs:
            kind, body = self._read()
            if kind == "E":
                fields = {f[:1]: f[1:].decode(errors="replace") for f in body.split(b"\0") if f}
                out.append(("E", (fields.get(b"C"), fields.get(b"M"))))
            elif kind == "D":
                out.append(("D", _row(body)))
            elif kind == "R" and body[:4] != b"\0\0\0\0":
                raise RuntimeError("the test wire speaks trust authentication only")
            else:
                out.append((kind, body))
            syncs -= kind == "Z"
        return Reply(out)

    def _read(self) -> tuple[str, bytes]:
        while len(self.buf) < 5 or len(self.buf) < 1 + struct.unpack("!I", self.buf[1:5])[0]:
            data = self.sock.recv(65536)
            if not data:
                raise EOFError("the server closed the connection")
            self.buf += data
        size = struct.unpack("!I", self.buf[1:5])[0]
        message, self.buf = self.buf[: 1 + size], self.buf[1 + size :]
        return message[:1].decode(), message[5:]


def _row(body: bytes) -> list[str | None]:
    (count,), pos, row = struct.unpack("!h", body[:2]), 2, []
    for _ in range(count):
        (size,) = struct.unpack("!i", body[pos : pos + 4])
        pos += 4
        row.append(None if size < 0 else body[pos : pos + size].decode())
        pos += max(size, 0)
    return row
