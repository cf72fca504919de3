"""Which batches the result cache may answer, and their keys: one Query, or Parse/Bind/Describe/Execute/Sync of one read."""

from __future__ import annotations

from dataclasses import dataclass

from proxy.cache.eligible import Judge
from proxy.enforce.decisions import Forward
from proxy.session.guard import Guard
from proxy.session.state import SessionState
from proxy.session.statements import Statements
from proxy.wire import protocol
from proxy.wire.protocol import MSG_BIND, MSG_DESCRIBE, MSG_EXECUTE, MSG_PARSE, MSG_QUERY, MSG_SYNC, TARGET_PORTAL

# Words PostgreSQL's date/time input reads as the clock: a text-format parameter holding one is not cached.
_CLOCK = (b"now", b"today", b"tomorrow", b"yesterday")
READY_IDLE = protocol.ready_for_query(b"I")
READY_IN_BLOCK = protocol.ready_for_query(b"T")


@dataclass(frozen=True, slots=True)
class Probe:
    """A batch the cache may answer: the names of the tables its answer depends on, and its key."""

    tables: tuple[str, ...]
    key: tuple[object, ...]
    text: str  # the statement as sent to PostgreSQL
    ready: bytes = READY_IDLE  # what a cached answer ends with: READY_IN_BLOCK in a READ ONLY block
    decision: Forward | None = None  # under a policy: the router's (an answer's audit record names it)


def batch_key(
    msgs: list[tuple[int, bytes]], state: SessionState, names: Statements, guard: Guard | None, judge: Judge
) -> Probe | None:
    """The Probe of a batch the cache may answer, else None.

    The key holds everything the answer depends on besides the tables' versions: database, user, the
    policy scope (tenant, roles, policy and schema versions), every tracked setting, the statement text
    as sent to PostgreSQL, and the rest of the batch with the client's names taken out (parameter
    types and values, formats, Describe, Execute's row limit).
    """
    text, rest, decision = (*_statement(msgs, names), None) if guard is None else _policed(msgs, state, guard)
    if text is None:
        return None
    verdict = judge(text)
    if verdict.tables is None:
        return None
    scope = guard.statement_scope() if guard is not None else ""
    settings = tuple(sorted(state.settings.items()))
    return Probe(verdict.tables, (state.database, state.user, scope, settings, text, rest), text, decision=decision)


def query_probe(state: SessionState, tables: tuple[str, ...], text: str) -> Probe:
    """The Probe of one simple Query without a policy (its text as sent)."""
    settings = tuple(sorted(state.settings.items()))
    return Probe(tables, (state.database, state.user, "", settings, text, b"Q"), text)


def _policed(
    msgs: list[tuple[int, bytes]], state: SessionState, guard: Guard
) -> tuple[str | None, bytes, Forward | None]:
    """Under a policy, one simple Query the router forwards: the text it sends (rewritten for the tenant)."""
    if len(msgs) != 1 or msgs[0][0] != MSG_QUERY or state.tenant_unknown or state.ident is None:
        return None, b"", None
    sql = protocol.decode_query(msgs[0][1])
    decision = guard.router.decide(state.ident, guard.tenant(), state.database, sql, guard.search_path())
    if not isinstance(decision, Forward):
        return None, b"", None
    return (sql if decision.sql is None else decision.sql), b"Q", decision


def _statement(msgs: list[tuple[int, bytes]], names: Statements) -> tuple[str | None, bytes]:
    """Without a policy: one Query, or [Parse (unnamed)] Bind [Describe portal] Execute Sync."""
    if len(msgs) == 1 and msgs[0][0] == MSG_QUERY:
        return protocol.decode_query(msgs[0][1]), b"Q"
    kinds = bytes(kind for kind, _ in msgs)
    if kinds not in (b"PBDES", b"PBES", b"BDES", b"BES"):
        return None, b""
    parts = [kinds]
    if kinds[0] == MSG_PARSE:
        parse = protocol.decode_parse(msgs[0][1])
        if parse.name:
            return None, b""
        text, types = parse.query, parse.param_types
    else:
        name = protocol.decode_bind_names(msgs[0][1])[1]
        stmt = names.lookup(name) if name else None
        if stmt is None:  # (the unnamed statement of an earlier batch, or a name pgwarden does not track)
            return None, b""
        known = protocol.decode_parse(stmt.parse)
        text, types = known.query, known.param_types
    parts.append(types)
    for kind, msg in msgs:
        if kind == MSG_BIND:
            portal, name, pos = protocol.decode_bind_names(msg)
            if portal or (name and kinds[0] == MSG_PARSE) or any(word in msg[pos:].lower() for word in _CLOCK):
                return None, b""  # (after a Parse, the Bind must run the statement it parsed)
            parts.append(msg[pos:])
        elif kind == MSG_DESCRIBE and (msg[5] != TARGET_PORTAL or msg[6] != 0):
            return None, b""
        elif kind == MSG_EXECUTE:
            if msg[5] != 0:  # a named portal
                return None, b""
            parts.append(msg[6:])  # the row limit
        elif kind == MSG_SYNC:
            break
    return text, b"\x00".join(parts)
