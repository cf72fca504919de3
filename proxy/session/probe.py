"""Which batches the result cache may answer, and their keys: one Query, or Parse/Bind/Describe/Execute/Sync of one read."""

from __future__ import annotations

import re
from typing import NamedTuple

from proxy.cache.eligible import Judge
from proxy.enforce.decisions import Forward
from proxy.session.guard import Guard
from proxy.session.policed import Prepared
from proxy.session.state import SessionState
from proxy.session.statements import Statements
from proxy.wire import protocol
from proxy.wire.protocol import MSG_BIND, MSG_DESCRIBE, MSG_EXECUTE, MSG_PARSE, MSG_QUERY, TARGET_PORTAL

# Words PostgreSQL's date/time input reads as the clock: a text-format parameter holding one is not cached.
_CLOCK = re.compile(rb"(?i)now|today|tomorrow|yesterday")
_KINDS = (b"PBDES", b"PBES", b"BDES", b"BES")
READY_IDLE = protocol.ready_for_query(b"I")
READY_IN_BLOCK = protocol.ready_for_query(b"T")


class Probe(NamedTuple):
    """A batch the cache may answer: the names of the tables its answer depends on, and its key."""

    tables: tuple[str, ...]
    key: tuple[object, ...]
    text: str  # the statement as sent to PostgreSQL
    ready: bytes = READY_IDLE  # what a cached answer ends with: READY_IN_BLOCK in a READ ONLY block
    decision: Forward | None = None  # under a policy: the router's (an answer's audit record names it)
    prepared: Prepared | None = None  # under a policy, a batch's unnamed Parse: what the name holds after it


def batch_key(
    msgs: list[tuple[int, bytes]], state: SessionState, names: Statements, guard: Guard | None, judge: Judge
) -> Probe | None:
    """The Probe of a batch the cache may answer, else None.

    The key holds everything the answer depends on besides the tables' versions: database, user, the
    policy scope (tenant, roles, policy and schema versions), every tracked setting, the statement text
    as sent to PostgreSQL, and the rest of the batch with the client's names taken out (parameter
    types and values, formats, Describe, Execute's row limit).
    """
    if guard is None:
        text, rest = _statement(msgs, names)
        decision = prepared = None
    else:
        text, rest, decision, prepared = _policed(msgs, state, guard, names)
    if text is None:
        return None
    verdict = judge(text)
    if verdict.tables is None:
        return None
    scope = guard.statement_scope() if guard is not None else ""
    settings = tuple(sorted(state.settings.items()))
    key = (state.database, state.user, scope, settings, text, rest)
    return Probe(verdict.tables, key, text, decision=decision, prepared=prepared)


def query_probe(state: SessionState, tables: tuple[str, ...], text: str) -> Probe:
    """The Probe of one simple Query without a policy (its text as sent)."""
    settings = tuple(sorted(state.settings.items()))
    return Probe(tables, (state.database, state.user, "", settings, text, b"Q"), text)


def bound_probe(
    msgs: list[tuple[int, bytes]], state: SessionState, tables: tuple[str, ...], text: str, types: bytes
) -> Probe | None:
    """The Probe of [Parse] Bind [Describe] Execute Sync of one statement already judged, without a
    policy (its text and parameter types known): the key `batch_key` would give."""
    rest = bound_rest(msgs, types)
    if rest is None:
        return None
    settings = tuple(sorted(state.settings.items()))
    return Probe(tables, (state.database, state.user, "", settings, text, rest), text)


_NOT_POLICED: tuple[None, bytes, None, None] = (None, b"", None, None)


def _policed(
    msgs: list[tuple[int, bytes]], state: SessionState, guard: Guard, names: Statements
) -> tuple[str | None, bytes, Forward | None, Prepared | None]:
    """Under a policy, what `_statement` gives, and the router's decision and the Prepared of an unnamed
    Parse: one simple Query the router forwards (the text it sends, rewritten for the tenant); [Parse
    (unnamed)] Bind [Describe portal] Execute Sync of a statement the guard would send with nothing to
    check at Bind, the Parse rewritten for the tenant (a Bind of a named one: its text as pgwarden
    prepares it under transaction pooling)."""
    if state.tenant_unknown or state.ident is None:
        return _NOT_POLICED
    kind, first = msgs[0]
    if kind == MSG_QUERY:
        if len(msgs) != 1:
            return _NOT_POLICED
        sql = protocol.decode_query(first)
        decision = guard.router.decide(state.ident, guard.tenant(), state.database, sql, guard.search_path())
        if not isinstance(decision, Forward):
            return _NOT_POLICED
        return (sql if decision.sql is None else decision.sql), b"Q", decision, None
    forwarded: Forward | None = None
    prepared = None
    if kind == MSG_PARSE:
        passed = guard.forwarded_parse(protocol.decode_parse(first))
        if passed is None:
            return _NOT_POLICED
        forwarded, prepared = passed
        text = prepared.query if forwarded.sql is None else forwarded.sql
        types = prepared.param_types
    elif kind == MSG_BIND and state.tx_mode:
        name = protocol.decode_bind_names(first)[1]
        stmt = names.lookup(name) if name else None
        if stmt is None or not guard.runs_as_is(name):
            return _NOT_POLICED
        known = protocol.decode_parse(stmt.parse)
        text, types = known.query, known.param_types
    else:
        return _NOT_POLICED
    rest = bound_rest(msgs, types)
    return _NOT_POLICED if rest is None else (text, rest, forwarded, prepared)


def _statement(msgs: list[tuple[int, bytes]], names: Statements) -> tuple[str | None, bytes]:
    """Without a policy: one Query, or [Parse (unnamed)] Bind [Describe portal] Execute Sync."""
    if len(msgs) == 1 and msgs[0][0] == MSG_QUERY:
        return protocol.decode_query(msgs[0][1]), b"Q"
    if msgs[0][0] == MSG_PARSE:
        parse = protocol.decode_parse(msgs[0][1])
        if parse.name:
            return None, b""
        text, types = parse.query, parse.param_types
    elif msgs[0][0] == MSG_BIND:
        name = protocol.decode_bind_names(msgs[0][1])[1]
        stmt = names.lookup(name) if name else None
        if stmt is None:  # (the unnamed statement of an earlier batch, or a name pgwarden does not track)
            return None, b""
        known = protocol.decode_parse(stmt.parse)
        text, types = known.query, known.param_types
    else:
        return None, b""
    rest = bound_rest(msgs, types)
    return (None, b"") if rest is None else (text, rest)


def bound_rest(msgs: list[tuple[int, bytes]], types: bytes) -> bytes | None:
    """What keys the answer of [Parse] Bind [Describe portal] Execute Sync besides the statement's text:
    the kinds, parameter types, the Bind without its names (values, formats) and Execute's row limit
    (None: another batch, a portal, a clock word, or a Bind of another statement than the Parse's)."""
    kinds = bytes(kind for kind, _ in msgs)
    if kinds not in _KINDS:
        return None
    parts = [kinds, types]
    for kind, msg in msgs:
        if kind == MSG_BIND:
            portal, name, pos = protocol.decode_bind_names(msg)
            if portal or (name and kinds[0] == MSG_PARSE) or _CLOCK.search(msg, pos) is not None:
                return None  # (after a Parse, the Bind must run the statement it parsed)
            parts.append(msg[pos:])
        elif kind == MSG_DESCRIBE and (msg[5] != TARGET_PORTAL or msg[6] != 0):
            return None
        elif kind == MSG_EXECUTE:
            if msg[5] != 0:  # a named portal
                return None
            parts.append(msg[6:])  # the row limit
    return b"\x00".join(parts)
