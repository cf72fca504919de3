"""Judge a statement as the backend's PostgreSQL major reads it, not as pgwarden's newer parser would.

pgwarden parses with PostgreSQL 18's grammar (pgparser.PARSER_MAJOR). An older backend
reads some words as ordinary names that 18 reads as syntax (system_user, json_object,
merge_action ...): the backend's lexer turns such a word into exactly the identifier a
double-quoted lowercase "word" is. So server_text() quotes those words; pgwarden then
analyses, rewrites and SENDS that text, which both grammars read the same way. A word
the backend reads as a keyword of another category than 18 does is refused unless
grammar_differences.json proves the two readings equal. Backends outside
SUPPORTED_SERVERS are refused outright (0A000).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

from . import pgparser
from .refuse import Refused

DATA = Path(__file__).with_name("data")
COMMENTS = frozenset({"SQL_COMMENT", "C_COMMENT"})


@dataclass(frozen=True, slots=True)
class WordRule:
    """How one word differs on a backend major: `server`/`parser` are kwlist.h categories ("" = not a keyword).

    `action` is "quote" (send it as "word"), "keep" (proved to read the same), "refuse",
    or "quote_unless_after:TOKEN,..." (refuse it right after one of those tokens, quote it elsewhere).
    """

    word: str
    server: str
    parser: str
    action: str


def _load(name: str) -> dict[str, Any]:
    """One of the JSON data files (rewriter/data/), as loaded."""
    data: dict[str, Any] = json.loads((DATA / name).read_text())
    return data


KEYWORDS: dict[int, dict[str, str]] = {int(v): words for v, words in _load("keywords.json")["versions"].items()}
DIFFERENCES = _load("grammar_differences.json")
SUPPORTED_SERVERS = frozenset(DIFFERENCES["supported_servers"])


@lru_cache(maxsize=16)
def word_rules(server_major: int) -> dict[str, WordRule]:
    """Every word whose keyword category differs between the backend's major and the parser's.

    >>> word_rules(15)["system_user"]
    WordRule(word='system_user', server='', parser='reserved', action='quote')
    >>> word_rules(17)["recheck"].action, word_rules(16)["json"].action
    ('keep', 'quote_unless_after:IS,NOT')
    """
    server, parser = KEYWORDS[server_major], KEYWORDS[pgparser.PARSER_MAJOR]
    same = {p["word"] for p in DIFFERENCES["keywords_proved_same"] if server_major in p["servers"]}
    positions = {
        p["word"]: p["refuse_after"]
        for p in DIFFERENCES["keyword_positions_proved_same"]
        if server_major in p["servers"]
    }
    out = {}
    for word in sorted(set(server) | set(parser)):
        s, p = server.get(word, ""), parser.get(word, "")
        if s == p:
            continue
        action = (
            "quote"
            if not s
            else "keep"
            if word in same
            else "quote_unless_after:" + ",".join(positions[word])
            if word in positions
            else "refuse"
        )
        out[word] = WordRule(word, s, p, action)
    return out


def unsupported(server_major: int) -> Refused:
    """The refusal for every policed statement on a backend whose major pgwarden does not judge."""
    majors = sorted(SUPPORTED_SERVERS)
    newer = server_major > pgparser.PARSER_MAJOR
    return Refused(
        f"pgwarden cannot enforce policies on PostgreSQL {server_major}: it judges statements with "
        f"PostgreSQL {pgparser.PARSER_MAJOR}'s grammar and supports backends of PostgreSQL "
        f"{majors[0]} to {majors[-1]}" + ("; this backend is newer than its parser" if newer else ""),
        "Connect through pgwarden to a supported PostgreSQL major"
        + (" or upgrade pgwarden" if newer else " (upgrade the database)")
        + "; bypass roles are not affected.",
        "server_version",
        sqlstate="0A000",
    )


def _reading(category: str) -> str:
    return f"{'an' if category[0] == 'u' else 'a'} {category} keyword" if category else "a name"


def _refuse_word(word: str, rule: WordRule, server_major: int) -> Refused:
    return Refused(
        f"statement refused: PostgreSQL {server_major} reads the word {word} as {_reading(rule.server)}, "
        f"pgwarden's parser (PostgreSQL {pgparser.PARSER_MAJOR}) as {_reading(rule.parser)}; "
        "the two readings may differ",
        f'Write it as a quoted name ("{word}") if you mean a column, table or function; '
        f"the {word.upper()} syntax of PostgreSQL {server_major} is not supported through pgwarden.",
        "server_version",
    )


def server_text(sql: str, server_major: int) -> str:
    """`sql` with every word the backend reads as a plain name, and the parser as a keyword, double-quoted.

    Raises Refused for a backend major outside SUPPORTED_SERVERS and for a word whose
    readings may differ; the parser's ParseError for text it cannot scan.

    >>> server_text("SELECT * FROM System_User WHERE json_object(a) IS NULL", 15)
    'SELECT * FROM "system_user" WHERE "json_object"(a) IS NULL'
    >>> server_text("SELECT system_user", 16)
    'SELECT system_user'
    """
    if server_major not in SUPPORTED_SERVERS:
        raise unsupported(server_major)
    if server_major == pgparser.PARSER_MAJOR:
        return sql
    rules = word_rules(server_major)
    out: list[str] = []
    last, previous = 0, ""
    for tok in pgparser.scan(sql):
        text = sql[tok.start : tok.end + 1]
        if tok.name in COMMENTS:
            continue
        before, previous = previous, tok.name
        # a keyword, or an unquoted identifier (PostgreSQL folds only ASCII letters of those)
        word = tok.kind != "NO_KEYWORD" or (tok.name == "IDENT" and not text.startswith('"') and text.isascii())
        rule = rules.get(text.lower()) if word else None
        if rule is None or rule.action == "keep":
            continue
        if rule.action == "refuse" or (
            rule.action.startswith("quote_unless_after:") and before in rule.action.split(":", 1)[1].split(",")
        ):
            raise _refuse_word(rule.word, rule, server_major)
        out += (sql[last : tok.start], f'"{rule.word}"')
        last = tok.end + 1
    out.append(sql[last:])
    return "".join(out)
