"""Token positions of the client's text (PostgreSQL's own scanner) and splicing of text edits."""

from __future__ import annotations

from bisect import bisect_left
from dataclasses import dataclass

from .pgparser import Node, parser

OPEN = frozenset({"ASCII_40", "ASCII_91"})  # ( [
CLOSE = frozenset({"ASCII_41", "ASCII_93"})  # ) ]
DOT, COMMA, SEMI = "ASCII_46", "ASCII_44", "ASCII_59"
COMMENTS = frozenset({"SQL_COMMENT", "C_COMMENT"})


class SpliceError(Exception):
    """The edits could not be placed: the statement is refused rather than guessed at."""


@dataclass(frozen=True, slots=True)
class Edit:
    """Replace text[start:end] (UTF-8 byte offsets) by `text`; start == end inserts.

    `kind` names edits verify() must recognise: "mask" (a masked column reference),
    "requalify" (a schema-qualified column reference of a substituted table).
    """

    start: int
    end: int
    text: str
    kind: str = ""


@dataclass(frozen=True, slots=True)
class Tokens:
    """The scanner's tokens of a whole message, as byte offsets (end exclusive)."""

    starts: tuple[int, ...]
    ends: tuple[int, ...]
    names: tuple[str, ...]

    def at(self, offset: int) -> int:
        """Index of the token starting at byte `offset` (SpliceError if none does)."""
        i = bisect_left(self.starts, offset)
        if i == len(self.starts) or self.starts[i] != offset:
            raise SpliceError(f"no token starts at byte {offset}")
        return i


def scan(sql: str) -> Tokens:
    """Syntax tokens of `sql` (comments left out) with byte offsets (pglast's scanner counts characters).

    >>> scan("SELECT 'é', x -- note").starts
    (0, 7, 11, 13)
    """
    toks = [t for t in parser.scan(sql) if t.name not in COMMENTS]
    if sql.isascii():
        byte = list(range(len(sql) + 1))
    else:
        byte = [0]
        for ch in sql:
            byte.append(byte[-1] + len(ch.encode()))
    return Tokens(tuple(byte[t.start] for t in toks), tuple(byte[t.end + 1] for t in toks), tuple(t.name for t in toks))


def part_end(toks: Tokens, i: int) -> int:
    """Index just past the name part at token `i`, with its UESCAPE clause if it has one.

    >>> t = scan('x U&"d!0061ta" UESCAPE $$!$$ y'); part_end(t, 1), part_end(t, 4)
    (4, 5)
    """
    j = i + 1
    if (
        toks.names[i] == "UIDENT"
        and j + 1 < len(toks.names)
        and toks.names[j] == "UESCAPE"
        and toks.names[j + 1] == "SCONST"
    ):
        j += 2
    return j


def name_end(toks: Tokens, i: int) -> int:
    """Index just past a dotted name starting at token `i` (`a`, `a.b`, `a.b.c`).

    A part written `U&"..." UESCAPE 'c'` ends after its escape character.

    >>> t = scan('x "s".t y'); name_end(t, 1)
    4
    >>> t = scan('x U&"s" UESCAPE $$!$$.U&"t" UESCAPE $$!$$ y'); name_end(t, 1), t.names[8]
    (8, 'IDENT')
    """
    j = part_end(toks, i)
    while j + 1 < len(toks.names) and toks.names[j] == DOT and toks.names[j + 1] not in OPEN | CLOSE:
        if toks.names[j + 1] == "ASCII_42":  # a.* : the star is not part of the name
            break
        j = part_end(toks, j + 1)
    return j


def matching_close(toks: Tokens, i: int) -> int:
    """Index of the bracket closing the one at token `i`."""
    depth = 0
    for j in range(i, len(toks.names)):
        name = toks.names[j]
        depth += (name in OPEN) - (name in CLOSE)
        if depth == 0:
            return j
    raise SpliceError("unbalanced brackets")


def clause_end(toks: Tokens, i: int, stops: frozenset[str]) -> int:
    """First index >= i, at bracket depth 0, naming a token in `stops`, or ending the statement.

    The statement ends at a `;`, at a bracket closing an enclosing one, or at the end.
    """
    depth = 0
    for j in range(i, len(toks.names)):
        name = toks.names[j]
        if depth == 0 and (name in stops or name == SEMI or name in CLOSE):
            return j
        depth += (name in OPEN) - (name in CLOSE)
    return len(toks.names)


def apply(text: bytes, edits: list[Edit]) -> bytes:
    """Splice `edits` into `text`; insertions at a point go before a replacement starting there.

    >>> apply(b"SELECT a FROM t", [Edit(14, 15, "(x) AS t"), Edit(7, 7, "1, ")]).decode()
    'SELECT 1, a FROM (x) AS t'
    """
    ordered = sorted(enumerate(edits), key=lambda p: (p[1].start, p[1].end > p[1].start, p[0]))
    out, pos = [], 0
    for _, e in ordered:
        if e.start < pos:
            raise SpliceError("overlapping edits")
        out += [text[pos : e.start], e.text.encode()]
        pos = e.end
    out.append(text[pos:])
    return b"".join(out)


@dataclass(frozen=True, slots=True)
class ParamCheck:
    """A rule's demand that parameter `number` (1-based) equal `value` at every Bind."""

    number: int
    value: str


def relation_span(toks: Tokens, rv: Node) -> tuple[int, int]:
    """Byte span of a RangeVar's name, including a leading ONLY (and `ONLY (name)`).

    >>> relation_span(scan("SELECT * FROM ONLY s.t x"), {"location": 19})
    (14, 22)
    """
    i = toks.at(rv["location"])
    j = name_end(toks, i)
    start, end = toks.starts[i], toks.ends[j - 1]
    if not rv.get("inh") and i > 0:
        if toks.names[i - 1] == "ONLY":
            start = toks.starts[i - 1]
        elif (
            i > 1
            and toks.names[i - 1] == "ASCII_40"
            and toks.names[i - 2] == "ONLY"
            and j < len(toks.names)
            and toks.names[j] == "ASCII_41"
        ):
            start, end = toks.starts[i - 2], toks.ends[j]
    return start, end
