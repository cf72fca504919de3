"""WAL positions: PostgreSQL's "X/Y" text of a pg_lsn and the 64-bit integer it stands for."""

from __future__ import annotations


def parse_lsn(text: str) -> int:
    """The byte position of an LSN written as PostgreSQL prints it (two hex halves).

    >>> parse_lsn("16/B374D848")
    97500059720
    >>> parse_lsn("0/0")
    0
    """
    high, sep, low = text.strip().partition("/")
    if not sep or not high or not low:
        raise ValueError(f"not an LSN: {text!r}")
    return (int(high, 16) << 32) | int(low, 16)


def format_lsn(lsn: int) -> str:
    """The text PostgreSQL prints for a byte position.

    >>> format_lsn(97500059720)
    '16/B374D848'
    >>> format_lsn(parse_lsn("0/3000060"))
    '0/3000060'
    """
    if not 0 <= lsn < 1 << 64:
        raise ValueError(f"not an LSN: {lsn}")
    return f"{lsn >> 32:X}/{lsn & 0xFFFFFFFF:X}"
