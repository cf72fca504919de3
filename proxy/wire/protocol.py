"""PostgreSQL wire protocol v3, sans-IO: framing, decoding and building messages (no sockets, no asyncio)."""

from __future__ import annotations

import struct
from dataclasses import dataclass, field

PROTOCOL_3_0 = 196608  # 3 << 16
SSL_REQUEST_CODE = 80877103
GSSENC_REQUEST_CODE = 80877104
CANCEL_REQUEST_CODE = 80877102
DEFAULT_MAX_MESSAGE_SIZE = 64 * 1024 * 1024
MAX_STARTUP_PACKET = 10_000  # PostgreSQL's own limit for startup packets

# Message type bytes, named by sender: the same letter means different messages each way
# (from a client E is Execute, S Sync and C Close; from a backend, ErrorResponse, ParameterStatus
# and CommandComplete). Plain ints, to compare with `data[i]` on the hot path.
# Sent by a client:
MSG_QUERY, MSG_PARSE, MSG_BIND, MSG_DESCRIBE, MSG_EXECUTE = b"QPBDE"
MSG_CLOSE, MSG_SYNC, MSG_FLUSH, MSG_FUNCTION_CALL, MSG_TERMINATE = b"CSHFX"
MSG_PASSWORD, MSG_COPY_DATA, MSG_COPY_DONE, MSG_COPY_FAIL = b"pdcf"
# Sent by a backend:
MSG_AUTHENTICATION, MSG_BACKEND_KEY_DATA, MSG_READY_FOR_QUERY = b"RKZ"
MSG_ERROR_RESPONSE, MSG_PARAMETER_STATUS, MSG_COMMAND_COMPLETE, MSG_DATA_ROW = b"ESCD"
# What a Describe or Close names (its first byte after the header):
TARGET_STATEMENT, TARGET_PORTAL = b"SP"
# Transaction status in ReadyForQuery:
TX_IDLE, TX_BLOCK, TX_FAILED = b"ITE"

_HDR = struct.Struct("!cI")
_I32 = struct.Struct("!I")
_I32_PAIR = struct.Struct("!II")
_I16 = struct.Struct("!H")


class ProtocolError(Exception):
    """The peer sent bytes that are not valid protocol; SQLSTATE 08P01 unless said otherwise."""

    def __init__(self, message: str, sqlstate: str = "08P01") -> None:
        super().__init__(message)
        self.sqlstate = sqlstate


# --- untyped startup packets -------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class StartupMessage:
    """A StartupMessage: protocol version and the client's parameters (user, database, ...)."""

    version: int
    params: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class SSLRequest:
    """The client asks whether TLS is available."""


@dataclass(frozen=True, slots=True)
class GSSENCRequest:
    """The client asks whether GSSAPI encryption is available (never: we answer 'N')."""


@dataclass(frozen=True, slots=True)
class CancelRequest:
    """Out-of-band request to cancel the query of the session with this key."""

    pid: int
    secret: int


StartupPacket = StartupMessage | SSLRequest | GSSENCRequest | CancelRequest


class StartupFramer:
    """Frames the untyped, length-prefixed packets a client sends before the typed protocol."""

    def __init__(self) -> None:
        self._buf = bytearray()

    def feed(self, data: bytes) -> None:
        self._buf += data

    def next_packet(self) -> StartupPacket | None:
        """The next complete startup packet, or None when more bytes are needed."""
        buf = self._buf
        if len(buf) < 4:
            return None
        (length,) = _I32.unpack_from(buf, 0)
        if length < 8 or length > MAX_STARTUP_PACKET:
            raise ProtocolError(f"invalid startup packet length {length}")
        if len(buf) < length:
            return None
        packet = bytes(buf[:length])
        del buf[:length]
        return parse_startup_packet(packet)

    def take_rest(self) -> bytes:
        """Bytes received after the last packet (the start of the typed protocol)."""
        rest = bytes(self._buf)
        self._buf.clear()
        return rest


def parse_startup_packet(packet: bytes) -> StartupPacket:
    """Decode one whole untyped packet (length included).

    >>> parse_startup_packet(startup_message({"user": "u"}))
    StartupMessage(version=196608, params={'user': 'u'})
    """
    if len(packet) < 8:
        raise ProtocolError("startup packet too short")
    length, code = _I32_PAIR.unpack_from(packet, 0)
    if length != len(packet):
        raise ProtocolError("startup packet length does not match its content")
    if code == SSL_REQUEST_CODE and length == 8:
        return SSLRequest()
    if code == GSSENC_REQUEST_CODE and length == 8:
        return GSSENCRequest()
    if code == CANCEL_REQUEST_CODE and length == 16:
        pid, secret = _I32_PAIR.unpack_from(packet, 8)
        return CancelRequest(pid, secret)
    if code >> 16 != 3:
        raise ProtocolError(
            f"unsupported frontend protocol {code >> 16}.{code & 0xFFFF}: server supports 3.0", sqlstate="0A000"
        )
    return StartupMessage(code, _parse_params(packet[8:]))


def _parse_params(data: bytes) -> dict[str, str]:
    if not data.endswith(b"\x00"):
        raise ProtocolError("startup packet is not NUL-terminated")
    parts = data[:-1].split(b"\x00")
    if parts and parts[-1] == b"":
        parts.pop()
    if len(parts) % 2:
        raise ProtocolError("startup packet has a parameter name without a value")
    try:
        decoded = [p.decode("utf-8") for p in parts]
    except UnicodeDecodeError as exc:
        raise ProtocolError("startup packet is not valid UTF-8") from exc
    return dict(zip(decoded[0::2], decoded[1::2]))


# --- typed messages --------------------------------------------------------------------------


class Framer:
    """Splits a stream of typed messages (type byte + int32 length) into whole messages."""

    __slots__ = ("_buf", "max_size")

    def __init__(self, max_size: int = DEFAULT_MAX_MESSAGE_SIZE) -> None:
        self._buf = bytearray()
        self.max_size = max_size

    def feed(self, data: bytes) -> None:
        self._buf += data

    def pending(self) -> int:
        """How many bytes wait for the rest of their message."""
        return len(self._buf)

    def split(self, data: bytes) -> list[tuple[int, bytes]]:
        """Feed `data` and return every complete message; no copy when `data` is whole messages."""
        if self._buf or not data:
            self._buf += data
            return self.messages()
        out: list[tuple[int, bytes]] = []
        pos, n = 0, len(data)
        while n - pos >= 5:
            (length,) = _I32.unpack_from(data, pos + 1)
            if length < 4 or length > self.max_size:
                self._buf += data[pos:]
                return out + self.messages()  # raises the precise ProtocolError
            end = pos + 1 + length
            if end > n:
                break
            out.append((data[pos], data if end - pos == n else data[pos:end]))
            pos = end
        if pos < n:
            self._buf += data[pos:]
        return out

    def messages(self) -> list[tuple[int, bytes]]:
        """Every complete message as (type byte, whole message bytes including the header)."""
        buf = self._buf
        out: list[tuple[int, bytes]] = []
        pos, n = 0, len(buf)
        while n - pos >= 5:
            (length,) = _I32.unpack_from(buf, pos + 1)
            if length < 4:
                raise ProtocolError(f"invalid message length {length}")
            if length > self.max_size:
                raise ProtocolError(
                    f"message of {length} bytes exceeds max_message_size ({self.max_size})", sqlstate="54000"
                )
            end = pos + 1 + length
            if end > n:
                break
            out.append((buf[pos], bytes(buf[pos:end])))
            pos = end
        if pos:
            del buf[:pos]
        return out


def message(kind: bytes, payload: bytes = b"") -> bytes:
    """One typed message: kind byte, int32 length, payload."""
    return kind + _I32.pack(len(payload) + 4) + payload


def cstr(text: str) -> bytes:
    return text.encode("utf-8", "surrogateescape") + b"\x00"


def read_cstr(body: bytes, pos: int) -> tuple[str, int]:
    """Decode the NUL-terminated string at `pos`; return it and the position after it.

    Text in another client_encoding (LATIN1, ...) survives a decode/encode round trip
    unchanged (undecodable bytes become surrogates, and `cstr` restores them).
    """
    end = body.find(b"\x00", pos)
    if end < 0:
        raise ProtocolError("string is not NUL-terminated")
    return body[pos:end].decode("utf-8", "surrogateescape"), end + 1


# --- decoders of client messages (msg = whole message bytes, header included) ------------------


def decode_query(msg: bytes) -> str:
    """The SQL text of a Query ('Q') message."""
    return read_cstr(msg, 5)[0]


@dataclass(frozen=True, slots=True)
class Parse:
    """A decoded Parse ('P'): statement name, query text, and the raw parameter-type tail."""

    name: str
    query: str
    param_types: bytes  # int16 count + int32 OIDs, kept raw


def decode_parse(msg: bytes) -> Parse:
    name, pos = read_cstr(msg, 5)
    query, pos = read_cstr(msg, pos)
    types = msg[pos:]
    if len(types) < 2 or len(types) != 2 + 4 * _I16.unpack_from(types, 0)[0]:
        raise ProtocolError("Parse message has a malformed parameter type list")
    return Parse(name, query, types)


def decode_bind_names(msg: bytes) -> tuple[str, str, int]:
    """Portal and statement name of a Bind ('B'), and where the rest of it starts."""
    portal, pos = read_cstr(msg, 5)
    stmt, pos = read_cstr(msg, pos)
    return portal, stmt, pos


def decode_target(msg: bytes) -> tuple[str, str]:
    """Kind ('S' statement or 'P' portal) and name of a Describe ('D') or Close ('C')."""
    if len(msg) < 7:
        raise ProtocolError("Describe/Close message is too short")
    kind = chr(msg[5])
    if kind not in "SP":
        raise ProtocolError(f"Describe/Close target must be 'S' or 'P', not {kind!r}")
    return kind, read_cstr(msg, 6)[0]


def _values(msg: bytes, pos: int, count: int, what: str) -> list[bytes | None]:
    """`count` length-prefixed values from `pos` (length -1: NULL), as a Bind or DataRow holds them."""
    values: list[bytes | None] = []
    for _ in range(count):
        (size,) = struct.unpack_from("!i", msg, pos)
        pos += 4
        if size < 0:
            values.append(None)
            continue
        if pos + size > len(msg):
            raise ProtocolError(f"{what} value runs past the end of the message")
        values.append(msg[pos : pos + size])
        pos += size
    return values


def bind_params(msg: bytes) -> list[bytes | None]:
    """The parameter values of a Bind, as raw bytes (None for NULL)."""
    _, _, pos = decode_bind_names(msg)
    try:
        (nfmt,) = _I16.unpack_from(msg, pos)
        pos += 2 + 2 * nfmt
        (nparams,) = _I16.unpack_from(msg, pos)
        return _values(msg, pos + 2, nparams, "Bind parameter")
    except struct.error as exc:
        raise ProtocolError("Bind message is truncated") from exc


def bind_binary(msg: bytes, count: int) -> list[bool]:
    """Whether each of a Bind's first `count` parameters is sent in binary format (its format codes:
    none, all text; one, for all; else one each, and one missing is taken as binary).

    >>> bind_binary(b"B\\0\\0\\0\\x0c\\0\\0\\0\\x01\\0\\x01\\0\\0", 2)
    [True, True]
    """
    _, _, pos = decode_bind_names(msg)
    try:
        (nfmt,) = _I16.unpack_from(msg, pos)
        codes = struct.unpack_from(f"!{nfmt}h", msg, pos + 2)
    except struct.error as exc:
        raise ProtocolError("Bind message is truncated") from exc
    if len(codes) <= 1:
        return [bool(codes and codes[0])] * count
    return [codes[i] != 0 if i < len(codes) else True for i in range(count)]


def data_row(msg: bytes) -> list[bytes | None]:
    """The column values of a DataRow ('D'), as raw bytes (None for NULL).

    >>> data_row(message(b"D", _I16.pack(2) + struct.pack("!i", 2) + b"42" + struct.pack("!i", -1)))
    [b'42', None]
    """
    try:
        return _values(msg, 7, _I16.unpack_from(msg, 5)[0], "DataRow")
    except struct.error as exc:
        raise ProtocolError("DataRow message is truncated") from exc


# --- builders -------------------------------------------------------------------------------


def startup_message(params: dict[str, str], version: int = PROTOCOL_3_0) -> bytes:
    body = _I32.pack(version) + b"".join(cstr(k) + cstr(v) for k, v in params.items()) + b"\x00"
    return _I32.pack(len(body) + 4) + body


def ssl_request() -> bytes:
    return _I32_PAIR.pack(8, SSL_REQUEST_CODE)


def cancel_request(pid: int, secret: int) -> bytes:
    return _I32.pack(16) + _I32.pack(CANCEL_REQUEST_CODE) + _I32_PAIR.pack(pid, secret)


def query(text: str) -> bytes:
    return message(b"Q", cstr(text))


def parse(name: str, query_text: str, param_types: bytes = b"\x00\x00") -> bytes:
    return message(b"P", cstr(name) + cstr(query_text) + param_types)


def rename_bind(msg: bytes, stmt: str) -> bytes:
    """The same Bind ('B') with another statement name."""
    portal, _, pos = decode_bind_names(msg)
    return message(b"B", cstr(portal) + cstr(stmt) + msg[pos:])


def target(kind: bytes, which: str, name: str) -> bytes:
    """A Describe (kind b'D') or Close (kind b'C') of statement 'S' or portal 'P'."""
    return message(kind, which.encode() + cstr(name))


SYNC = message(b"S")
TERMINATE = message(b"X")
PARSE_COMPLETE = message(b"1")
BIND_COMPLETE = message(b"2")
CLOSE_COMPLETE = message(b"3")
AUTH_OK = message(b"R", _I32.pack(0))


def password_message(payload: bytes) -> bytes:
    return message(b"p", payload)


def auth_request(code: int, data: bytes = b"") -> bytes:
    """AuthenticationXXX: 0 ok, 3 cleartext, 5 md5 (data = salt), 10 SASL, 11 continue, 12 final."""
    return message(b"R", _I32.pack(code) + data)


def auth_sasl(mechanisms: list[str]) -> bytes:
    return auth_request(10, b"".join(cstr(m) for m in mechanisms) + b"\x00")


def parameter_status(name: str, value: str) -> bytes:
    return message(b"S", cstr(name) + cstr(value))


def backend_key_data(pid: int, secret: int) -> bytes:
    return message(b"K", _I32_PAIR.pack(pid, secret))


def error_class(msg: bytes) -> str:
    """The SQLSTATE class (two characters) of an ErrorResponse; "??" without a code.

    >>> error_class(error_response("42P01", "no such table"))
    '42'
    """
    at = msg.find(b"\x00C", 4)
    return msg[at + 2 : at + 4].decode("ascii", "replace") if at >= 0 else "??"


def ready_for_query(status: bytes = b"I") -> bytes:
    return message(b"Z", status)


def command_complete(tag: str) -> bytes:
    return message(b"C", cstr(tag))


def negotiate_protocol_version(newest: int, unsupported: list[str]) -> bytes:
    """The newest protocol version we speak (as PostgreSQL sends it: 3.0 is 196608)."""
    return message(b"v", _I32.pack(newest) + _I32.pack(len(unsupported)) + b"".join(cstr(o) for o in unsupported))


_FIELD_CODES = {
    "severity": b"S",
    "severity_nl": b"V",
    "sqlstate": b"C",
    "message": b"M",
    "detail": b"D",
    "hint": b"H",
    "position": b"P",
    "where": b"W",
    "routine": b"R",
}
_CODE_FIELDS = {v[0]: k for k, v in _FIELD_CODES.items()} | {
    ord("s"): "schema",
    ord("t"): "table",
    ord("c"): "column",
    ord("d"): "datatype",
    ord("n"): "constraint",
    ord("F"): "file",
    ord("L"): "line",
    ord("R"): "routine",
    ord("q"): "internal_query",
    ord("p"): "internal_position",
}


def error_response(
    sqlstate: str,
    text: str,
    *,
    severity: str = "ERROR",
    detail: str | None = None,
    hint: str | None = None,
    kind: bytes = b"E",
    routine: str | None = None,
) -> bytes:
    """An ErrorResponse (or, with kind=b'N', a NoticeResponse) the proxy originates.

    `routine` names the PostgreSQL function that would have raised it, for clients that
    key their recovery on it (asyncpg re-prepares on RevalidateCachedQuery)."""
    fields = {
        "severity": severity,
        "severity_nl": severity,
        "sqlstate": sqlstate,
        "message": text,
        "detail": detail,
        "hint": hint,
        "routine": routine,
    }
    body = b"".join(_FIELD_CODES[k] + cstr(v) for k, v in fields.items() if v is not None)
    return message(kind, body + b"\x00")


def decode_fields(msg: bytes) -> dict[str, str]:
    """The fields of an ErrorResponse or NoticeResponse, by name (see _CODE_FIELDS)."""
    out: dict[str, str] = {}
    pos, end = 5, len(msg) - 1
    while pos < end and msg[pos] != 0:
        code = msg[pos]
        value, pos = read_cstr(msg, pos + 1)
        out[_CODE_FIELDS.get(code, chr(code))] = value
    return out


def replace_detail(msg: bytes, detail: str | None) -> bytes:
    """The same ErrorResponse with its DETAIL field replaced (or removed when None)."""
    pos, end = 5, len(msg) - 1
    parts: list[bytes] = []
    while pos < end and msg[pos] != 0:
        nul = msg.find(b"\x00", pos + 1)
        if nul < 0:
            raise ProtocolError("ErrorResponse field is not NUL-terminated")
        if msg[pos] != ord("D"):
            parts.append(msg[pos : nul + 1])
        pos = nul + 1
    if detail is not None:
        parts.append(b"D" + cstr(detail))
    return message(msg[:1], b"".join(parts) + b"\x00")
