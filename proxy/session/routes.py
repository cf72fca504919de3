"""Where a session's next transaction runs: the judgement of a batch of client messages (read, or primary)."""

from __future__ import annotations

import re
from dataclasses import dataclass

from proxy.routing.volatility import ReadClassifier
from proxy.session.statements import Statements
from proxy.wire import protocol
from proxy.wire.protocol import MSG_BIND, MSG_PARSE, MSG_QUERY

AUTO, PRIMARY, REPLICA = "auto", "primary", "replica"
ROUTE_SETTING = "pgwarden.route"
_VALUE = re.compile(r"(?is)^\s*set\s+(?:session\s+)?pgwarden\.route\s*(?:=|\bto\b)\s*'?\s*(\w+)")


@dataclass(frozen=True, slots=True)
class BatchRoute:
    """A batch's judgement: `read` when every statement in it may run on a replica; `reason`
    names the first one that may not (for SHOW SERVERS and the tests)."""

    read: bool
    reason: str
    writes: bool = True  # (not read) may write: the watermark is taken when its transaction ends
    block: bool = False  # (read) begins a READ ONLY transaction block: what follows stays on its backend


def session_route(settings: dict[str, str], default: str) -> str:
    """The session's `SET pgwarden.route` (auto, primary or replica), else the config's default.

    >>> session_route({"pgwarden.route": "SET pgwarden.route = 'primary'"}, "auto")
    'primary'
    >>> session_route({"pgwarden.route": "set pgwarden.route to replica"}, "auto"), session_route({}, "auto")
    ('replica', 'auto')
    """
    text = settings.get(ROUTE_SETTING)
    if text is None:
        return default
    found = _VALUE.match(text)
    value = found.group(1).lower() if found else ""
    return value if value in (AUTO, PRIMARY, REPLICA) else default


def judge_batch(msgs: list[tuple[int, bytes]], names: Statements, classifier: ReadClassifier) -> BatchRoute:
    """Read only when every Query, Parse and Bind in the batch runs a statement judged read-only
    (or a transaction begun READ ONLY); anything unknown goes to the primary."""
    seen = block = False  # a read, or a transaction begun READ ONLY
    parsed: set[str] = set()  # statement names this batch defines (judged at their Parse)
    for kind, msg in msgs:
        if kind == MSG_QUERY:
            sql = protocol.read_cstr(msg, 5)[0]
        elif kind == MSG_PARSE:
            parse = protocol.decode_parse(msg)
            parsed.add(parse.name)
            sql = parse.query
        elif kind == MSG_BIND:
            if protocol.decode_bind_names(msg)[1] in parsed:
                continue
            bound = _bound_text(msg, names)
            if bound is None:
                return BatchRoute(False, "binds a statement pgwarden does not know")
            sql = bound
        else:
            continue
        judgement = classifier.judge(sql)
        if judgement.route == "read":
            seen = True
        elif judgement.route != "session" or judgement.begins == "read_write":
            return BatchRoute(False, judgement.reason or judgement.route)
        elif judgement.begins == "read_only":
            seen = block = True
        elif judgement.ends:
            block = False
    return BatchRoute(True, "", block=block) if seen else BatchRoute(False, "session statements only", writes=False)


def _bound_text(msg: bytes, names: Statements) -> str | None:
    _, name, _ = protocol.decode_bind_names(msg)
    if name:
        stmt = names.lookup(name)
        return None if stmt is None else protocol.decode_parse(stmt.parse).query
    if names.unnamed is None:
        return None
    return protocol.decode_parse(names.unnamed).query


_STANDBY_REFUSALS = (b"C25006\x00", b"C0A000\x00")  # read-only transaction; serializable in a hot standby
_GOING_AWAY = (b"C57P01\x00", b"C57P02\x00", b"C57P03\x00")  # shutdown, crash shutdown, cannot connect now
_BEFORE_ROWS = frozenset(b"123tnTsN")  # Parse/Bind/CloseComplete, descriptions, notices: no row yet
STANDBY, GOING_AWAY = "standby", "going away"


def replica_refusal(data: bytes) -> str | None:
    """Did this first chunk of a replica's answer refuse the batch before any row, command tag or
    anything else the client must see? STANDBY: as a standby refuses a write (run it on the
    primary); GOING_AWAY: the server is shutting down (run it elsewhere); None: no.

    >>> def err(code): body = b"SERROR\\0C" + code + b"\\0\\0"; return b"E" + (len(body) + 4).to_bytes(4, "big") + body
    >>> replica_refusal(b"T\\0\\0\\0\\x06\\0\\0" + err(b"25006")), replica_refusal(err(b"57P01"))
    ('standby', 'going away')
    >>> replica_refusal(b"D\\0\\0\\0\\x06\\0\\0" + err(b"25006")), replica_refusal(err(b"42P01"))
    (None, None)
    """
    pos, end = 0, len(data)
    while pos + 5 <= end:
        kind = data[pos]
        size = int.from_bytes(data[pos + 1 : pos + 5], "big")
        if kind == 69:  # E
            body = data[pos + 5 : pos + 1 + size]
            if any(code in body for code in _STANDBY_REFUSALS):
                return STANDBY
            return GOING_AWAY if any(code in body for code in _GOING_AWAY) else None
        if kind not in _BEFORE_ROWS:
            return None
        pos += 1 + size
    return None
