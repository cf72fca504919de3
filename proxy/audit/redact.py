"""Statement text with its values taken out: redaction and fingerprints, for the audit trail,
the query statistics and the slow-query log."""

from __future__ import annotations

import hashlib
import re
from functools import lru_cache
from typing import Any

from rewriter import pgparser
from rewriter.leading import first_word

_VALUES = frozenset({"SCONST", "ICONST", "FCONST", "BCONST", "XCONST", "USCONST"})
_COMMENTS = frozenset({"C_COMMENT", "SQL_COMMENT"})
_CONSERVATIVE = re.compile(
    r"""
      (?P<param>\$\d+)                                                # $1: kept
    | \$([A-Za-z_\x80-\uffff][\w\x80-\uffff]*)?\$.*?(?:\$\2\$|\Z)      # dollar-quoted, even unterminated
    | '(?:[^'\\]|''|\\.)*(?:'|\Z)                                   # quoted (\' taken as in E''), even unterminated
    | (?P<comment>/\*.*?(?:\*/|\Z)|--[^\n]*)
    | (?<!\w)(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?                      # numbers (not in t1)
    """,
    re.S | re.X,
)


def _conservative(match: re.Match[str]) -> str:
    return match["param"] or (" " if match["comment"] else "?")


# Plain text (no backslashes, block comments, dollar quotes, U&, E'' B'' X'' N'' prefixes or
# numbers run into letters) lexes the same under one regular expression as under PostgreSQL's
# scanner, at a third of the cost; anything else takes the scanner. A test holds the two equal.
_PLAIN = re.compile(
    r"""
    (?=["$'\d.-])  # where no branch can start, one class test skips the position (3x faster on plain text)
    (?:
      (?P<keep>"[^"]*"|\$\d+)                                   # identifiers, parameters: kept
    | (?P<str>'(?:[^']|'')*(?:'|\Z))(?P<cont>(?=\s*(?:--[^\n]*\n\s*)*'))?  # strings (and 'a'\n'b')
    | (?P<num>(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?)(?P<glued>[A-Za-z_]?)
    | (?P<comment>--[^\n]*)
    | (?P<odd>\$)                                               # not plain: the scanner decides
    )
    """,
    re.X,
)


class _NotPlain(Exception):
    pass


def _plain(match: re.Match[str]) -> str:
    if match["keep"]:
        return match["keep"]
    if match["odd"]:
        raise _NotPlain
    if match["comment"]:
        return ""
    at = match.start()
    before = match.string[at - 1] if at else " "
    if match["str"]:
        if before in "eEbBxXnN" or match["cont"] is not None:  # E'', B'', X'', N''; 'a' 'b'
            raise _NotPlain
        return "?"
    if before.isalnum() or before in "_$":  # digits ending a name: t1, t1e5, U0."id", anon_1.id
        if match["num"].partition(".")[2]:
            raise _NotPlain  # t1.5: a name and a number
        return match[0]
    if match["glued"]:
        raise _NotPlain
    return "?"


@lru_cache(maxsize=4096)
def redact(sql: str) -> str:
    """The statement with every literal replaced by `?` and comments removed; PostgreSQL's own
    scanner finds them (plain text takes an equivalent regular expression). Never raises: text
    the scanner cannot scan loses every quoted string and number.

    >>> redact("select * from t where email = 'bob@x.io' and id > 42 -- by ann")
    'select * from t where email = ? and id > ? '
    >>> redact("select 'unterminated")
    'select ?'
    """
    if "\\" not in sql and "/*" not in sql and "U&" not in sql and "u&" not in sql:
        try:
            return _PLAIN.sub(_plain, sql)
        except _NotPlain:
            pass
    return scanned(sql)


def scanned(sql: str) -> str:
    """`redact` by PostgreSQL's scanner alone."""
    try:
        tokens = pgparser.scan(sql)
    except Exception:  # any scanner error: fall back to removing everything that could be a value
        return _CONSERVATIVE.sub(_conservative, sql)
    out, last = [], 0
    for tok in tokens:
        if tok.name not in _VALUES and tok.name not in _COMMENTS:
            continue
        out.append(sql[last : tok.start])
        if tok.name in _VALUES:
            out.append("?")
        elif _glued("".join(out[-2:])[-1:], sql[tok.end + 1 : tok.end + 2]):
            out.append(" ")  # a comment removed between two tokens: keep them apart
        last = tok.end + 1
    out.append(sql[last:])
    return "".join(out)


def _glued(before: str, after: str) -> bool:
    return bool(before and after) and not before.isspace() and not after.isspace()


@lru_cache(maxsize=4096)
def fingerprint(sql: str) -> str:
    """16 hex digits naming the statement's shape (libpg_query's fingerprint: literals, names of
    parameters and formatting do not count). Unparseable text: a hash of its redacted, lower-cased,
    whitespace-collapsed form.

    >>> fingerprint("SELECT a FROM t WHERE b = 1") == fingerprint("select a from t where b = 2")
    True
    """
    try:
        return pgparser.fingerprint(sql)
    except Exception:  # not parseable: identity by the redacted text
        shape = " ".join(redact(sql).lower().split())
        return hashlib.sha256(shape.encode()).hexdigest()[:16]


def statement_kind(sql: str) -> str:
    """The statement's first keyword, lower case (`select`, `with`, `insert`, ...), or `""`.

    >>> statement_kind("/* app */ INSERT INTO t VALUES (1)"), statement_kind("/* /* */ */ DELETE FROM t")
    ('insert', 'delete')
    """
    return first_word(sql)


def redact_params(params: list[Any] | tuple[Any, ...] | None) -> list[str | None] | None:
    """Parameter values as `?` (NULL stays null, so the count and the NULLs remain visible)."""
    return None if params is None else [None if p is None else "?" for p in params]
