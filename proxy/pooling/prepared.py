"""Prepared statements under transaction pooling: proxy-wide names keyed by statement text, a per-backend LRU."""

from __future__ import annotations

import hashlib
import os
from collections import OrderedDict
from dataclasses import dataclass

from proxy.wire import protocol


@dataclass(slots=True, eq=False)
class Statement:
    """One distinct (query text, parameter types): its proxy-wide name and the Parse that creates it.

    `verified` once a backend has accepted the Parse: a client's later Parse of the same
    text can then be answered without borrowing a backend.
    """

    name: str
    parse: bytes
    verified: bool = False
    stale: bool = False  # its plan no longer matches the table (PostgreSQL said so): never re-created
    generation: int = 0


def statement_name(secret: bytes, query: str, param_types: bytes, scope: str, generation: int) -> str:
    """The backend name of a proxy statement: a keyed digest, so nobody can compute it.

    >>> a = statement_name(b"k1", "select 1", b"", "", 0)
    >>> a.startswith("pgw_"), a == statement_name(b"k2", "select 1", b"", "", 0)
    (True, False)
    >>> a == statement_name(b"k1", "select 1", b"", "acme", 0), len(a)
    (False, 36)
    """
    digest = hashlib.blake2b(key=secret, digest_size=16)
    for part in (query.encode("utf-8", "surrogateescape"), param_types, scope.encode("utf-8", "surrogateescape")):
        digest.update(len(part).to_bytes(8, "big") + part)
    return "pgw_" + digest.hexdigest() + (f"_{generation}" if generation else "")


class Registry:
    """Proxy-wide statements by (query, parameter types, scope); the name is stable in this process.

    `scope` is who the text was written for (policed sessions: tenant, roles and policy
    version; "" for bypass sessions, whose text is the client's own): a statement
    rewritten for one identity is never lent to another, even when the texts match.
    Names are digests keyed with a secret drawn when the process starts, so a client
    that sees a statement's text cannot compute its name.

    >>> r = Registry(); a = r.get("select $1", b"\\x00\\x00")
    >>> a.name == r.get("select $1", b"\\x00\\x00").name, a.name.startswith("pgw_")
    (True, True)
    >>> a is r.get("select $1", b"\\x00\\x00", "acme")
    False
    """

    def __init__(self, cap: int = 50_000, secret: bytes | None = None) -> None:
        self._cache: OrderedDict[tuple[str, bytes, str], Statement] = OrderedDict()
        self._cap = cap
        self._secret = secret if secret is not None else os.urandom(32)

    def peek(self, query: str, param_types: bytes, scope: str = "") -> Statement | None:
        return self._cache.get((query, param_types, scope))

    def get(self, query: str, param_types: bytes, scope: str = "") -> Statement:
        key = (query, param_types, scope)
        stmt = self._cache.get(key)
        if stmt is None or stmt.stale:  # a table changed shape: a new name for the new shape
            generation = stmt.generation + 1 if stmt is not None else 0
            name = statement_name(self._secret, query, param_types, scope, generation)
            stmt = Statement(name, protocol.parse(name, query, param_types), generation=generation)
            self._cache[key] = stmt
            if len(self._cache) > self._cap:
                self._cache.popitem(last=False)
        return stmt


class BackendStatements:
    """The proxy statements prepared on one backend, least recently used first; and those it
    may hold although pgwarden counts them gone (a Close and Parse skipped after an error).

    >>> s = BackendStatements(cap=1); s.add("a"), s.add("b"), "a" in s
    (None, 'a', False)
    >>> s.doubt("b"); "b" in s, s.settle("b"), s.settle("b")
    (False, True, False)
    """

    __slots__ = ("_cap", "_doubts", "_names")

    def __init__(self, cap: int) -> None:
        self._names: OrderedDict[str, None] = OrderedDict()
        self._cap = cap
        self._doubts: set[str] = set()

    def doubt(self, name: str) -> None:
        """Its Parse failed: gone, or (when an error skipped a Close and Parse of it) still there."""
        self._names.pop(name, None)
        self._doubts.add(name)

    def settle(self, name: str) -> bool:
        """True (once) when `name` may still be here: Close it before preparing it again."""
        if name in self._doubts:
            self._doubts.discard(name)
            return True
        return False

    def __contains__(self, name: str) -> bool:
        return name in self._names

    def touch(self, name: str) -> bool:
        """True if prepared here (and mark it recently used)."""
        if name in self._names:
            self._names.move_to_end(name)
            return True
        return False

    def add(self, name: str) -> str | None:
        """Record a new statement; return the one evicted to stay under the cap, if any."""
        self._names[name] = None
        if len(self._names) > self._cap:
            return self._names.popitem(last=False)[0]
        return None

    def discard(self, name: str) -> None:
        self._names.pop(name, None)

    def clear(self) -> None:
        self._names.clear()
        self._doubts.clear()
