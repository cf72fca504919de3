"""Statement shapes: a statement's plain literals as parameters, so one decision serves every literal value."""

from __future__ import annotations

from functools import lru_cache
from typing import NamedTuple

from rewriter import pgparser

# The plain literals a shape takes out: strings, integers and numerics.
_LITERALS = frozenset({"SCONST", "ICONST", "FCONST"})


def shape(sql: str) -> tuple[str, int, list[str]] | None:
    """`sql` with its plain literals replaced by parameters numbered from `base`, and the literals.

    >>> shape("select * from t where a = 'x' and b > 2")
    ('select * from t where a = $1001 and b > $1002', 1001, ["'x'", '2'])
    """
    try:
        tokens = pgparser.scan(sql)
    except Exception:
        return None
    params = [int(sql[t.start + 1 : t.end + 1]) for t in tokens if t.name == "PARAM"]
    base = max(params + [1000]) + 1
    out: list[str] = []
    literals: list[str] = []
    last = 0
    for t in tokens:
        if t.name in _LITERALS and (t.name != "SCONST" or sql[t.start] == "'"):
            out += (sql[last : t.start], f"${base + len(literals)}")
            literals.append(sql[t.start : t.end + 1])
            last = t.end + 1
    if not literals:
        return None
    out.append(sql[last:])
    return "".join(out), base, literals


def restore(text: str, base: int, literals: list[str]) -> str | None:
    """Put the literals back where the parameters from `base` stand (None if one is unknown).

    >>> restore("select $1001 from t where a = $1002 and b = $1", 1001, ["'x'", "2"])
    "select 'x' from t where a = 2 and b = $1"
    """
    template = _template(text, base)
    if template is None or template.needs > len(literals):
        return None
    parts, numbers = template.parts, template.numbers
    out = [parts[0]]
    for i, number in enumerate(numbers):
        out += (literals[number], parts[i + 1])
    return "".join(out)


class _Template(NamedTuple):
    """A text split around its parameters from `base`: parts[i], literal numbers[i], parts[i + 1], ..."""

    parts: tuple[str, ...]
    numbers: tuple[int, ...]
    needs: int  # how many literals it takes


@lru_cache(maxsize=4096)
def _template(text: str, base: int) -> _Template | None:
    """Scanned once per rewritten shape: every text of that shape is restored by a join."""
    try:
        tokens = pgparser.scan(text)
    except Exception:
        return None
    parts: list[str] = []
    numbers: list[int] = []
    last = 0
    for t in tokens:
        if t.name == "PARAM" and (n := int(text[t.start + 1 : t.end + 1])) >= base:
            parts.append(text[last : t.start])
            numbers.append(n - base)
            last = t.end + 1
    parts.append(text[last:])
    return _Template(tuple(parts), tuple(numbers), max(numbers, default=-1) + 1)


def string_value(literal: str) -> str | None:
    """The value of a plain '...' literal (None for numbers)."""
    return literal[1:-1].replace("''", "'") if literal.startswith("'") else None
