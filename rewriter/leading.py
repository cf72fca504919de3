"""The first keyword of a SQL text, after whitespace and comments as PostgreSQL's lexer reads them (pure)."""

from __future__ import annotations

import re

_WORD = re.compile(r"[A-Za-z]*")
_SPACE = " \t\n\r\f\v"  # PostgreSQL's whitespace (its lexer's `space`)


def first_word(sql: str) -> str:
    """The first keyword, lower-cased, after whitespace and comments as PostgreSQL's lexer reads them:
    block comments nest, and `--` ends at a carriage return too (a comment read otherwise hid a LISTEN,
    PREPARE or SET from the checks: found 2026-12-06).

    >>> first_word("  /* hi */ SET x = 1"), first_word("/* /* */ */ LISTEN x"), first_word("-- x\\rLISTEN x")
    ('set', 'listen', 'listen')
    >>> first_word("/* /* */ LISTEN x")  # (unterminated: PostgreSQL refuses it)
    ''
    """
    i, n = 0, len(sql)
    while i < n:
        if sql[i] in _SPACE:
            i += 1
        elif sql.startswith("--", i):
            ends = [e for e in (sql.find("\n", i), sql.find("\r", i)) if e >= 0]
            i = min(ends) + 1 if ends else n
        elif sql.startswith("/*", i):
            i = _comment_end(sql, i)
        else:
            break
    word = _WORD.match(sql, i) if i < n else None
    return word.group(0).lower() if word else ""


def _comment_end(sql: str, i: int) -> int:
    """Where the (nested) block comment opening at `i` ends; len(sql) when it never does."""
    depth, i, n = 0, i, len(sql)
    while i < n:
        if sql.startswith("/*", i):
            depth, i = depth + 1, i + 2
        elif sql.startswith("*/", i):
            depth, i = depth - 1, i + 2
            if depth == 0:
                return i
        else:
            i += 1
    return n
