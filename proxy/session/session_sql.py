"""Statements that touch session state, judged before they are sent: what transaction pooling or a policy refuses."""

from __future__ import annotations

import re
from functools import lru_cache
from typing import NamedTuple

from proxy.ops.stats import digit_key
from proxy.session import params
from proxy.session.guard import Guard
from proxy.session.state import Refusal

DEALLOCATE = re.compile(r"\s*deallocate\s+(?:prepare\s+)?(all|\"(?:[^\"]|\"\")+\"|\w+)\s*;?\s*$", re.I | re.S)
_STATEFUL_HEADS = frozenset(
    {
        b"set",
        b"res",
        b"dis",
        b"lis",
        b"pre",
        b"dea",
        b"rol",
        b"abo",
        b"cre",
        b"dec",
        b"sav",
        b"rel",
        b"beg",
        b"sta",
        b"com",
        b"end",
        b"exe",
        b"exp",
        b"dro",
        b"alt",
    }
)
_DDL = re.compile(rb"(?i)\b(?:create|alter|drop|comment)\b")  # may change what the policy checks

_SESSION_MODE = "use pool.mode: session for this application"
_PREPARE_FIRST = "prepare it on this connection first (a Parse message); names are per connection"
_TX_REFUSED = {  # statements whose effect transaction pooling cannot keep: (what, hint)
    "listen": (
        "LISTEN in a larger query, after a comment or through the extended protocol",
        "send LISTEN channel as a query of its own, outside a transaction block: pgwarden answers it",
    ),
    "prepare": (
        "SQL PREPARE",
        "use protocol-level prepared statements (every driver's "
        f"default; pgwarden keeps them under transaction pooling), or {_SESSION_MODE}",
    ),
    "identity": ("SET {name}", f"{_SESSION_MODE}, or connect as the role you need"),
}
_SHARED_NAMES = (
    "the backend is shared, and the prepared statements on it are other clients' (under names they never chose)"
)
_TX_NAMED = {  # statements that name a prepared statement pgwarden cannot map
    "execute": Refusal(
        "0A000",
        f"SQL EXECUTE is not supported in transaction pooling mode: {_SHARED_NAMES}",
        "use protocol-level prepared statements (Parse/Bind: every driver's default; "
        f"pgwarden keeps them per client), or {_SESSION_MODE}",
    ),
    "deallocate": Refusal(
        "0A000",
        "DEALLOCATE in a multi-statement query or after a comment is not supported "
        f"in transaction pooling mode: {_SHARED_NAMES}",
        "send DEALLOCATE name (or DEALLOCATE ALL) as a query of its own",
    ),
}
FUNCTION_CALL = Refusal(
    "42501",
    "FunctionCall messages are refused: they call functions by OID, outside any statement the policy can check",
    "call the function in a SELECT",
)
UNNAMED_MISSING = Refusal(
    "26000", "unnamed prepared statement does not exist", "send a Parse before the Bind on this connection"
)
_LOCAL_SEARCH_PATH = Refusal(
    "42501",
    "SET LOCAL search_path is refused: pgwarden resolves table names with the session's search_path",
    "use SET search_path (pgwarden tracks it), or schema-qualified names",
)
_ROLE = Refusal(
    "42501",
    "SET ROLE and RESET ROLE are refused under a policy: the policy is enforced for the role "
    "the session logged in as, and another role would not be bound by it",
    "connect as the role you need",
)
_LISTEN = Refusal(
    "42501",
    "LISTEN is refused under a policy unless pgwarden answers it: it scopes notification "
    "channels per tenant, and only a LISTEN sent as a query of its own reaches it",
    "send LISTEN channel as a simple query of its own, outside a transaction block",
)


def sends_ddl(msg: bytes) -> bool:
    """Could this Query or Parse change the schema (so the policy's view of it)? A cheap test
    on the text after the message header (the length bytes can look like a letter)."""
    return _DDL.search(msg[5:]) is not None


def may_leave_state(text: bytes) -> bool:
    """Does lower-cased `text` hold one of `params.MAY_LEAVE_STATE_WORDS`? By plain searches
    (several times faster than a regular expression).

    >>> may_leave_state(b"select pg_advisory_lock(1)"), may_leave_state(b"select 1")
    (True, False)
    """
    return b"temp" in text or b"hold" in text or b"set_config" in text or b"advisory_lock" in text or b"u&" in text


_SPACE = b" \t\r\n\f\v"  # PostgreSQL's whitespace
_LETTERS = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz")


def stateful_text(msg: bytes, start: int, stop: int) -> bool:
    """Cheap byte test on msg[start:stop]: could this SQL change session state?

    False for plain SELECT/DML, even with a trailing semicolon; True for SET, RESET,
    DISCARD, LISTEN, PREPARE, EXECUTE, EXPLAIN, DEALLOCATE, BEGIN, COMMIT, ROLLBACK, leading comments,
    multi-statement text, and text that may leave state behind (temp, hold, set_config, advisory locks).
    """
    i = start
    while i < stop and msg[i] in _SPACE:
        i += 1
    if i >= stop:
        return False
    if msg[i : i + 3].lower() in _STATEFUL_HEADS or msg[i] not in _LETTERS or may_leave_state(msg[start:stop].lower()):
        return True  # (a comment, a parenthesis, anything but a keyword first: judged in full)
    j = stop - 1
    while j > i and msg[j] in b" \t\r\n\f\v;":
        j -= 1
    return msg.find(b";", i, j) >= 0


def stateful_query(msg: bytes) -> bool:
    """`stateful_text` of a whole Query message, judged once for all texts that differ only in their
    digits (none of its tests looks at a digit: `digit_key`).

    >>> stateful_query(b"Q\\x00\\x00\\x00\\x0eset a = 1\\x00"), stateful_query(b"Q\\x00\\x00\\x00\\x0eselect 42\\x00")
    (True, False)
    """
    return _query_traits(msg).stateful


def may_listen(msg: bytes) -> bool:
    """Might a Query message be a LISTEN, UNLISTEN or DISCARD ALL (`notify.command` tells)? Judged
    as `stateful_query` is."""
    return _query_traits(msg).listen


def stateful_parse(msg: bytes) -> bool:
    """`stateful_text` of the query of a Parse (after its statement's name), judged as `stateful_query`
    judges a Query (a driver sends the same Parse again and again).

    >>> stateful_parse(b"P\\x00\\x00\\x00\\x13s1\\x00set a = 1\\x00\\x00\\x00"), stateful_parse(b"P\\x00\\x00\\x00\\x0f\\x00select 1\\x00\\x00\\x00")
    (True, False)
    """
    if len(msg) > _TRAITS_MAX:
        return _parse_text_stateful(msg)
    return _stateful_parse_key(digit_key(msg))


class _Traits(NamedTuple):
    """What the hot path asks of a Query's bytes."""

    stateful: bool  # `stateful_text`
    listen: bool  # might be a LISTEN, UNLISTEN or DISCARD ALL


_TRAITS_MAX = 1024  # (longer texts are judged each time: they are rarer, and would fill the memos: 4 MB each at most)


def _query_traits(msg: bytes) -> _Traits:
    return _traits(msg) if len(msg) > _TRAITS_MAX else _traits_by_key(digit_key(msg))


@lru_cache(maxsize=4096)
def _traits_by_key(key: bytes) -> _Traits:
    return _traits(key)


def _traits(msg: bytes) -> _Traits:
    head = msg[5:40].lower()
    return _Traits(stateful_text(msg, 5, len(msg) - 1), b"isten" in head or b"discard" in head)


@lru_cache(maxsize=4096)
def _stateful_parse_key(key: bytes) -> bool:
    return _parse_text_stateful(key)


def _parse_text_stateful(msg: bytes) -> bool:
    start = msg.find(b"\x00", 5) + 1
    return stateful_text(msg, start, msg.find(b"\x00", start))


def no_such_statement(name: str) -> Refusal:
    """A statement name this client never prepared: PostgreSQL's own error (the name never
    reaches the backend, where it could be another client's statement)."""
    return Refusal("26000", f'prepared statement "{name}" does not exist', _PREPARE_FIRST)


def refusal(effects: list[params.Effect], tx_mode: bool, guard: Guard | None) -> Refusal | None:
    """Why a statement whose effect cannot be kept is refused (`guard`: under a policy), else None."""
    for effect in effects:
        if guard is not None and effect.kind == "local" and effect.name == "search_path":
            return _LOCAL_SEARCH_PATH
        if guard is not None and effect.kind == "listen":
            return _LISTEN
        if guard is not None and effect.name == params.ROLE and effect.kind in ("set", "reset"):
            return _ROLE
        if tx_mode and effect.kind in _TX_NAMED:
            return _TX_NAMED[effect.kind]
        if effect.kind == "execute" and guard is not None:
            refused = guard.sql_execute_refusal(effect.name, effect.args)
            if refused is not None:
                return refused
        if tx_mode and effect.kind in _TX_REFUSED:
            what, hint = _TX_REFUSED[effect.kind]
            what = what.format(name=effect.name.upper().replace("_", " "))
            return Refusal(
                "0A000",
                f"{what} is not supported in transaction pooling mode: its "
                "effect would outlive this transaction on a backend that other clients "
                "share",
                hint,
            )
    return None
